"""ROUGE / sacreBLEU / chrF in llmtune.metrics.generation against the reference libraries."""

from __future__ import annotations

import math

import pytest

from llmtune.metrics import generation
from llmtune.metrics.generation import bleu_chrf, generation_metrics, rouge_scores, split_sentences

PREDICTIONS = [
    "The cat sat on the mat. It was happy.",
    "A quick brown fox jumps over the lazy dog!",
    "Police arrested two men after the robbery on Friday.",
    "",
    "Stocks fell sharply. Investors were worried? Markets closed lower.",
    "Der Hund läuft schnell über die Straße.",
    "Rain is expected tomorrow. Officials closed the bridge.",
]
REFERENCES = [
    "The cat was sitting on the mat. The cat was happy.",
    "The quick brown fox jumped over the lazy dogs.",
    "Two men were arrested by police following Friday's robbery.",
    "Nothing happened.",
    "Stocks dropped sharply as investors worried. Markets ended lower.",
    "Der Hund rennt schnell über die Straße.",
    "Officials closed the bridge. Rain is expected tomorrow.",
]


def test_rouge_matches_rouge_score_to_1e6():
    from rouge_score import rouge_scorer

    ours = rouge_scores(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = dict.fromkeys(ours, 0.0)
    for pred, ref in zip(PREDICTIONS, REFERENCES, strict=True):
        # run_summarization's convention: one sentence per line (rougeLsum splits on newlines)
        scores = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for key in expected:
            expected[key] += scores[key].fmeasure
    for key, total in expected.items():
        assert abs(ours[key] - 100 * total / len(PREDICTIONS)) < 1e-6, key
    # Lsum really differs from L once sentences are split, so the newline convention is exercised
    assert abs(ours["rougeLsum"] - ours["rougeL"]) > 1e-3


def test_rouge_hand_computed():
    # pred "the cat sat" vs ref "the cat sat down": unigram P=3/3, R=3/4 -> F=6/7; bigram P=2/2, R=2/3 -> F=0.8
    scores = rouge_scores(["the cat sat"], ["the cat sat down"])
    assert math.isclose(scores["rouge1"], 100 * 6 / 7, abs_tol=1e-9)
    assert math.isclose(scores["rouge2"], 80.0, abs_tol=1e-9)
    assert math.isclose(scores["rougeL"], 100 * 6 / 7, abs_tol=1e-9)
    assert rouge_scores(["same words here"], ["same words here"])["rouge2"] == 100.0


def test_sentence_splitter_regex_fallback(monkeypatch):
    monkeypatch.setattr(generation, "_nltk_sent_tokenize", lambda: None)
    assert split_sentences('He left. "Why?" she asked! Then (quietly) silence.') == [
        "He left.",
        '"Why?"',
        "she asked!",
        "Then (quietly) silence.",
    ]
    assert split_sentences("  ") == []
    assert split_sentences("No final stop") == ["No final stop"]


def test_bleu_chrf_match_sacrebleu_to_1e6():
    import sacrebleu

    ours = bleu_chrf(PREDICTIONS, REFERENCES)
    assert abs(ours["bleu"] - sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score) < 1e-6
    assert abs(ours["chrf"] - sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score) < 1e-6
    assert 0 < ours["bleu"] < 100 and 0 < ours["chrf"] < 100


def test_bleu_hand_computed():
    # Identical corpora score 100; a corpus-level (not sentence-averaged) score:
    # 4-gram precisions of one 6-word hypothesis against its reference, brevity penalty 1.
    assert bleu_chrf(["a b c d e f"], ["a b c d e f"])["bleu"] == pytest.approx(100.0)
    hyp, ref = "a b c d e x", "a b c d e f"
    # p1=5/6 p2=4/5 p3=3/4 p4=2/3 -> geometric mean
    expected = 100 * math.exp((math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3)) / 4)
    assert bleu_chrf([hyp], [ref])["bleu"] == pytest.approx(expected, abs=1e-6)


def test_generation_metrics_families_and_lengths():
    both = generation_metrics(PREDICTIONS, REFERENCES, ("rouge", "bleu"))
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"} <= set(both)
    assert set(generation_metrics(PREDICTIONS, REFERENCES, ("bleu",))) == {"bleu", "chrf", "bleu_brevity_penalty"}
    with pytest.raises(ValueError):
        rouge_scores(["a"], ["a", "b"])
