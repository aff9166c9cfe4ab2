"""Operator use cases: register and delete experts, upsert and delete documents.

Each use case validates, prepares a Change (embedding documents here, once), and hands it to
the change sink: applied at once on a lone gateway, or recorded in the Redis change log and
applied by every gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from app.core.names import RESERVED, check_name
from app.core.text import blank, not_utf8
from app.encoder import BASE
from app.encoder.base import QueryEncoder
from app.encoder.documents import document_text
from app.errors import Conflict, InvalidInput, NotFound
from app.experts.artifacts import Expert
from app.experts.registry import ExpertRegistry
from app.experts.validation import (
    document_embeddings,
    normalize_pilots,
    parse_pilots,
    validate_adapter,
)
from app.index import Document, IndexStore
from app.replication.changes import (
    DocumentDeleted,
    DocumentsUpserted,
    ExpertAdded,
    ExpertRemoved,
    FusionWeightSet,
)
from app.replication.sinks import ChangeSink
from app.service.batched_work import EncodeJob, RoutedEncodeJob
from app.service.batcher import MicroBatcher
from app.service.crash_point import CrashPoint

# Documents are embedded in slices so searches interleave with a large upload.
EMBED_SLICE = 128
MAX_DOCUMENTS_PER_REQUEST = 10_000
MAX_PILOT_QUERIES = 10_000


class AdminService:
    def __init__(
        self,
        registry: ExpertRegistry,
        indexes: IndexStore,
        encoder: QueryEncoder,
        encoder_batcher: MicroBatcher,
        sink: ChangeSink,
        replicated: bool = False,
        crash_point: CrashPoint | None = None,
    ) -> None:
        self.registry = registry
        self.indexes = indexes
        self.encoder = encoder
        self.encoder_batcher = encoder_batcher
        self.sink = sink
        # Replicated: Redis decides existence atomically; local state may lag a moment.
        self.replicated = replicated
        self.crash_point = crash_point or CrashPoint(None)

    def _require_expert(self, name: str) -> str:
        check_name(name)
        if not self.replicated and name not in self.registry:
            raise NotFound(f"expert {name!r} not found")
        return name

    async def embed_documents(
        self, texts: Sequence[str], progress: Callable[[int], object] | None = None
    ) -> np.ndarray:
        """Base-encoder embeddings, in slices queued behind (and between) search traffic."""
        parts = []
        for start in range(0, len(texts), EMBED_SLICE):
            chunk = list(texts[start : start + EMBED_SLICE])
            job = EncodeJob(chunk, [BASE] * len(chunk), documents=True)
            parts.append(await self.encoder_batcher.submit(job, size=len(chunk)))
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim), np.float32)

    # -- experts -------------------------------------------------------------------------

    async def register_expert(
        self,
        name: str,
        adapter_config: bytes,
        adapter_model: bytes,
        pilots_npy: bytes | None = None,
        pilot_queries: Sequence[str] | None = None,
        description: str = "",
    ) -> Expert:
        """Validate everything first; only then record the expert and start serving it."""
        check_name(name)
        if name in RESERVED:
            raise InvalidInput(f"{name!r} is reserved")
        if not self.replicated and name in self.registry:
            raise Conflict(f"expert {name!r} already exists")
        if not_utf8(description) is not None:
            raise InvalidInput("description: not valid UTF-8 text (a lone surrogate?)")
        await asyncio.to_thread(
            validate_adapter, adapter_config, adapter_model, self.encoder.module_shapes
        )
        pilots = await self._pilots(pilots_npy, pilot_queries)
        change = ExpertAdded(name, adapter_config, adapter_model, pilots, description)
        return await self.sink.submit(change)

    async def _pilots(self, npy: bytes | None, queries: Sequence[str] | None) -> np.ndarray:
        if (npy is None) == (queries is None):
            raise InvalidInput("give exactly one of pilot_queries (JSON list) or pilots (.npy)")
        if npy is not None:
            return parse_pilots(npy, self.encoder.dim)
        assert queries is not None
        if not queries or len(queries) > MAX_PILOT_QUERIES:
            raise InvalidInput(f"pilot_queries needs 1..{MAX_PILOT_QUERIES} example queries")
        if any(not isinstance(q, str) or not q.strip() for q in queries):
            raise InvalidInput("pilot_queries must be non-empty strings")
        if (where := not_utf8(list(queries), "pilot_queries")) is not None:
            raise InvalidInput(f"{where}: not valid UTF-8 text (a lone surrogate?)")
        # In the router's space: the routing features of the example queries.
        job = RoutedEncodeJob(list(queries), lambda f: [[] for _ in range(len(f))])
        embedded = (await self.encoder_batcher.submit(job, size=len(queries))).features
        # The expert's pilot set: the routing features of its example queries (the learned
        # router fits on the sets; the centroid rule averages them).
        return normalize_pilots(embedded, self.encoder.dim)

    async def set_fusion_weight(self, name: str, weight: float | None) -> None:
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise InvalidInput("weight must be between 0 and 1")
        await self.sink.submit(FusionWeightSet(self._require_expert(name), weight))

    async def delete_expert(self, name: str) -> None:
        """Stop routing to it, let in-flight requests finish, then drop adapter and index."""
        await self.sink.submit(ExpertRemoved(self._require_expert(name)))

    # -- documents -----------------------------------------------------------------------

    async def upsert_documents(
        self,
        name: str,
        documents: Sequence[Document],
        embeddings: Sequence[Sequence[float] | None] | None = None,
    ) -> tuple[int, int]:
        """`embeddings[i]`, where given, is document i's precomputed base-encoder vector (a
        corpus encoded elsewhere loads without re-encoding); the rest are embedded here."""
        self._require_expert(name)
        if not documents:
            raise InvalidInput("documents must not be empty")
        if len(documents) > MAX_DOCUMENTS_PER_REQUEST:
            raise InvalidInput(f"at most {MAX_DOCUMENTS_PER_REQUEST} documents per request")
        for i, doc in enumerate(documents):  # the HTTP schema checks these too
            fields = {"id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata}
            if (where := not_utf8(fields, f"documents[{i}]")) is not None:
                raise InvalidInput(f"{where}: not valid UTF-8 text (a lone surrogate?)")
            if blank(doc.title) and blank(doc.text):
                raise InvalidInput(f"documents[{i}]: a document needs a non-empty title or text")
        given = [(i, e) for i, e in enumerate(embeddings or ()) if e is not None]
        if embeddings is not None and len(embeddings) != len(documents):
            raise InvalidInput("one embedding (or null) per document")
        vectors = np.empty((len(documents), self.encoder.dim), dtype=np.float32)
        if given:
            vectors[[i for i, _ in given]] = document_embeddings(given, self.encoder.dim)
        if missing := sorted(set(range(len(documents))) - {i for i, _ in given}):
            vectors[missing] = await self.embed_documents(
                [document_text(documents[i].title, documents[i].text) for i in missing]
            )
        counts = await self.sink.submit(DocumentsUpserted(name, list(documents), vectors))
        self.crash_point.write_landed()
        return counts

    async def delete_document(self, name: str, doc_id: str) -> None:
        self._require_expert(name)
        if name not in self.indexes or self.indexes.get(name).get(doc_id) is None:
            raise NotFound(f"document {doc_id!r} not found in {name!r}")
        await self.sink.submit(DocumentDeleted(name, doc_id))
        self.crash_point.write_landed()

    def get_document(self, name: str, doc_id: str) -> Document:
        self._require_expert(name)
        document = self.indexes.get(name).get(doc_id) if name in self.indexes else None
        if document is None:
            raise NotFound(f"document {doc_id!r} not found in {name!r}")
        return document
