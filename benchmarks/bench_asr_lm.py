"""CTC decoding on FSDD's unseen speaker: greedy vs beam vs lexicon vs lexicon + n-gram LM, the same
acoustic models (issue 24).

Reads the two runs that ``bench_asr.py --keep DIR`` trained (``DIR/isolated-run``,
``DIR/connected-run``, data in ``DIR/isolated``, ``DIR/connected``). For each:

1. the lexicon (the words of the training transcriptions) and a 3-gram interpolated Kneser-Ney LM
   of the training transcriptions are written with llmtune's own code (what ``options.lexicon:
   auto`` / ``options.lm: auto`` build at training time);
2. ``lm_alpha`` / ``lm_beta`` are picked on the validation split (the four training speakers) by a
   small grid, decoding log-probabilities computed once; the test speaker is not looked at;
3. each decoder is scored once on the test split (the unseen speaker) through the real CLI,
   ``llmtune eval --split test --set options.decoder=...``; decoding time per second of audio is
   measured in-process on the same log-probabilities (decoder only), and the whole ``eval`` (model +
   decoder) as a real-time factor from its runtime.

    python benchmarks/bench_asr_lm.py --work DIR [--only isolated|connected]

Writes the ``asr_lm`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _lmbench import update_benchmarks_md  # noqa: E402

ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0)
BETAS = (-1.0, 0.0, 1.0, 2.0)
BEAM = 50
# key: (label, the run whose model decodes, the data it is scored on). The lexicon and LM come from
# the training split of the model's own run, as options.lexicon/lm: auto would build them.
TASKS = {
    "isolated": ("isolated digits", "isolated", "isolated"),
    "connected": ("connected digits (2-5 per utterance)", "connected", "connected"),
    "connected-by-isolated": ("connected digits, with the isolated-digit model", "isolated", "connected"),
}


def transcriptions(split: Path) -> list[dict]:
    with open(split / "metadata.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def log_probs(run: Path, rows: list[dict]) -> tuple[list, float, float, object]:
    """Per clip log-probabilities of the saved model, total audio seconds, forward seconds."""
    import torch

    from llmtune.audio import load_audio
    from llmtune.resolve import build_config
    from llmtune.tasks import get_task
    from llmtune.tasks.asr.model import ctc_log_probs
    from llmtune.tasks.asr.processor import input_name, mask_kwargs
    from llmtune.tasks.base import RunContext

    task = get_task("asr")
    ctx = RunContext(cfg=build_config({"task": "asr"}), training=False, model_path=str(run))
    task.load_tokenizer(ctx)
    model = task.load_trained_model(ctx).eval()
    fe = ctx.state["feature_extractor"]
    rate, name = int(fe.sampling_rate), input_name(fe)
    out, audio_s, forward_s = [], 0.0, 0.0
    for start in range(0, len(rows), 16):
        clips = [load_audio(r["file_name"], rate)[0] for r in rows[start : start + 16]]
        audio_s += sum(len(c) for c in clips) / rate
        began = time.perf_counter()
        feats = fe(clips, sampling_rate=rate, return_tensors="pt", padding=True, **mask_kwargs(fe))
        inputs = {k: v for k, v in feats.items() if k in (name, "attention_mask")}
        with torch.no_grad():
            out.extend(ctc_log_probs(model, inputs, model(**inputs).logits))
        forward_s += time.perf_counter() - began
    return out, audio_s, forward_s, ctx.state["text_tokenizer"]


def decoders(tokenizer, lexicon: Path, lm: Path):
    from llmtune.tasks.asr.decoding import CtcDecoder, read_lexicon

    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    words = read_lexicon(lexicon)

    def make(kind: str, alpha: float = 0.0, beta: float = 0.0, with_lm: bool = False):
        return CtcDecoder(
            kind, tokens, tokenizer.pad_token_id, "|", BEAM, words, str(lm) if with_lm else None, alpha, beta
        )

    return make


def greedy_texts(tokenizer, lps: list) -> list[str]:
    return [tokenizer.decode(lp.argmax(-1)).strip() for lp in lps]


def score(refs: list[str], hyps: list[str]) -> dict:
    from llmtune.metrics.asr import error_rates

    return error_rates(refs, hyps, "basic")


def cli_eval(run: Path, data: Path, out: Path, sets: list[str]) -> tuple[dict, str]:
    args = ["eval", "--model", str(run), "--dataset", str(data), "--split", "test", "-o", str(out)]
    for s in sets:
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "llmtune", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"llmtune {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())["eval"]
    return metrics, "llmtune " + " ".join(shlex.quote(a) for a in args)


def bench(work: Path, key: str) -> dict:
    from llmtune.tasks.asr.ngram import write_arpa

    _, model_key, data_key = TASKS[key]
    run, data = work / f"{model_key}-run", work / data_key
    lm_dir = work / f"{model_key}-lm"
    lm_dir.mkdir(exist_ok=True)
    train = [r["transcription"].lower() for r in transcriptions(work / model_key / "train")]
    lexicon = lm_dir / "lexicon.txt"
    lexicon.write_text("".join(w + "\n" for w in sorted({w for t in train for w in t.split()})), encoding="utf-8")
    lm = write_arpa(lm_dir / "lm.arpa", [t.split() for t in train], 3)

    # 1. alpha / beta on the validation split
    val = transcriptions(data / "validation")
    lps, _, _, tok = log_probs(run, val)
    refs = [r["transcription"] for r in val]
    make = decoders(tok, lexicon, lm)
    grid = [("greedy", 0.0, 0.0, score(refs, greedy_texts(tok, lps))["wer"])]
    for beta in BETAS:
        grid.append(("lexicon", 0.0, beta, score(refs, [make("lexicon", 0, beta).decode(x) for x in lps])["wer"]))
        for alpha in ALPHAS[1:]:
            dec = make("lexicon", alpha, beta, with_lm=True)
            grid.append(("lexicon+lm", alpha, beta, score(refs, [dec.decode(x) for x in lps])["wer"]))
    best_lex = min((g for g in grid if g[0] == "lexicon"), key=lambda g: g[3])
    best_lm = min((g for g in grid if g[0] == "lexicon+lm"), key=lambda g: g[3])

    # 2. test split: decode time in-process, scores through the CLI
    test = transcriptions(data / "test")
    lps, audio_s, forward_s, tok = log_probs(run, test)
    runs = {
        "greedy": (["options.decoder=greedy"], None),
        "beam": (["options.decoder=beam", f"options.beam_width={BEAM}"], make("beam")),
        "lexicon": (
            ["options.decoder=lexicon", f"options.lexicon={lexicon}", f"options.lm_beta={best_lex[2]}"],
            make("lexicon", 0.0, best_lex[2]),
        ),
        "lexicon + LM": (
            ["options.decoder=lexicon", f"options.lexicon={lexicon}", f"options.lm={lm}",
             f"options.lm_alpha={best_lm[1]}", f"options.lm_beta={best_lm[2]}"],
            make("lexicon", best_lm[1], best_lm[2], with_lm=True),
        ),
    }  # fmt: skip
    rows = []
    for name, (sets, decoder) in runs.items():
        began = time.perf_counter()
        texts = greedy_texts(tok, lps) if decoder is None else [decoder.decode(x) for x in lps]
        decode_s = time.perf_counter() - began
        metrics, command = cli_eval(run, data, work / f"{key}-eval-{name.replace(' ', '')}", sets)
        rows.append(
            {
                "decoder": name, "wer": metrics["eval_wer"], "cer": metrics["eval_cer"],
                "inprocess_wer": score([r["transcription"] for r in test], texts)["wer"],
                "decode_ms_per_audio_s": 1000 * decode_s / audio_s,
                "eval_runtime": metrics.get("eval_runtime"), "command": command,
            }
        )  # fmt: skip
    return {
        "task": TASKS[key][0], "clips": len(test), "audio_s": audio_s, "forward_s": forward_s,
        "validation_greedy_wer": grid[0][3],
        "grid": grid, "best_lexicon_beta": best_lex[2], "best_lm": [best_lm[1], best_lm[2]],
        "rows": rows, "date": time.strftime("%Y-%m-%d"), "load": os.getloadavg()[0],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_asr.py's --keep folder")
    parser.add_argument("--only", choices=sorted(TASKS), default=None)
    parser.add_argument("--render-only", action="store_true", help="Rewrite the section from lm-results.json.")
    ns = parser.parse_args()
    saved = ns.work / "lm-results.json"
    done = json.loads(saved.read_text()) if saved.is_file() else {}
    for key in TASKS:
        if ns.only in (None, key) and not ns.render_only:
            if not (ns.work / f"{TASKS[key][1]}-run" / "config.json").is_file():
                print(f"{ns.work}/{TASKS[key][1]}-run not found: run bench_asr.py --keep {ns.work}", file=sys.stderr)
                return 1
            done[key] = bench(ns.work, key)
            saved.write_text(json.dumps(done, indent=1))
            print(json.dumps(done[key]["rows"], indent=1), flush=True)
    lines = [
        "## Speech recognition: CTC beam search, lexicon and n-gram LM on FSDD's unseen speaker (issue 24)",
        "",
        "Acoustic models: `bench_asr.py --keep DIR` runs (the `asr-scratch` recipe, the commands of the "
        "section above), decoded four ways each with nothing retrained between decoders. Lexicon: the words of "
        "the model's training transcriptions; LM: an order-3 interpolated Kneser-Ney model of the same "
        "transcriptions written by llmtune (what `options.lexicon: auto` / `options.lm: auto` build), loaded by "
        f"KenLM inside flashlight-text; beam width {BEAM}. `lm_alpha` / `lm_beta` picked on the validation "
        "split (the training speakers) from alpha in "
        + ", ".join(f"{a:g}" for a in ALPHAS)
        + " and beta in "
        + ", ".join(f"{b:g}" for b in BETAS)
        + "; the test speaker was scored once per decoder. WER/CER: "
        "`llmtune eval --split test`. Decode time: the decoder alone on precomputed log-probabilities, per "
        'second of audio. "model + decoder": audio duration over the time to extract features, run the model '
        '(batches of 16) and decode, in one process; "whole eval": audio duration over `llmtune eval`\'s '
        "runtime. The timing pass batches clips differently from `llmtune eval`, and padding moves its WER by "
        "up to 0.9 points (`lm-results.json`: `inprocess_wer`); the table's WER/CER are `llmtune eval`'s.",
        "",
        "| task | decoder | test WER | test CER | decode ms per audio s | model + decoder: x real time | whole eval: x real time |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in TASKS:
        if key not in done:
            continue
        r = done[key]
        for row in r["rows"]:
            rtf = r["audio_s"] / row["eval_runtime"] if row.get("eval_runtime") else float("nan")
            inner = r["audio_s"] / (r["forward_s"] + row["decode_ms_per_audio_s"] * r["audio_s"] / 1000)
            lines.append(
                f"| {r['task']} | {row['decoder']} | {100 * row['wer']:.1f} % | {100 * row['cer']:.1f} % | "
                f"{row['decode_ms_per_audio_s']:.2f} | {inner:.0f}x | {rtf:.0f}x |"
            )
    lines += ["", "Chosen on validation (WER there):"]
    for key in TASKS:
        if key in done:
            r = done[key]
            lex = min(g[3] for g in r["grid"] if g[0] == "lexicon")
            lm = min(g[3] for g in r["grid"] if g[0] == "lexicon+lm")
            lines.append(
                f"- {r['task']}: greedy {100 * r['grid'][0][3]:.1f} %; lexicon beta {r['best_lexicon_beta']:g} ({100 * lex:.1f} %); lexicon + LM alpha "
                f"{r['best_lm'][0]:g}, beta {r['best_lm'][1]:g} ({100 * lm:.1f} %); {r['clips']} test clips, "
                f"{r['audio_s']:.0f} s of audio; load average {r['load']:.1f} ({r['date']})"
            )
    lines += [
        "",
        "Reproduce:",
        "",
        "```bash",
        "# the acoustic models (connected, and its data for connected-by-isolated: --only connected --connected-epochs 8):",
    ]
    lines += ["python benchmarks/bench_asr.py --test-speaker yweweler --epochs 20 --only isolated --keep DIR"]
    lines += ["python benchmarks/bench_asr_lm.py --work DIR  # or --only isolated|connected|connected-by-isolated"]
    for key in TASKS:
        if key in done:
            lines += [f"# {done[key]['task']}:", *[row["command"] for row in done[key]["rows"]]]
    lines.append("```")
    path = update_benchmarks_md("asr_lm", "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
