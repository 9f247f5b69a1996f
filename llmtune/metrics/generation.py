"""Text-generation metrics: ROUGE (summarization), sacreBLEU and chrF (translation).

``evaluate.load("rouge")``/``("sacrebleu")`` download their scripts from the Hub; the scores
come from the libraries those scripts wrap, called directly here so nothing needs the network:

- ROUGE-1/2/L/Lsum with ``rouge_score`` (F-measure, averaged over examples, x100). ROUGE-Lsum
  treats newlines as sentence boundaries, so, as in Hugging Face's ``run_summarization.py``,
  predictions and references get one sentence per line first: with ``nltk.sent_tokenize`` when
  its punkt data is installed, else with a regex splitter (no download is ever attempted).
  The plain mean is reported rather than ``evaluate``'s bootstrap median, which resamples and
  is therefore not a deterministic function of the predictions.
- BLEU and chrF with ``sacrebleu`` at corpus level (x100, sacreBLEU's default 13a tokenizer).

``rouge_score``'s default tokenizer keeps only ``[a-z0-9]`` (after lowercasing): ROUGE is an
English metric; use BLEU/chrF for other languages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# End of a sentence: . ! ? (optionally followed by closing quotes/brackets) and whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


@lru_cache(maxsize=1)
def _nltk_sent_tokenize():
    """``nltk.sent_tokenize`` when its punkt data is already installed, else None."""
    try:
        import nltk

        for resource in ("tokenizers/punkt_tab/english/", "tokenizers/punkt/english.pickle"):
            try:
                nltk.data.find(resource)
            except LookupError:
                continue
            nltk.sent_tokenize("Probe. Sentence.")  # the installed data may still not load
            return nltk.sent_tokenize
    except Exception:  # nltk missing or broken data: fall back to the regex splitter
        return None
    return None


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (nltk punkt when available offline, else a punctuation regex)."""
    text = text.strip()
    if not text:
        return []
    tokenize = _nltk_sent_tokenize()
    if tokenize is not None:
        return [s for s in tokenize(text) if s.strip()]
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def sentences_per_line(text: str) -> str:
    """The ``rougeLsum`` input convention: one sentence per line."""
    return "\n".join(split_sentences(text))


def rouge_scores(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True, split: bool = True
) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure x100 over example pairs.

    ``split`` puts one sentence per line first (needed by ROUGE-Lsum; it does not change the
    other three, whose tokenizer ignores newlines).
    """
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    if not predictions:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        if split:
            pred, ref = sentences_per_line(pred), sentences_per_line(ref)
        scores = scorer.score(ref, pred)  # rouge_score takes (target, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus-level sacreBLEU and chrF (one reference per example), x100 as sacrebleu reports."""
    from sacrebleu.metrics import BLEU, CHRF

    _check_lengths(predictions, references)
    preds, refs = list(predictions), [list(references)]
    bleu = BLEU().corpus_score(preds, refs)
    chrf = CHRF().corpus_score(preds, refs)
    return {"bleu": float(bleu.score), "chrf": float(chrf.score), "bleu_brevity_penalty": float(bleu.bp)}


def generation_metrics(predictions: Sequence[str], references: Sequence[str], kinds: Sequence[str]) -> dict:
    """The metric families named in ``kinds`` (``rouge``, ``bleu``) for decoded texts."""
    out: dict[str, float] = {}
    if "rouge" in kinds:
        out.update(rouge_scores(predictions, references))
    if "bleu" in kinds:
        out.update(bleu_chrf(predictions, references))
    return out


GENERATION_METRICS = (*ROUGE_TYPES, "bleu", "chrf", "exact_match")


def normalize_answer(text: str) -> str:
    """Lowercased, whitespace-collapsed, surrounding punctuation stripped (for exact match)."""
    return " ".join(text.lower().split()).strip(" .,!?;:\"'")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalize_answer`, x100."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return 100.0 * hits / len(predictions)


def score_generations(predictions: Sequence[str], references: Sequence[str], names: Sequence[str]) -> dict:
    """The metrics in ``names`` (from :data:`GENERATION_METRICS`) for generated vs reference texts."""
    out: dict[str, float] = {}
    if any(n in ROUGE_TYPES for n in names):
        rouge = rouge_scores(predictions, references)
        out.update({n: rouge[n] for n in names if n in ROUGE_TYPES})
    if "bleu" in names or "chrf" in names:
        both = bleu_chrf(predictions, references) if predictions else {"bleu": 0.0, "chrf": 0.0}
        out.update({n: both[n] for n in ("bleu", "chrf") if n in names})
    if "exact_match" in names:
        out["exact_match"] = exact_match(predictions, references)
    return out


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
