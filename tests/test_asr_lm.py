"""CTC beam / lexicon decoding with an n-gram LM (issue 24): the ARPA writer's probabilities, the
decoders on constructed log-probabilities, and a run that saves its decoder (eval, predict,
pipeline, the greedy override), on synthetic tone "speech" (tests/asr_utils.py)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from tests.asr_utils import WORDS, save_tiny_ctc, write_audiofolder
from tests.run_utils import llmtune

pytest.importorskip("flashlight.lib.text.decoder", reason="the asr-lm extra (flashlight-text)")


def read_arpa(path: Path) -> tuple[dict, dict, int]:
    """(log10 probs, log10 backoffs, order) of an ARPA file, n-gram tuples as keys."""
    probs, backoffs, order = {}, {}, 0
    section = 0
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("ngram "):
            order = max(order, int(line.split()[1].split("=")[0]))
        elif line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        elif line and section and not line.startswith("\\"):
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            probs[gram] = float(fields[0])
            if len(fields) > 2:
                backoffs[gram] = float(fields[2])
    return probs, backoffs, order


def arpa_logp(probs: dict, backoffs: dict, order: int, word: str, history: list[str]) -> float:
    """log10 p(word | history) by the ARPA backoff rule."""
    context = tuple(history[-(order - 1) :]) if order > 1 else ()
    total = 0.0
    while True:
        gram = (*context, word)
        if gram in probs:
            return total + probs[gram]
        if not context:
            return total + probs[("<unk>",)]
        total += backoffs.get(context, 0.0)
        context = context[1:]


# ---- the ARPA writer ----------------------------------------------------------------------------


def test_kneser_ney_by_hand(tmp_path):
    from llmtune.tasks.asr.ngram import write_arpa

    probs, backoffs, order = read_arpa(write_arpa(tmp_path / "lm.arpa", [["a", "b"], ["a"]], 2))
    # <s> a b </s>, <s> a </s>. Bigrams (highest order, raw counts): <s> a 2, a b 1, a </s> 1,
    # b </s> 1 -> n1=3, n2=1, D2 = 3/5. Unigram continuation counts: a 1 (<s>), b 1 (a),
    # </s> 2 (a, b), sum 4 -> n1=2, n2=1, D1 = 1/2; g0 = 0.5*3/4, over 4 words (a, b, </s>, <unk>).
    g0 = 0.5 * 3 / 4
    uni = {"a": 0.5 / 4 + g0 / 4, "b": 0.5 / 4 + g0 / 4, "</s>": 1.5 / 4 + g0 / 4, "<unk>": g0 / 4}
    for word, p in uni.items():
        assert probs[(word,)] == pytest.approx(math.log10(p), abs=1e-6)
    assert probs[("<s>",)] == -99
    assert sum(uni.values()) == pytest.approx(1.0)
    # context <s>: sum 2, one word -> g = 0.6*1/2; context a: sum 2, two words -> g = 0.6*2/2
    assert probs[("<s>", "a")] == pytest.approx(math.log10(1.4 / 2 + 0.3 * uni["a"]), abs=1e-6)
    assert probs[("a", "b")] == pytest.approx(math.log10(0.4 / 2 + 0.6 * uni["b"]), abs=1e-6)
    assert probs[("a", "</s>")] == pytest.approx(math.log10(0.4 / 2 + 0.6 * uni["</s>"]), abs=1e-6)
    assert probs[("b", "</s>")] == pytest.approx(math.log10(0.4 + 0.6 * uni["</s>"]), abs=1e-6)
    assert backoffs[("<s>",)] == pytest.approx(math.log10(0.3), abs=1e-6)
    assert backoffs[("a",)] == pytest.approx(math.log10(0.6), abs=1e-6)
    # an unseen bigram backs off: p(a | b) = g(b) p(a) = 0.6 * p(a)
    assert arpa_logp(probs, backoffs, order, "a", ["b"]) == pytest.approx(math.log10(0.6 * uni["a"]), abs=1e-6)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_context_sums_to_one_and_kenlm_agrees(order, tmp_path):
    from llmtune.tasks.asr.ngram import write_arpa

    rng = random.Random(order)
    sentences = [[rng.choice(WORDS[:5]) for _ in range(rng.randint(1, 5))] for _ in range(60)]
    path = write_arpa(tmp_path / "lm.arpa", sentences, order)
    probs, backoffs, got_order = read_arpa(path)
    assert got_order == order
    vocab = [g[0] for g in probs if len(g) == 1 and g != ("<s>",)]
    contexts = [list(g) for g in probs if len(g) < order and g[-1] != "</s>"]
    for history in contexts:
        total = sum(10 ** arpa_logp(probs, backoffs, order, w, history) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-6), history
    # the backend's KenLM reads the file and scores as the ARPA rule says
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    words = Dictionary()
    for w in [*sorted(set(vocab)), "<s>"]:
        words.add_entry(w)
    lm = KenLM(str(path), words)
    state = lm.start(False)
    ours, theirs, history = 0.0, 0.0, ["<s>"]
    for w in [*sentences[0], "up", "up", "up"]:
        state, score = lm.score(state, words.get_index(w))
        theirs += score
        ours += arpa_logp(probs, backoffs, order, w, history)
        history.append(w)
    # flashlight's KenLM scores in log10 (KenLM's own unit)
    assert theirs == pytest.approx(ours, abs=1e-4)
    kenlm = pytest.importorskip("kenlm")
    sentence = " ".join(sentences[1])
    mine, history = 0.0, ["<s>"]
    for w in [*sentences[1], "</s>"]:
        mine += arpa_logp(probs, backoffs, order, w, history)
        history.append(w)
    assert kenlm.Model(str(path)).score(sentence) == pytest.approx(mine, abs=1e-4)


# ---- decoders on constructed log-probabilities ---------------------------------------------------

TOKENS = ["<pad>", "<unk>", "|", "e", "n", "o", "t", "w"]


def emissions(frames: list[dict]) -> np.ndarray:
    index = {t: i for i, t in enumerate(TOKENS)}
    m = np.full((len(frames), len(TOKENS)), 1e-3)
    for i, frame in enumerate(frames):
        for token, p in frame.items():
            m[i, index[token]] = p
    return np.log(m / m.sum(1, keepdims=True)).astype(np.float32)


def greedy(log_probs: np.ndarray) -> str:
    ids = log_probs.argmax(1)
    chars = [TOKENS[i] for k, i in enumerate(ids) if i != 0 and (k == 0 or i != ids[k - 1])]
    return " ".join("".join(chars).replace("|", " ").split())


# "one two", the final e of "one" heard a bit more like a w
ONE_TWO = [{"o": 0.9}, {"<pad>": 0.9}, {"n": 0.9}, {"w": 0.55, "e": 0.4}, {"|": 0.9}]
ONE_TWO += [{"t": 0.9}, {"w": 0.9}, {"o": 0.9}]


def test_lexicon_fixes_a_misspelling_greedy_makes(tmp_path):
    from llmtune.tasks.asr.decoding import CtcDecoder
    from llmtune.tasks.asr.ngram import write_arpa

    lp = emissions(ONE_TWO)
    assert greedy(lp) == "onw two"
    assert CtcDecoder("beam", TOKENS, 0, "|", 8).decode(lp) == "onw two"  # no lexicon: same spelling
    lexicon = CtcDecoder("lexicon", TOKENS, 0, "|", 8, ["one", "two", "ten"])
    assert lexicon.decode(lp) == "one two"
    lm = write_arpa(tmp_path / "lm.arpa", [["one", "two"], ["two", "one"], ["ten"]], 3)
    assert CtcDecoder("lexicon", TOKENS, 0, "|", 8, ["one", "two", "ten"], str(lm), 0.5, 0.0).decode(lp) == "one two"
    # pipeline(decoder=...) hands raw logits to decode_beams
    assert lexicon.decode_beams(lp * 3 + 1.0)[0][0] == "one two"


def test_language_model_weight_decides_between_lexicon_words(tmp_path):
    from llmtune.tasks.asr.decoding import CtcDecoder
    from llmtune.tasks.asr.ngram import write_arpa

    # "one" then a word heard as "tow" a little more than "two"; the LM has only seen "one two"
    frames = [{"o": 0.9}, {"n": 0.9}, {"e": 0.9}, {"|": 0.9}, {"t": 0.9}]
    frames += [{"o": 0.52, "w": 0.46}, {"w": 0.52, "o": 0.46}]
    lp = emissions(frames)
    words = ["one", "two", "tow"]
    lm = write_arpa(tmp_path / "lm.arpa", [["one", "two"]] * 20 + [["tow"]], 2)
    assert CtcDecoder("lexicon", TOKENS, 0, "|", 8, words, str(lm), 0.0, 0.0).decode(lp) == "one tow"
    assert CtcDecoder("lexicon", TOKENS, 0, "|", 8, words, str(lm), 2.0, 0.0).decode(lp) == "one two"


def test_lexicon_decoder_never_writes_a_word_outside_the_lexicon():
    from llmtune.tasks.asr.decoding import CtcDecoder

    words = ["one", "two", "ten", "net"]
    decoder = CtcDecoder("lexicon", TOKENS, 0, "|", 16, words, None, 0.0, 1.0)
    rng = np.random.default_rng(0)
    written = set()
    for _ in range(50):
        logits = rng.normal(0, 3, (rng.integers(4, 30), len(TOKENS)))
        text = decoder.decode_logits(logits)
        written.update(text.split())
    assert written and written <= set(words)


# ---- a run that saves its decoder -------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A random tiny wav2vec2 (tests/asr_utils.py) fine-tuned two steps with a lexicon decoder and an
    ``auto`` LM; lm_beta=2 rewards words, so even this untrained model writes some."""
    root = tmp_path_factory.mktemp("asr-lm")
    data = write_audiofolder(root / "data", {"train": 32, "validation": 8}, seed=1)
    model = save_tiny_ctc(root / "tiny")
    extra = root / "extra.txt"
    extra.write_text("Stop, GO left\n", encoding="utf-8")
    out = root / "out"
    args = ["finetune", "--task", "asr", "--model", str(model), "--dataset", str(data), "-o", str(out)]
    args += ["--max-steps", "2", "--batch-size", "8", "--seed", "0", "--set", "options.decoder=lexicon"]
    args += ["--set", "options.lm=auto", "--set", f"options.lm_text={extra}", "--set", "options.chars_to_ignore=,"]
    args += ["--set", "options.lowercase=true", "--set", "options.lm_beta=2"]
    result = llmtune(args, timeout=600)
    assert result.returncode == 0, result.stderr
    return out, data


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_saved_decoder_round_trips_through_eval_predict_and_pipeline(lm_run, tmp_path, cli):
    from transformers import pipeline

    from llmtune.audio import load_audio
    from llmtune.tasks.asr.decoding import load_decoder
    from llmtune.tasks.asr.ngram import write_arpa

    out, data = lm_run
    saved = json.loads((out / "ctc_decoder.json").read_text())
    assert saved["decoder"] == "lexicon" and saved["lm"] == "language_model/lm.arpa"
    lexicon = (out / "language_model" / "lexicon.txt").read_text().split()
    train = [line.split(",")[1] for line in (data / "train" / "metadata.csv").read_text().splitlines()[1:]]
    assert set(lexicon) == {w for t in train for w in t.split()}  # auto: the training words, nothing else
    # lm: auto = the training transcriptions + options.lm_text (lowercased, comma dropped), order 3
    expected = write_arpa(tmp_path / "expected.arpa", [t.split() for t in train] + [["stop", "go", "left"]], 3)
    assert (out / "language_model" / "lm.arpa").read_text() == expected.read_text()
    rows = _jsonl(out / "predictions.jsonl")
    assert sum(len(r["hypothesis"].split()) for r in rows) > 0
    assert all(set(r["hypothesis"].split()) <= set(lexicon) for r in rows)
    assert "CTC lexicon search" in (out / "README.md").read_text()

    # pipeline(): the saved decoder passed in decodes like training-time evaluation
    asr = pipeline("automatic-speech-recognition", model=str(out), decoder=load_decoder(out))
    rate = asr.feature_extractor.sampling_rate
    for row in rows:
        samples, _ = load_audio(row["audio"], rate)
        assert asr({"raw": samples, "sampling_rate": rate})["text"] == row["hypothesis"]

    # predict and eval: no flags, the saved decoder
    paths = tmp_path / "clips.txt"
    paths.write_text("".join(r["audio"] + "\n" for r in rows), encoding="utf-8")
    result = cli("predict", "--model", out, "--input", paths, "--output", tmp_path / "pred.jsonl")
    assert result.exit_code == 0, result.output
    assert [p["transcript"] for p in _jsonl(tmp_path / "pred.jsonl")] == [r["hypothesis"] for r in rows]
    # serve: /v1/predict transcribes with the saved decoder too
    from fastapi.testclient import TestClient

    from llmtune.inference.loader import load_for_inference
    from llmtune.inference.server import ServeOptions, create_app

    with TestClient(create_app(load_for_inference(str(out)), ServeOptions(model_name="asr"))) as http:
        got = http.post("/v1/predict", json={"inputs": [{"audio": r["audio"]} for r in rows]})
        assert got.status_code == 200, got.text
        assert [p["transcript"] for p in got.json()["predictions"]] == [r["hypothesis"] for r in rows]
    result = cli("eval", "--model", out, "--dataset", data, "--split", "validation", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    trained = json.loads((out / "metrics.json").read_text())["eval"]
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())["eval"]
    assert again["eval_wer"] == trained["eval_wer"]
    assert [r["hypothesis"] for r in _jsonl(tmp_path / "ev" / "predictions.jsonl")] == [r["hypothesis"] for r in rows]

    # --set options.decoder=greedy compares: exactly what plain greedy pipeline() writes
    ev = tmp_path / "greedy"
    result = cli(
        "eval", "--model", out, "--dataset", data, "--split", "validation", "-o", ev, "--set", "options.decoder=greedy"
    )
    assert result.exit_code == 0, result.output
    plain = pipeline("automatic-speech-recognition", model=str(out))
    greedy_rows = _jsonl(ev / "predictions.jsonl")
    for row in greedy_rows:
        samples, _ = load_audio(row["audio"], rate)
        assert plain({"raw": samples, "sampling_rate": rate})["text"] == row["hypothesis"]
    # the untrained model spells freely when nothing constrains it
    assert any(not set(r["hypothesis"].split()) <= set(lexicon) for r in greedy_rows)
    # alpha / beta at eval time reach the saved decoder: a large word penalty leaves nothing written
    result = cli(
        "eval", "--model", out, "--dataset", data, "--split", "validation", "-o", tmp_path / "b",
        "--set", "options.lm_alpha=0", "--set", "options.lm_beta=-100",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all(r["hypothesis"] == "" for r in _jsonl(tmp_path / "b" / "predictions.jsonl"))


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    import sys

    from llmtune.errors import LlmtuneError
    from llmtune.tasks.asr.decoding import require_backend

    monkeypatch.setitem(sys.modules, "flashlight.lib.text.decoder", None)
    with pytest.raises(
        LlmtuneError, match=r"options.decoder=beam needs flashlight-text: pip install 'llmtune\[asr-lm\]'"
    ):
        require_backend("beam")


def test_decoding_options_are_validated():
    from llmtune.errors import ConfigError
    from llmtune.resolve import load_config

    sets = ["options.decoder=wordy", "options.beam_width=0", "options.lm_order=1", "options.lm_text=x.txt"]
    with pytest.raises(ConfigError) as exc:
        load_config(task="asr", sets=sets)
    text = str(exc.value)
    for part in ("options.decoder must be one of greedy, beam, lexicon", "beam_width", "lm_order", "lm_text"):
        assert part in text, text
