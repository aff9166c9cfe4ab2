"""Length bucketing: short queries are never padded to a long text's length."""

from __future__ import annotations

from app.encoder.buckets import MAX_PADDING_WASTE, length_buckets


def test_long_texts_get_their_own_bucket() -> None:
    lengths = [10, 12, 11, 200, 13, 9, 250]
    buckets = [sorted(b.tolist()) for b in length_buckets(lengths, max_rows=64)]
    assert buckets == [[0, 1, 2, 4, 5], [3, 6]]


def test_every_row_once_and_bounded_rows_and_waste() -> None:
    lengths = [(i * 37) % 120 + 3 for i in range(300)]
    buckets = length_buckets(lengths, max_rows=16)
    rows = sorted(i for b in buckets for i in b.tolist())
    assert rows == list(range(300))
    for bucket in buckets:
        assert len(bucket) <= 16
        sizes = [lengths[i] for i in bucket]
        assert sum(sizes) >= (1 - MAX_PADDING_WASTE) * max(sizes) * len(sizes)


def test_equal_lengths_fill_batches() -> None:
    buckets = length_buckets([10] * 70, max_rows=64)
    assert [len(b) for b in buckets] == [64, 6]
