"""`rr ingest`: load a BEIR-style corpus into a running gateway's expert, over the admin API.

Documents go in batches through `PUT /admin/experts/{name}/documents`, so every gateway
(Redis replication) gets them and each batch is one durable write. With `--embeddings`, a
`.npy` of base-encoder vectors in corpus order (e.g. from a GPU job), the gateway stores them
as given (it checks dimension, finiteness and unit norm) and encodes nothing. Upserts are
idempotent by id: re-running after an interruption is safe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

# Statuses worth retrying (queue full, gateway busy or restarting); others stop the load.
RETRY_STATUSES = {429, 502, 503, 504}
RETRIES = 8


class IngestError(Exception):
    pass


@dataclass
class IngestResult:
    documents: int = 0
    inserted: int = 0
    updated: int = 0
    seconds: float = 0.0


def read_corpus(path: Path) -> Iterator[dict[str, Any]]:
    """BEIR corpus lines (`_id` or `id`, `title`, `text`, optional `metadata`)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc_id = row.get("_id", row.get("id"))
                doc = {"id": str(doc_id), "title": row.get("title") or ""}
                doc["text"] = row.get("text") or ""
            except (ValueError, AttributeError) as exc:
                raise IngestError(f"{path}:{number}: not a JSON object") from exc
            if doc_id is None or doc["id"] == "":
                raise IngestError(f"{path}:{number}: no `_id` (or `id`)")
            if row.get("metadata"):
                doc["metadata"] = row["metadata"]
            yield doc


def ingest(
    client: httpx.Client,
    expert: str,
    corpus: Path,
    embeddings: Path | None = None,
    batch_size: int = 1000,
    progress: bool = True,
) -> IngestResult:
    vectors = np.load(embeddings, mmap_mode="r", allow_pickle=False) if embeddings else None
    total = _count_lines(corpus)
    if vectors is not None and len(vectors) != total:
        raise IngestError(f"{embeddings}: {len(vectors)} rows for {total} corpus lines")
    result, started = IngestResult(), time.perf_counter()
    with tqdm(total=total, unit="doc", disable=not progress, desc=f"ingest {expert}") as bar:
        batch: list[dict[str, Any]] = []
        for position, doc in enumerate(read_corpus(corpus)):
            if vectors is not None:
                doc["embedding"] = np.asarray(vectors[position], dtype=np.float32).tolist()
            batch.append(doc)
            if len(batch) == batch_size:
                _send(client, expert, batch, result)
                bar.update(len(batch))
                batch = []
        if batch:
            _send(client, expert, batch, result)
            bar.update(len(batch))
    result.seconds = time.perf_counter() - started
    return result


def _send(
    client: httpx.Client, expert: str, batch: list[dict[str, Any]], result: IngestResult
) -> None:
    for attempt in range(RETRIES):
        try:
            response = client.put(f"/admin/experts/{expert}/documents", json={"documents": batch})
        except httpx.TransportError as exc:  # gateway restarting: the same batch again
            if attempt == RETRIES - 1:
                raise IngestError(f"gateway unreachable: {exc}") from exc
        else:
            if response.status_code == 200:
                body = response.json()
                result.documents += len(batch)
                result.inserted += body["inserted"]
                result.updated += body["updated"]
                return
            if response.status_code not in RETRY_STATUSES or attempt == RETRIES - 1:
                raise IngestError(
                    f"batch starting at document {batch[0]['id']!r}: HTTP "
                    f"{response.status_code}: {response.text[:500]}"
                )
        time.sleep(min(30.0, 0.5 * 2**attempt))


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())
