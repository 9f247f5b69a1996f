"""Speech-recognition metrics: word and character error rate, and the text normalisation before them.

Error rates are corpus-level, as ``jiwer`` and the Hugging Face ``wer``/``cer`` metrics compute
them: the total number of edits (substitutions + deletions + insertions, the Levenshtein distance
per utterance) over the total number of reference words (WER) or characters (CER), not a mean of
per-utterance rates. CER counts every character of the normalised text, spaces between words
included (``jiwer.cer``'s convention). The edit distance is a NumPy dynamic programme (one
vectorised pass per reference token), so no extra library is needed.

Normalisation (``options.normalize`` of the ``asr`` task) is applied to references and hypotheses
alike, in training-time evaluation and in ``llmtune eval``:

- ``none``: only surrounding whitespace stripped and runs of whitespace collapsed;
- ``lower``: that, plus lowercase;
- ``basic``: that, plus punctuation and symbols removed (Unicode categories P* and S*; an
  apostrophe inside a word, as in "don't", is kept).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

NORMALIZERS = ("none", "lower", "basic")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str | None, mode: str = "basic") -> str:
    if mode not in NORMALIZERS:
        raise ValueError(f"unknown normalisation {mode!r}; use one of {', '.join(NORMALIZERS)}")
    text = "" if text is None else str(text)
    if mode in ("lower", "basic"):
        text = text.lower()
    if mode == "basic":
        chars = []
        for i, ch in enumerate(text):
            cat = unicodedata.category(ch)
            if cat[0] in "PS":
                inside_word = ch in "'’" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
                chars.append(ch if inside_word else " ")
            else:
                chars.append(ch)
        text = "".join(chars)
    return _SPACES.sub(" ", text).strip()


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance between two token sequences (unit costs)."""
    ref, hyp = list(reference), list(hypothesis)
    if not ref:
        return len(hyp)
    if not hyp:
        return len(ref)
    # Map tokens to integers so each row is one vectorised comparison.
    ids: dict = {}
    r = np.array([ids.setdefault(t, len(ids)) for t in ref], dtype=np.int64)
    h = np.array([ids.setdefault(t, len(ids)) for t in hyp], dtype=np.int64)
    offsets = np.arange(len(h) + 1, dtype=np.int64)
    prev = offsets.copy()  # distances from the empty reference prefix
    for i, token in enumerate(r, start=1):
        cur = np.empty_like(prev)
        cur[0] = i
        # substitution (or match) and deletion, then insertions as a running minimum:
        # cur[j] = min_k<=j (tmp[k] + j - k) = j + cummin(tmp[k] - k)
        cur[1:] = np.minimum(prev[:-1] + (h != token), prev[1:] + 1)
        cur = offsets + np.minimum.accumulate(cur - offsets)
        prev = cur
    return int(prev[-1])


def utterance_errors(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """(word edits, reference words, char edits, reference chars) for normalised texts."""
    ref_words, hyp_words = reference.split(), hypothesis.split()
    return (
        edit_distance(ref_words, hyp_words),
        len(ref_words),
        edit_distance(reference, hypothesis),
        len(reference),
    )


def error_rates(references: Sequence[str], hypotheses: Sequence[str], normalize: str = "basic") -> dict[str, float]:
    """Corpus-level ``wer`` and ``cer`` (fractions, not percent) after ``normalize``."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    totals = np.zeros(4, dtype=np.int64)
    for ref, hyp in zip(references, hypotheses, strict=True):
        totals += utterance_errors(normalize_text(ref, normalize), normalize_text(hyp, normalize))
    word_edits, words, char_edits, chars = (int(x) for x in totals)
    return {
        "wer": word_edits / words if words else float(word_edits > 0),
        "cer": char_edits / chars if chars else float(char_edits > 0),
        "words": float(words),
    }


def utterance_wer(reference: str, hypothesis: str, normalize: str = "basic") -> float:
    ref, hyp = normalize_text(reference, normalize), normalize_text(hypothesis, normalize)
    edits, words, _, _ = utterance_errors(ref, hyp)
    return edits / words if words else float(edits > 0)
