"""Rows grouped by token length, so short queries are not padded to one long text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A bucket may waste at most this share of its padded tokens: one long text must not pad a
# whole batch of short queries to its length.
MAX_PADDING_WASTE = 0.3


def length_buckets(lengths: Sequence[int], max_rows: int) -> list[np.ndarray]:
    """Row indices grouped by similar token length (sorted), each group <= max_rows."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]  # >= every length already in `current` (sorted ascending)
        padded = n * (len(current) + 1)
        if current and (len(current) == max_rows or tokens + n < (1 - MAX_PADDING_WASTE) * padded):
            buckets.append(current)
            current, tokens = [], 0
        current.append(int(i))
        tokens += n
    if current:
        buckets.append(current)
    return [np.array(b, dtype=np.int64) for b in buckets]
