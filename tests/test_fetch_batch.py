"""The documents batcher's work: the text of fused hits, one read per index for a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.index import Document, IndexStore
from app.service.batched_work import fetch_batch

DIM = 8


def _store(tmp_path: Path) -> IndexStore:
    store = IndexStore(tmp_path, DIM)
    rng = np.random.default_rng(0)
    for name in ("sci", "law"):
        docs = [Document(f"d{i}", f"{name} text {i}", f"{name} {i}", {"i": i}) for i in range(6)]
        vectors = rng.normal(size=(6, DIM)).astype(np.float32)
        store.open(name).upsert(docs, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return store


def test_each_job_gets_its_own_documents_from_one_read_per_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    reads: list[tuple[str, list[str]]] = []
    for name in ("sci", "law"):
        index = store.get(name)
        real = index.fetch

        def counted(ids, _real=real, _name=name):
            reads.append((_name, list(ids)))
            return _real(ids)

        monkeypatch.setattr(index, "fetch", counted)
    jobs = [{"sci": {"d1", "d2"}}, {"sci": {"d2", "d5"}, "law": {"d0", "missing"}}]
    first, second = fetch_batch(store)(jobs)

    assert sorted(reads) == [("law", ["d0", "missing"]), ("sci", ["d1", "d2", "d5"])]
    assert set(first) == {("sci", "d1"), ("sci", "d2")}
    assert set(second) == {("sci", "d2"), ("sci", "d5"), ("law", "d0")}  # no "missing"
    assert second[("law", "d0")].text == "law text 0"
    assert second[("law", "d0")].metadata == {"i": 0}
    assert first[("sci", "d2")].title == "sci 2"
    store.close()


def test_a_dropped_index_contributes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.drop("law")
    [found] = fetch_batch(store)([{"sci": {"d3"}, "law": {"d0"}}])
    assert list(found) == [("sci", "d3")]
    store.close()
