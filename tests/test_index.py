"""Per-expert FAISS index + SQLite document store: upsert, delete, persistence, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.errors import NotFound, StorageFull
from app.index import Document, IndexStore
from app.index.expert_index import INDEX_FILE, SNAPSHOT_META, ExpertIndex

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _docs(n: int) -> list[Document]:
    return [Document(f"d{i}", f"text {i}", f"title {i}", {"n": i}) for i in range(n)]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_upsert_search_replace_delete(tmp_path: Path, kind: str) -> None:
    index = ExpertIndex("sci", tmp_path / "sci", DIM, kind)
    vectors = _vectors(20)
    assert index.upsert(_docs(20), vectors) == (20, 0)
    [hits] = index.search(vectors[[3]], k=5)
    assert hits[0].id == "d3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].title == "title 3" and hits[0].metadata == {"n": 3} and hits[0].index == "sci"

    # Same id replaces: the old vector no longer matches, the new one does.
    assert index.upsert([Document("d3", "new text")], vectors[[7]]) == (0, 1)
    assert len(index) == 20
    [hits] = index.search(vectors[[7]], k=2)
    assert {h.id for h in hits} == {"d3", "d7"}
    assert index.get("d3").text == "new text"

    assert index.delete("d7") and not index.delete("d7")
    [hits] = index.search(vectors[[7]], k=20)
    assert "d7" not in {h.id for h in hits} and len(index) == 19


def test_reopen_restores_documents(tmp_path: Path) -> None:
    store = IndexStore(tmp_path, DIM)
    store.open("sci").upsert(_docs(5), _vectors(5))
    store.close()
    reopened = IndexStore(tmp_path, DIM)
    assert reopened.open_existing() == ["sci"]
    assert len(reopened.get("sci")) == 5
    assert reopened.get("sci").readable()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_a_stale_snapshot_is_reconciled_and_a_corrupt_one_rebuilt(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "sci"
    index = ExpertIndex("sci", path, DIM, kind)
    vectors = _vectors(5)
    index.upsert(_docs(4), vectors[:4])
    index.snapshot()  # (or the background one at open got there first)
    assert not index.snapshot()  # nothing new: not written again
    # Writes after the snapshot, then a crash (close stops the background snapshot).
    index.upsert([Document("late", "written just before a crash")], _vectors(1, seed=9))
    index.upsert([Document("d1", "replaced")], vectors[[4]])
    index.delete("d2")
    index.close()
    assert json.loads((path / SNAPSHOT_META).read_text())["generation"] == 1
    recovered = ExpertIndex("sci", path, DIM, kind)
    assert len(recovered) == 4
    assert recovered.search(_vectors(1, seed=9), 1)[0][0].id == "late"
    assert recovered.search(vectors[[4]], 1)[0][0].id == "d1"
    assert "d2" not in {h.id for h in recovered.search(vectors[[2]], 4)[0]}
    assert recovered.readable()
    recovered.close()
    (path / INDEX_FILE).write_bytes(b"garbage")
    rebuilt = ExpertIndex("sci", path, DIM, kind)
    assert len(rebuilt) == 4 and rebuilt.search(vectors[[4]], 1)[0][0].id == "d1"
    rebuilt.close()


def test_writes_never_rewrite_the_faiss_file(tmp_path: Path) -> None:
    """A write costs O(batch): SQLite commits it, FAISS takes it in memory; the snapshot
    file is written later, in the background, not by the write."""
    index = ExpertIndex("sci", tmp_path / "sci", DIM)
    index.upsert(_docs(3), _vectors(3))
    index.snapshot()
    before = (tmp_path / "sci" / INDEX_FILE).stat().st_mtime_ns
    index.upsert([Document("x", "one more")], _vectors(1, seed=5))
    index.delete("d0")
    assert (tmp_path / "sci" / INDEX_FILE).stat().st_mtime_ns == before
    assert len(index) == 3 and index.snapshot()  # behind the store: written now
    assert (tmp_path / "sci" / INDEX_FILE).stat().st_mtime_ns != before
    index.close()


def test_a_full_disk_is_a_storage_error_and_leaves_the_index_intact(tmp_path: Path) -> None:
    index = ExpertIndex("sci", tmp_path / "sci", DIM)
    index.upsert(_docs(3), _vectors(3))
    pages = index._db.execute("PRAGMA page_count").fetchone()[0]
    index._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "disk is full"
    big = [Document(f"big{i}", "x" * 20_000) for i in range(20)]
    with pytest.raises(StorageFull):
        index.upsert(big, _vectors(20, seed=3))
    assert len(index) == 3 and index.get("big0") is None and index.readable()
    index._db.execute("PRAGMA max_page_count=1073741823")  # space freed: writes resume
    assert index.upsert(big, _vectors(20, seed=3)) == (20, 0)
    index.close()


def test_drop_removes_files_and_closed_index_is_not_found(tmp_path: Path) -> None:
    store = IndexStore(tmp_path, DIM)
    index = store.open("sci")
    index.upsert(_docs(2), _vectors(2))
    store.drop("sci")
    assert not (tmp_path / "sci").exists() and "sci" not in store
    with pytest.raises(NotFound):
        index.search(_vectors(1), 1)
    with pytest.raises(NotFound):
        store.get("sci")


def test_search_empty_index_and_without_text(tmp_path: Path) -> None:
    index = ExpertIndex("e", tmp_path / "e", DIM)
    assert index.search(_vectors(2), 3) == [[], []]
    index.upsert(_docs(3), _vectors(3))
    [hits] = index.search(_vectors(3)[[0]], 10, with_text=False)
    assert len(hits) == 3 and hits[0].text == ""


def test_readable_through_a_write_but_not_with_documents_missing_from_faiss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = ExpertIndex("sci", tmp_path / "sci", DIM)
    seen = []
    real_apply = ExpertIndex._apply

    def apply(self, *args, **kwargs):  # the row count already moved, FAISS not yet
        seen.append((self._rows != self._index.ntotal, self.readable()))
        return real_apply(self, *args, **kwargs)

    monkeypatch.setattr(ExpertIndex, "_apply", apply)
    index.upsert(_docs(3), _vectors(3))
    index.delete("d0")
    assert seen == [(True, True), (True, True)]  # mid-write: not a fault
    assert index.readable()
    index._rows += 1  # a stored document FAISS lacks, with no write landing
    assert not index.readable()
    index.close()


def test_id_only_hits_from_the_postings_equal_those_from_the_store(tmp_path: Path) -> None:
    """Hybrid's dense leg names its hits from the postings' id table (no SQL) while they are
    current; the store answers otherwise, with the same hits."""
    from dataclasses import replace

    from app.shortcuts import LEXICAL_POSTINGS

    index = ExpertIndex("sci", tmp_path / "sci", DIM)
    index.upsert(_docs(30), _vectors(30))
    index._build_postings_now()
    postings = index._current_postings()
    assert postings is not None
    queries = _vectors(4, seed=7)
    fast = index.search(queries, 10, with_text=False)
    index.shortcuts.switch_off(LEXICAL_POSTINGS, "test: the exact path")
    assert index.search(queries, 10, with_text=False) == fast
    # A row FAISS holds that the postings lack (a delete landing): the store answers.
    _, ids = index._index.search(queries, 10)
    keep = postings.rowids != ids[0][0]
    kept_ids = [doc_id for doc_id, kept in zip(postings.ids, keep, strict=True) if kept]
    missing = replace(postings, rowids=postings.rowids[keep], ids=kept_ids)
    assert index._postings_rows(missing, ids) is None
    assert index._postings_rows(postings, ids) is not None
    index.close()


def test_a_document_re_upserted_during_a_search_is_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FAISS answer names the old row; the re-upsert commits before the rows are read:
    the search looks again once the write has landed instead of losing the document."""
    index = ExpertIndex("sci", tmp_path / "sci", DIM)
    vectors = _vectors(5)
    index.upsert(_docs(5), vectors)
    real_fetch = ExpertIndex._fetch
    calls = []

    def fetch_after_a_write(db, rowids, with_text):
        if not calls:
            index.upsert([Document("d2", "rewritten")], vectors[[2]])
        calls.append(rowids)
        return real_fetch(db, rowids, with_text)

    monkeypatch.setattr(ExpertIndex, "_fetch", staticmethod(fetch_after_a_write))
    [hits] = index.search(vectors[[2]], 5)
    assert hits[0].id == "d2" and hits[0].text == "rewritten" and len(hits) == 5
    assert len(calls) == 2  # the first read missed the replaced row; the second did not
    index.close()


def test_a_snapshot_of_another_store_is_not_trusted(tmp_path: Path) -> None:
    """Row ids are unique within one store: a snapshot beside a restored (other) store is
    rebuilt, not reconciled."""
    first, second = tmp_path / "a", tmp_path / "b"
    index = ExpertIndex("sci", first, DIM)
    index.upsert(_docs(4), _vectors(4))
    index.snapshot()
    index.close()
    other = ExpertIndex("sci", second, DIM)
    other.upsert([Document("x", "other store")], _vectors(1, seed=3))
    other.close()
    for name in (INDEX_FILE, SNAPSHOT_META):  # the first store's snapshot beside the second
        (second / name).write_bytes((first / name).read_bytes())
    reopened = ExpertIndex("sci", second, DIM)
    assert len(reopened) == 1
    assert reopened.search(_vectors(1, seed=3), 1)[0][0].id == "x"
    reopened.close()
