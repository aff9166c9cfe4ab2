"""The vector-index contract (app/index/base.py), run on both implementations: the served
FAISS + SQLite `ExpertIndex` and the in-memory `MemoryIndex` that `rr eval` searches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.documents import Document
from app.index.base import VectorIndex
from app.index.expert_index import ExpertIndex
from app.index.memory import MemoryIndex

DIM = 8


def _unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


@pytest.fixture(params=["faiss", "memory"])
def index(request, tmp_path: Path):
    if request.param == "memory":
        yield MemoryIndex("demo", DIM)
        return
    served = ExpertIndex("demo", tmp_path / "demo", DIM)
    yield served
    served.close()


def test_upsert_replace_delete_and_search_in_score_order(index: VectorIndex) -> None:
    docs = [Document("a", "alpha", "A", {"n": 1}), Document("b", "beta"), Document("c", "gamma")]
    vectors = np.stack([_unit(1, 0), _unit(0, 1), _unit(1, 1)])
    assert index.upsert(docs, vectors) == (3, 0)
    assert len(index) == 3
    [hits] = index.search(_unit(1, 0.1)[None, :], k=2)
    assert [h.id for h in hits] == ["a", "c"] and hits[0].score > hits[1].score
    assert (hits[0].title, hits[0].text, hits[0].metadata, hits[0].index) == (
        "A",
        "alpha",
        {"n": 1},
        "demo",
    )
    # Same id replaces (the last of a repeated id wins); the old vector is gone.
    replaced = [Document("a", "moved"), Document("a", "moved again")]
    assert index.upsert(replaced, np.stack([_unit(0, 1), _unit(0, 0, 1)])) == (0, 1)
    assert len(index) == 3 and index.get("a").text == "moved again"
    [hits] = index.search(_unit(0, 0, 1)[None, :], k=1)
    assert hits[0].id == "a"
    assert index.delete("b") and not index.delete("b")
    assert index.get("b") is None and len(index) == 2
    [bare] = index.search(_unit(1, 1)[None, :], k=10, with_text=False)
    assert {h.id for h in bare} == {"a", "c"} and bare[0].text == ""


def test_empty_index_and_shape_errors(index: VectorIndex) -> None:
    assert index.search(np.zeros((2, DIM), dtype=np.float32), k=3) == [[], []]
    with pytest.raises(ValueError):
        index.upsert([Document("x", "t")], np.zeros((2, DIM), dtype=np.float32))
