"""A word n-gram language model written as an ARPA file, for ``options.lm: auto``.

Why by hand: KenLM's estimator (``lmplz``) is a C++ program that no wheel ships (the ``kenlm``
Python module only queries models, and builds from source), and CI installs from package
registries only. The ARPA file written here loads in KenLM (flashlight-text bundles it), so
decoding uses KenLM all the same; only the estimation is ours.

Smoothing: interpolated Kneser-Ney (Chen & Goodman 1998, section 3), as ``lmplz`` does, with one
discount per order, ``D = n1 / (n1 + 2 n2)`` from that order's count-of-counts (lmplz uses three
per order, "modified" KN). Transcription corpora are small: when ``n1`` or ``n2`` is zero (the
ten digit words of FSDD, say) the discount falls back to 0.5, like lmplz's
``--discount_fallback``.

- The highest order uses raw counts; a lower order uses continuation counts (how many distinct
  words precede the n-gram), except n-grams that start with ``<s>``, which keep their raw counts.
- ``p(w | h) = max(a(hw) - D, 0) / S(h) + g(h) p(w | h')``, with ``S(h)`` the sum of ``a(h .)``,
  ``g(h) = D T(h) / S(h)`` and ``T(h)`` the number of distinct words seen after ``h``; ``h'`` drops
  the first word of ``h``. Unigrams interpolate with the uniform distribution over the words seen
  plus ``<unk>``; ``<s>`` is never predicted (log10 probability -99, as in lmplz's files).
- The ARPA file lists every seen n-gram with ``log10 p`` and, below the highest order, the backoff
  ``log10 g(h)`` (0 for an n-gram after which nothing was seen): for an unseen ``hw`` a reader
  computes ``g(h) p(w | h')``, which is exactly the interpolated probability, so every context's
  distribution sums to 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNT = 0.5
NEVER = -99.0  # log10 probability of <s> (never predicted), as lmplz writes it


def count_ngrams(sentences: Iterable[list[str]], order: int) -> list[Counter]:
    """Raw counts of the 1..order-grams of ``<s> words </s>``; ``counts[k]`` holds the (k+1)-grams."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for k in range(1, order + 1):
            for i in range(len(padded) - k + 1):
                counts[k - 1][padded[i : i + k]] += 1
    return counts


def adjusted_counts(counts: list[Counter]) -> list[Counter]:
    """Kneser-Ney counts: raw at the highest order and for n-grams starting with <s>, otherwise
    the number of distinct words seen before the n-gram."""
    order = len(counts)
    adjusted = [Counter() for _ in range(order)]
    adjusted[-1] = Counter(counts[-1])
    for k in range(order - 1):
        continuation = Counter(gram[1:] for gram in counts[k + 1])
        for gram, raw in counts[k].items():
            adjusted[k][gram] = raw if gram[0] == BOS else continuation[gram]
    return adjusted


def discount(adjusted: Counter) -> float:
    """``n1 / (n1 + 2 n2)``, or the fallback when the count-of-counts cannot give one in (0, 1)."""
    hist = Counter(adjusted.values())
    n1, n2 = hist.get(1, 0), hist.get(2, 0)
    if n1 == 0 or n2 == 0:
        return FALLBACK_DISCOUNT
    d = n1 / (n1 + 2 * n2)
    return d if 0 < d < 1 else FALLBACK_DISCOUNT


def kneser_ney(sentences: Iterable[list[str]], order: int) -> tuple[list[dict], list[dict]]:
    """``(probs, backoffs)``: per order, n-gram tuple -> probability and context tuple -> backoff
    weight (both plain, not log)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    counts = count_ngrams(sentences, order)
    if not counts[0]:
        raise ValueError("no text to build a language model from")
    adjusted = adjusted_counts(counts)
    discounts = [discount(Counter({g: a for g, a in adj.items() if g != (BOS,)})) for adj in adjusted]
    probs: list[dict] = [{} for _ in range(order)]
    backoffs: list[dict] = [{} for _ in range(order)]

    unigrams = {g: a for g, a in adjusted[0].items() if g != (BOS,)}
    total, d = sum(unigrams.values()), discounts[0]
    vocab = len(unigrams) + (0 if (UNK,) in unigrams else 1)
    gamma = d * sum(1 for a in unigrams.values() if a > 0) / total
    for gram, a in unigrams.items():
        probs[0][gram] = max(a - d, 0) / total + gamma / vocab
    probs[0].setdefault((UNK,), gamma / vocab)

    for k in range(1, order):
        d = discounts[k]
        sums: Counter = Counter()
        kinds: Counter = Counter()
        for gram, a in adjusted[k].items():
            sums[gram[:-1]] += a
            kinds[gram[:-1]] += 1
        for context in sums:
            backoffs[k - 1][context] = d * kinds[context] / sums[context]
        for gram, a in adjusted[k].items():
            context = gram[:-1]
            lower = probs[k - 1][gram[1:]]
            probs[k][gram] = max(a - d, 0) / sums[context] + backoffs[k - 1][context] * lower
    return probs, backoffs


def write_arpa(path: str | Path, sentences: Iterable[list[str]], order: int) -> Path:
    """Estimate an interpolated Kneser-Ney model of ``order`` from ``sentences`` (lists of words)
    and write it as an ARPA file."""
    probs, backoffs = kneser_ney(sentences, order)
    path = Path(path)
    lines = ["", "\\data\\"]
    sizes = [len(probs[0]) + 1, *(len(p) for p in probs[1:])]  # + the <s> unigram
    lines += [f"ngram {k + 1}={n}" for k, n in enumerate(sizes)]
    for k in range(order):
        lines += ["", f"\\{k + 1}-grams:"]
        entries = sorted(probs[k].items())
        if k == 0:
            entries = sorted([*entries, ((BOS,), None)], key=lambda e: e[0])
        for gram, p in entries:
            logp = NEVER if p is None else math.log10(p)
            row = f"{logp:.7f}\t{' '.join(gram)}"
            if k < order - 1:
                bo = backoffs[k].get(gram)
                row += f"\t{math.log10(bo):.7f}" if bo else "\t0"
            lines.append(row)
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
