"""`rr ingest`: a BEIR corpus, with or without precomputed vectors, through the admin API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.ingest import IngestError, ingest
from tests.helpers import AUTH, register


def _corpus(path: Path, n: int) -> Path:
    lines = [{"_id": f"d{i}", "title": f"title {i}", "text": f"body {i}"} for i in range(n)]
    lines[1]["text"] = ""  # title-only, as in CACM
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_ingest_stores_given_vectors_in_batches_and_is_idempotent(
    fake_settings, lora_a: Path, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path / "corpus.jsonl", 5)
    vectors = np.random.default_rng(0).normal(size=(5, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "vectors.npy", vectors)
    with TestClient(create_app(fake_settings), headers=AUTH) as client:
        assert register(client, "sci", lora_a, ["protein folding"]).status_code == 201
        result = ingest(client, "sci", corpus, tmp_path / "vectors.npy", 2, progress=False)
        assert (result.documents, result.inserted, result.updated) == (5, 5, 0)
        index = client.app.state.ctx.indexes.get("sci")
        [hits] = index.search(vectors[[3]], 1)
        assert hits[0].id == "d3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert index.get("d1").title == "title 1"
        again = ingest(client, "sci", corpus, batch_size=10, progress=False)  # re-run
        assert (again.inserted, again.updated) == (0, 5)
        [hits] = index.search(vectors[[3]], 1)  # now embedded by the gateway
        assert hits[0].score < 0.5

        np.save(tmp_path / "short.npy", vectors[:4])
        with pytest.raises(IngestError, match="4 rows for 5"):
            ingest(client, "sci", corpus, tmp_path / "short.npy", progress=False)
        np.save(tmp_path / "scaled.npy", vectors * 2)
        with pytest.raises(IngestError, match="unit length"):
            ingest(client, "sci", corpus, tmp_path / "scaled.npy", progress=False)


def test_a_corpus_line_without_an_id_is_refused_by_line(tmp_path: Path) -> None:
    from app.ingest import read_corpus

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "t"}\n{"title": "no id"}\n')
    with pytest.raises(IngestError, match="corpus.jsonl:2: no `_id`"):
        list(read_corpus(corpus))
