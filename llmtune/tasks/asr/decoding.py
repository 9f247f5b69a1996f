"""CTC decoding beyond greedy: beam search, and beam search constrained to a lexicon and scored by
a word n-gram language model (``options.decoder: beam | lexicon``), saved with the model.

Backend: flashlight-text's CTC decoders (the ones torchaudio's ``ctc_decoder`` wraps), with KenLM
built into its wheel, so ARPA and KenLM binary files load without compiling anything.
pyctcdecode (what ``Wav2Vec2ProcessorWithLM`` uses) is not the backend: its last release pins
``numpy<2``, which the pinned stack (numpy 2) cannot install, and it needs the ``kenlm`` module,
which builds from source. So ``pipeline("automatic-speech-recognition")`` cannot find the LM by
itself: pass it ``decoder=load_decoder(DIR)`` (an object with pyctcdecode's ``decode_beams``).

- ``beam``: lexicon-free prefix beam search over the model's characters (no language model).
- ``lexicon``: every hypothesis is a sequence of lexicon words (a word is spelled by its
  characters; the word delimiter ``|`` is the silence between words), scored by
  ``log p_ctc + lm_alpha * log p_lm + lm_beta * words``; without ``options.lm`` the LM term is zero
  and ``lm_beta`` alone rewards words. A word outside the lexicon is never written.

Saved with the model: ``ctc_decoder.json`` (decoder, beam width, alpha, beta, the files below and
the option values they came from), ``language_model/lexicon.txt`` (one word a line) and
``language_model/lm.arpa`` (or the KenLM binary given). Module level stays torch-free.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

DECODERS = ("greedy", "beam", "lexicon")
SAVED_FILE = "ctc_decoder.json"
LM_DIR = "language_model"
LEXICON_FILE = "lexicon.txt"
EXTRA = "asr-lm"
KENLM_MAGIC = b"mmap lm "  # the first bytes of a KenLM binary file
BEAM_THRESHOLD = 50.0  # hypotheses further than this (log prob) below the best one are pruned


def require_backend(decoder: str) -> None:
    try:
        import flashlight.lib.text.decoder  # noqa: F401
    except ImportError as exc:
        raise LlmtuneError(f"options.decoder={decoder} needs flashlight-text: pip install 'llmtune[{EXTRA}]'") from exc


def check_lm_file(path: str | Path, key: str = "options.lm") -> Path:
    """An ARPA file (``\\data\\`` first) or a KenLM binary; anything else is one error line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmtuneError(f"{key}: {path} does not exist (an ARPA or KenLM binary file, or auto)")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(KENLM_MAGIC) or head.lstrip().startswith(b"\\data\\"):
        return path
    raise LlmtuneError(f"{key}: {path} is not an ARPA file (no \\data\\ header) nor a KenLM binary")


def read_lexicon(path: str | Path, key: str = "options.lexicon") -> list[str]:
    """The words of a lexicon file: the first field of each line (a plain word list, or a
    ``word  s p e l l i n g`` lexicon whose spelling is ignored: words are spelled by letters)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmtuneError(f"{key}: {path} does not exist (one word a line, or auto)")
    words = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not words:
        raise LlmtuneError(f"{key}: {path} holds no words")
    return list(dict.fromkeys(words))


def check_lexicon(words: list[str], vocab: dict, delimiter: str, source: str) -> None:
    """Every character of every word must be a token of the model (the delimiter excepted)."""
    for word in words:
        missing = sorted({ch for ch in word if ch not in vocab or ch == delimiter})
        if missing:
            raise LlmtuneError(
                f"options.lexicon: word {word!r} in {source} has character(s) {' '.join(map(repr, missing))} that the "
                f"model's vocabulary lacks: fix the lexicon (or lowercase it as the model's transcriptions are)"
            )


class CtcDecoder:
    """Beam or lexicon decoding of CTC log-probabilities (frames x vocabulary)."""

    def __init__(
        self,
        kind: str,
        tokens: list[str],
        blank: int,
        delimiter: str,
        beam_width: int,
        words: list[str] | None = None,
        lm_path: str | None = None,
        alpha: float = 0.0,
        beta: float = 0.0,
    ):
        require_backend(kind)
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.dictionary import Dictionary

        self.kind, self.tokens, self.blank = kind, tokens, blank
        self.silence = tokens.index(delimiter) if delimiter in tokens else blank
        token_dict = Dictionary(tokens)
        n = len(tokens)
        if kind == "beam":
            options = fl.LexiconFreeDecoderOptions(
                beam_size=beam_width, beam_size_token=n, beam_threshold=BEAM_THRESHOLD, lm_weight=0.0,
                sil_score=0.0, log_add=False, criterion_type=fl.CriterionType.CTC,
            )  # fmt: skip
            self.lm = fl.ZeroLM()
            self.decoder = fl.LexiconFreeDecoder(options, self.lm, self.silence, blank, [])
            return
        lexicon = {w: [list(w)] for w in words or []}
        self.word_dict = Dictionary()
        for word in dict.fromkeys([*lexicon, "<unk>"]):
            self.word_dict.add_entry(word)
        self.word_dict.set_default_index(self.word_dict.get_index("<unk>"))
        if lm_path:
            from flashlight.lib.text.decoder.kenlm import KenLM

            try:
                self.lm = KenLM(str(lm_path), self.word_dict)
            except Exception as exc:  # KenLM's own parse errors
                raise LlmtuneError(f"options.lm: KenLM cannot load {lm_path}: {str(exc).splitlines()[0]}") from exc
        else:
            self.lm = fl.ZeroLM()
        trie = fl.Trie(n, self.silence)
        start = self.lm.start(False)
        for word, spellings in lexicon.items():
            index = self.word_dict.get_index(word)
            _, score = self.lm.score(start, index)
            for spelling in spellings:
                trie.insert([token_dict.get_index(ch) for ch in spelling], index, score)
        trie.smear(fl.SmearingMode.MAX)
        options = fl.LexiconDecoderOptions(
            beam_size=beam_width, beam_size_token=n, beam_threshold=BEAM_THRESHOLD, lm_weight=alpha,
            word_score=beta, unk_score=float("-inf"), sil_score=0.0, log_add=False,
            criterion_type=fl.CriterionType.CTC,
        )  # fmt: skip
        unk = self.word_dict.get_index("<unk>")
        self.decoder = fl.LexiconDecoder(options, trie, self.lm, self.silence, blank, unk, [], False)

    def decode(self, log_probs: Any) -> str:
        """The best transcript of one clip: ``log_probs`` is a (frames, vocabulary) array."""
        import numpy as np

        emissions = np.ascontiguousarray(log_probs, dtype=np.float32)
        frames, n = emissions.shape
        if frames == 0:
            return ""
        best = self.decoder.decode(emissions.ctypes.data, frames, n)[0]
        if self.kind == "lexicon":
            return " ".join(self.word_dict.get_entry(i) for i in best.words if i >= 0)
        chars, last = [], None
        for index in best.tokens:
            if index != last and index != self.blank and 0 <= index < len(self.tokens):
                chars.append(" " if index == self.silence else self.tokens[index])
            last = index
        return " ".join("".join(chars).split())

    def decode_logits(self, logits: Any) -> str:
        """``decode`` after a log-softmax over the vocabulary (raw model logits)."""
        import numpy as np

        x = np.asarray(logits, dtype=np.float64)
        x = x - x.max(-1, keepdims=True)
        return self.decode(x - np.log(np.exp(x).sum(-1, keepdims=True)))

    def decode_beams(self, logits: Any, **_: Any) -> list[tuple]:
        """pyctcdecode's ``BeamSearchDecoderCTC.decode_beams`` shape, for ``pipeline(decoder=...)``:
        ``[(text, last_lm_state, word_frames, logit_score, lm_score)]`` (only the text is filled)."""
        return [(self.decode_logits(logits), None, [], 0.0, 0.0)]


class DecoderSpec:
    """What a run decodes with: the options, resolved against what the model was saved with."""

    def __init__(self, kind: str, beam_width: int, alpha: float, beta: float, lexicon: Path | None, lm: Path | None):
        self.kind, self.beam_width, self.alpha, self.beta = kind, beam_width, alpha, beta
        self.lexicon, self.lm = lexicon, lm

    def build(self, tokenizer: Any, delimiter: str) -> CtcDecoder | None:
        if self.kind == "greedy":
            return None
        vocab = tokenizer.get_vocab()
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        words = None
        if self.kind == "lexicon":
            words = read_lexicon(self.lexicon)
            check_lexicon(words, vocab, delimiter, str(self.lexicon))
        return CtcDecoder(
            self.kind, tokens, tokenizer.pad_token_id, delimiter, self.beam_width, words,
            str(self.lm) if self.lm and self.kind == "lexicon" else None, self.alpha, self.beta,
        )  # fmt: skip


def saved_decoder(model_dir: str | Path | None) -> dict:
    """The ``ctc_decoder.json`` saved with a model ({} when none)."""
    if not model_dir:
        return {}
    path = Path(model_dir) / SAVED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def save_decoder(output_dir: str | Path, spec: DecoderSpec, sources: dict) -> None:
    """Copy the lexicon and LM next to the model and write ``ctc_decoder.json``."""
    out = Path(output_dir)
    record: dict[str, Any] = {
        "decoder": spec.kind, "beam_width": spec.beam_width, "lm_alpha": spec.alpha, "lm_beta": spec.beta,
    }  # fmt: skip
    for key, path in (("lexicon", spec.lexicon), ("lm", spec.lm)):
        if path is None:
            continue
        name = LEXICON_FILE if key == "lexicon" else ("lm.arpa" if _is_arpa(path) else "lm.bin")
        target = out / LM_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != target.resolve():
            shutil.copyfile(path, target)
        record[key] = f"{LM_DIR}/{name}"
        record[f"{key}_option"] = sources.get(key)
    (out / SAVED_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _is_arpa(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return not fh.read(len(KENLM_MAGIC)).startswith(KENLM_MAGIC)


def load_decoder(model_dir: str | Path) -> CtcDecoder | None:
    """The decoder a saved CTC model was trained with (None: greedy), for
    ``pipeline("automatic-speech-recognition", model=DIR, decoder=load_decoder(DIR))``."""
    from transformers import AutoTokenizer

    from llmtune.tasks.asr.processor import DELIMITER

    saved = saved_decoder(model_dir)
    if saved.get("decoder", "greedy") == "greedy":
        return None
    base = Path(model_dir)
    spec = DecoderSpec(
        saved["decoder"], saved["beam_width"], saved["lm_alpha"], saved["lm_beta"],
        base / saved["lexicon"] if saved.get("lexicon") else None, base / saved["lm"] if saved.get("lm") else None,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return spec.build(tokenizer, getattr(tokenizer, "word_delimiter_token", None) or DELIMITER)


def validate_options(o: Any) -> list[str]:
    """Config-time checks of the decoding options (torch-free)."""
    p = []
    if o.decoder not in DECODERS:
        p.append(f"options.decoder must be one of {', '.join(DECODERS)}, got {o.decoder!r}")
    if o.beam_width < 1:
        p.append(f"options.beam_width must be >= 1, got {o.beam_width}")
    if not 2 <= o.lm_order <= 6:
        p.append(f"options.lm_order must be between 2 and 6 (KenLM loads bigram models and up), got {o.lm_order}")
    if o.lm_text and o.lm != "auto":
        p.append("options.lm_text is extra text for options.lm=auto: set options.lm=auto or remove options.lm_text")
    for key in ("lexicon", "lm", "lm_text"):
        if getattr(o, key) == "":
            p.append(f"options.{key} is empty: give a file{' or auto' if key != 'lm_text' else ''}, or remove it")
    return p


def resolve_spec(
    o: Any, training: bool, model_dir: str | None, train_texts: Any, workdir: Path, transform: Any = str
) -> DecoderSpec:
    """The decoder of this run. Training: ``auto`` builds the lexicon / LM from ``train_texts()``
    (transcriptions as the model is trained to write them; ``options.lm_text`` through
    ``transform``) into ``workdir``; a lexicon is also saved when an LM is, for a later
    ``--set options.decoder=lexicon``. Inference: ``auto``, or the value the model was trained
    with, means the copy saved with the model."""
    from llmtune.tasks.asr.ngram import write_arpa

    saved = {} if training else saved_decoder(model_dir)
    lexicon = lm = None
    if o.decoder == "lexicon" or (training and (o.lm or o.lexicon != "auto")):
        if o.lexicon == "auto" and training:
            words = sorted({w for t in train_texts() for w in t.split()})
            lexicon = workdir / LEXICON_FILE
            lexicon.write_text("".join(w + "\n" for w in words), encoding="utf-8")
        elif o.lexicon == "auto" or (saved.get("lexicon") and o.lexicon == saved.get("lexicon_option")):
            if not saved.get("lexicon"):
                raise LlmtuneError(
                    f"options.lexicon=auto: model {model_dir} was saved without a lexicon (auto is built from the "
                    f"training transcriptions at training time): pass options.lexicon=FILE (one word a line)"
                )
            lexicon = Path(model_dir) / saved["lexicon"]
        else:
            lexicon = Path(o.lexicon).expanduser()
        read_lexicon(lexicon)
    if o.lm == "auto" and training:
        sentences = [t.split() for t in train_texts()]
        if o.lm_text:
            sentences += [transform(line).split() for line in _lm_text_lines(o.lm_text)]
        lm = write_arpa(workdir / "lm.arpa", [s for s in sentences if s], o.lm_order)
    elif o.lm and (o.lm == "auto" or (saved.get("lm") and o.lm == saved.get("lm_option"))):
        if not saved.get("lm"):
            raise LlmtuneError(
                f"options.lm=auto: model {model_dir} was saved without a language model (auto is built at training "
                f"time): pass options.lm=FILE (ARPA or KenLM binary), or remove options.lm"
            )
        lm = Path(model_dir) / saved["lm"]
    elif o.lm:
        lm = check_lm_file(o.lm)
    return DecoderSpec(o.decoder, o.beam_width, o.lm_alpha, o.lm_beta, lexicon, lm)


def _lm_text_lines(path: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise LlmtuneError(f"options.lm_text: {file} does not exist (a text file, one sentence a line)")
    return file.read_text(encoding="utf-8").splitlines()
