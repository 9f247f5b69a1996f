"""Length-sorted batches: little padding, results written back in input order."""

from __future__ import annotations

from collections.abc import Sequence


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest batch first.

    Longest first: a batch that does not fit in memory fails at once, not at the end. Callers
    put each result back at its index, so the output keeps the input order.
    """
    size = max(1, int(batch_size))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + size] for i in range(0, len(order), size)]
