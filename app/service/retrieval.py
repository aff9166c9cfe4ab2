"""Search, route and embed: route and expert-encode in one pass -> search -> fuse.

One call handles a whole batch of queries: one routed pass (the layers below the routing
layer once, the router on their pooled states, then each row with its own expert's
adapter), then one FAISS search per index.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.core.candidates import Candidates
from app.core.fusion import RankedHit, rank_query
from app.core.names import AUTO, BASE_EXPERT, check_name
from app.core.planning import (
    Key,
    Plan,
    SearchOptions,
    encoders_for,
    lexical_jobs,
    search_jobs,
)
from app.core.router import Router, RoutingDecision
from app.core.text import blank, not_utf8
from app.encoder import BASE
from app.encoder.base import QueryEncoder, RoutedPass
from app.errors import InvalidInput, NotFound
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.replication.shared_cache import SharedEmbeddingCache
from app.service.batched_work import EncodeJob, RoutedEncodeJob, SearchJob, Wanted, fetch_batch
from app.service.batcher import MicroBatcher
from app.service.embedding_cache import EmbeddingCache
from app.service.indexing_progress import IndexingProgress, Progress
from app.settings import Settings
from app.shortcuts import EMBEDDING_CACHE, IDENTITY_EXPERT_SKIP, SHARED_EMBEDDING_CACHE


@dataclass
class SearchResult:
    hits: list[RankedHit]
    routing: RoutingDecision
    timing_ms: dict[str, float] = field(default_factory=dict)
    # Indexes this query searched that are still being filled (first start), and how far.
    indexing: dict[str, Progress] = field(default_factory=dict)


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray
    expert: str


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


Planner = Callable[[Router, np.ndarray], tuple[list[RoutingDecision], list[Plan]]]


class _Lease:
    """The experts one request routed to, leased until it is done, with their adapter
    versions as leased. Routing may happen on a model worker's thread after the request
    was cancelled: a lease taken then is let go at once (`route` says it is not live), so a
    delete never waits for a request that is gone and no work is started for it."""

    def __init__(self, registry: ExpertRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._closed = False
        self.versions: dict[str, str | None] = {}
        self.routed_at: float | None = None

    def route(self, planner: Callable[[Router], tuple[Any, set[str]]]) -> tuple[Any, bool]:
        """(the planner's decision, whether the request still wants it)."""
        decided, names, versions = self._registry.route_and_lease(planner)
        with self._lock:
            self.routed_at = time.perf_counter()
            if not self._closed:
                self._names.extend(names)
                self.versions.update(versions)
                return decided, True
        self._registry.release(names)
        return decided, False

    @property
    def closed(self) -> bool:
        return self._closed

    def release(self) -> None:
        with self._lock:
            self._closed, names, self._names = True, self._names, []
        self._registry.release(names)


class RetrievalService:
    def __init__(
        self,
        settings: Settings,
        encoder: QueryEncoder,
        registry: ExpertRegistry,
        indexes: IndexStore,
        encoder_batcher: MicroBatcher,
        search_batcher: MicroBatcher,
        cache: EmbeddingCache,
        shared_cache: SharedEmbeddingCache | None = None,
        progress: IndexingProgress | None = None,
        lexical_batcher: MicroBatcher | None = None,
        documents_batcher: MicroBatcher | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.registry = registry
        self.indexes = indexes
        self.encoder_batcher = encoder_batcher
        self.search_batcher = search_batcher
        self.lexical_batcher = lexical_batcher or search_batcher
        self.documents_batcher = documents_batcher
        self.cache = cache
        self.shared_cache = shared_cache
        self.progress = progress if progress is not None else IndexingProgress()
        self.shortcuts = encoder.shortcuts
        # Cache key of routing features: they depend on the layer they are read at.
        self._features_version = f"__route__@L{encoder.routing_layer}"

    # -- validation ----------------------------------------------------------------------

    def check_queries(self, queries: Sequence[str]) -> None:
        if not queries:
            raise InvalidInput("at least one query is required")
        if len(queries) > self.settings.max_batch_queries:
            raise InvalidInput(f"at most {self.settings.max_batch_queries} queries per request")
        for text in queries:
            if blank(text):
                raise InvalidInput("query must not be empty or whitespace")
            if len(text) > self.settings.max_query_chars:
                raise InvalidInput(f"query longer than {self.settings.max_query_chars} characters")
            if not_utf8(text) is not None:
                raise InvalidInput("query is not valid UTF-8 text (a lone surrogate?)")

    async def check_length(self, texts: Sequence[str], truncate: bool) -> None:
        """With `truncate` off, a text over the encoder's token limit is refused (as TEI
        does); on, it is cut there as it is encoded."""
        if truncate:
            return
        limit = self.settings.max_seq_length
        counts = await asyncio.to_thread(self.encoder.token_counts, texts, False)
        for i, count in enumerate(counts):
            if count > limit:
                where = f"input {i}" if len(texts) > 1 else "the input"
                raise InvalidInput(
                    f"{where} is {count} tokens, over this model's limit of {limit} "
                    "(RR_MAX_SEQ_LENGTH): shorten it, or leave truncate on (the default) to "
                    f"embed its first {limit} tokens"
                )

    def check_expert(self, name: str, allow_auto: bool = True) -> str:
        if name == BASE_EXPERT or (allow_auto and name == AUTO):
            return name
        check_name(name)
        if name not in self.registry:
            raise NotFound(f"expert {name!r} not found")
        return name

    def check_index(self, name: str | None) -> str | None:
        if name is not None and check_name(name) not in self.indexes:
            raise NotFound(f"index {name!r} not found")
        return name

    # -- encoding ------------------------------------------------------------------------

    def _version(self, expert: str, leased: dict[str, str | None] | None = None) -> str:
        """The cache key's encoder version; `leased`: versions as a lease took them (the
        registry may have dropped a name that is being deleted while its lease runs). An
        expert whose adapter is not used has the base encoder's vectors, and version."""
        if expert == BASE_EXPERT or not self._uses_adapter(expert):
            return BASE_EXPERT
        if leased is not None and expert in leased:
            return f"{expert}@{leased[expert]}"
        return f"{expert}@{self.registry.get(expert).spec.adapter_sha256}"

    def _uses_adapter(self, expert: str) -> bool:
        """False where the expert's gate says its adapter does not help (expert.json
        `use_adapter`): its queries are the base encoder's, whatever the shortcuts."""
        try:
            return self.registry.get(expert).spec.use_adapter
        except NotFound:  # deleted meanwhile: let the encoder report it
            return True

    def _is_base(self, expert: str) -> bool:
        """The plain base model, an expert whose adapter is not used (its gate), or one
        whose adapter leaves it unchanged (a shortcut: its rows reuse base vectors; when it
        is off they run the expert's adapter)."""
        if expert == BASE_EXPERT or not self._uses_adapter(expert):
            return True
        if not self.shortcuts.enabled(IDENTITY_EXPERT_SKIP):
            return False
        try:
            return bool(self.registry.get(expert).identity)
        except NotFound:  # deleted meanwhile: let the encoder report it
            return False
        except Exception as exc:
            self.shortcuts.failed(IDENTITY_EXPERT_SKIP, exc)
            return False

    def _cached(self, text: str, version: str) -> np.ndarray | None:
        try:
            vector = self.cache.get(text, version)
            if vector is not None and vector.shape != (self.encoder.dim,):
                raise ValueError(f"cached vector has shape {vector.shape}")
            return vector
        except Exception as exc:  # a miss: the encoder computes it
            self.shortcuts.failed(EMBEDDING_CACHE, exc, switch_off=False)
            return None

    def _remember(self, text: str, version: str, vector: np.ndarray) -> None:
        try:
            self.cache.put(text, version, vector)
        except Exception as exc:
            self.shortcuts.failed(EMBEDDING_CACHE, exc, switch_off=False)

    async def _shared_lookup(self, texts: list[str], versions: list[str]) -> list:
        if self.shared_cache is None:
            return [None] * len(texts)
        try:
            found = await self.shared_cache.get_many(list(zip(texts, versions, strict=True)))
            for vector in found:
                if vector is not None and vector.shape != (self.encoder.dim,):
                    raise ValueError(f"shared cache vector has shape {vector.shape}")
            return found
        except Exception as exc:  # misses: the encoder computes them
            self.shortcuts.failed(SHARED_EMBEDDING_CACHE, exc, switch_off=False)
            return [None] * len(texts)

    async def _encode(
        self,
        texts: Sequence[str],
        experts: Sequence[str],
        leased: dict[str, str | None] | None = None,
    ) -> np.ndarray:
        """Cached vectors where we have them; the rest in one batched forward pass."""
        versions = [self._version(e, leased) for e in experts]
        out, missing = await self._lookup(texts, versions)
        if missing:
            job = EncodeJob(
                [texts[i] for i in missing],
                [BASE if self._is_base(experts[i]) else experts[i] for i in missing],
            )
            encoded = await self.encoder_batcher.submit(job, size=len(missing))
            for row, i in zip(encoded, missing, strict=True):
                out[i] = row
                self._remember(texts[i], versions[i], row.copy())  # not a view of the batch
            await self._share([(texts[i], versions[i], out[i]) for i in missing])
        return out

    async def _share(self, rows: list[tuple[str, str, np.ndarray]]) -> None:
        if self.shared_cache is None or not rows:
            return
        try:
            await self.shared_cache.put_many(rows)
        except Exception as exc:
            self.shortcuts.failed(SHARED_EMBEDDING_CACHE, exc, switch_off=False)

    async def _cached_features(self, texts: Sequence[str]) -> np.ndarray | None:
        """Every text's routing features from the caches, or None if one is missing."""
        out, missing = await self._lookup(texts, [self._features_version] * len(texts))
        return None if missing else out

    async def _lookup(
        self, texts: Sequence[str], versions: Sequence[str]
    ) -> tuple[np.ndarray, list[int]]:
        """Rows found in the local cache, then the shared one (copied to local), and the
        positions found in neither."""
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        missing = []
        for i, (text, version) in enumerate(zip(texts, versions, strict=True)):
            cached = self._cached(text, version)
            if cached is None:
                missing.append(i)
            else:
                out[i] = cached
        if missing and self.shared_cache is not None:
            found = await self._shared_lookup(
                [texts[i] for i in missing], [versions[i] for i in missing]
            )
            for i, vector in zip(missing, found, strict=True):
                if vector is not None:
                    out[i] = vector
                    self._remember(texts[i], versions[i], vector)
            missing = [i for i, vector in zip(missing, found, strict=True) if vector is None]
        return out, missing

    async def _routed(
        self,
        texts: Sequence[str],
        planner: Planner,
        lease: _Lease,
        vectors_wanted: bool = True,
        on_plans: Callable[[list[Plan]], None] | None = None,
    ) -> tuple[list[RoutingDecision], list[Plan], dict[Key, np.ndarray]]:
        """Route `texts` and embed each with its plan's encoders. Where the caches hold
        their routing features, route here and embed through `_encode` (cached vectors);
        else one routed pass: the router runs inside it, on the model worker's thread.
        `on_plans` runs on the event loop as soon as the plans are known."""
        features = await self._cached_features(texts)
        if features is not None:
            (decisions, plans), _ = lease.route(lambda r: _planned(planner(r, features)))
            if on_plans is not None:
                on_plans(plans)
            if not vectors_wanted:
                return decisions, plans, {}
            return decisions, plans, await self._plan_vectors(texts, plans, lease.versions)
        loop = asyncio.get_running_loop()
        decided: dict[str, Any] = {}

        def choose(found: np.ndarray) -> list[list[str]]:
            # Once per job: a failed batch retries its jobs one by one, with the decision
            # (and the lease, and the lexical leg it started) it already has.
            if "plan" not in decided:
                decided["plan"], live = lease.route(lambda r: _planned(planner(r, found)))
                if not live:  # the request is gone: no expert to run, no leg to start
                    decided["gone"] = True
                elif on_plans is not None:
                    loop.call_soon_threadsafe(on_plans, decided["plan"][1])
            if not vectors_wanted or decided.get("gone"):
                return [[] for _ in range(len(found))]
            return [[BASE if self._is_base(e) else e for e in plan] for plan in decided["plan"][1]]

        done: RoutedPass = await self.encoder_batcher.submit(
            RoutedEncodeJob(list(texts), choose), size=len(texts)
        )
        decisions, plans = decided["plan"]
        vectors: dict[Key, np.ndarray] = {}
        shared: list[tuple[str, str, np.ndarray]] = []
        for qi, text in enumerate(texts):
            row = done.features[qi].copy()  # not a view of the batch
            self._remember(text, self._features_version, row)
            shared.append((text, self._features_version, row))
            for encoder, vector in zip(
                plans[qi] if vectors_wanted else [], done.vectors[qi], strict=False
            ):
                vectors[(qi, encoder)] = vector
                version = self._version(encoder, lease.versions)
                self._remember(text, version, vector.copy())
                shared.append((text, version, vector))
        await self._share(shared)
        return decisions, plans, vectors

    async def routing_features(self, texts: Sequence[str]) -> np.ndarray:
        """Routing features (the pooled states entering the routing layer), cached."""
        features = await self._cached_features(texts)
        if features is not None:
            return features
        done: RoutedPass = await self.encoder_batcher.submit(
            RoutedEncodeJob(list(texts), lambda f: [[] for _ in range(len(f))]), size=len(texts)
        )
        rows = [
            (t, self._features_version, r.copy()) for t, r in zip(texts, done.features, strict=True)
        ]
        for text, version, row in rows:
            self._remember(text, version, row)
        await self._share(rows)
        return done.features

    async def route(self, queries: Sequence[str]) -> list[RoutingDecision]:
        """The router's own decision (a search then passes over experts whose index holds
        no documents, and says so)."""
        self.check_queries(queries)
        return self.registry.router.route(await self.routing_features(queries))

    def _answering(self) -> set[str]:
        """The experts whose index holds documents (live counters, no lock)."""
        found = set()
        for name in self.registry.names():
            try:
                if len(self.indexes.get(name)):
                    found.add(name)
            except NotFound:  # dropped meanwhile
                continue
        return found

    async def embed(
        self, texts: Sequence[str], model: str, truncate: bool = True
    ) -> list[Embedding]:
        """Query-side embeddings: `auto` routes each text, else one expert (or base)."""
        self.check_queries(texts)
        self.check_expert(model)
        await self.check_length(texts, truncate)
        if model != AUTO:
            with self.registry.lease([model]):
                pinned = await self._encode(texts, [model] * len(texts))
            return [Embedding(v, model) for v in pinned]

        def planner(router: Router, features: np.ndarray) -> tuple[list, list[Plan]]:
            decisions = router.route(features)
            return decisions, [[d.expert] for d in decisions]

        lease = _Lease(self.registry)
        try:
            _, plans, vectors = await self._routed(texts, planner, lease)
        finally:
            lease.release()
        return [Embedding(vectors[(qi, p[0])], p[0]) for qi, p in enumerate(plans)]

    async def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs as encoded, after truncation (usage reporting), counted
        off the event loop."""
        return await asyncio.to_thread(self.encoder.token_counts, texts)

    # -- search --------------------------------------------------------------------------

    async def search(self, queries: Sequence[str], options: SearchOptions) -> list[SearchResult]:
        started = time.perf_counter()
        self.check_queries(queries)
        if not 1 <= options.k <= self.settings.max_k:
            raise InvalidInput(f"k must be between 1 and {self.settings.max_k}")
        self.check_expert(options.expert)
        self.check_index(options.index)
        if options.mode != "lexical":  # BM25 reads the whole text: nothing is cut
            await self.check_length(queries, options.truncate)

        lexical_only = options.mode == "lexical"  # routed for its targets only
        lease = _Lease(self.registry)
        # The lexical leg needs only the plans: it starts as soon as routing has decided
        # (inside the routed pass) and runs during the expert layers. Never after the
        # request ended: a leg scheduled from the worker then is not started.
        lexical: list[asyncio.Task[dict[int, list[Candidates]]]] = []

        def start_lexical(plans: list[Plan]) -> None:
            if not lexical and not lease.closed:
                lexical.append(
                    asyncio.get_running_loop().create_task(
                        self._lexical_lists(queries, plans, options)
                    )
                )

        try:
            t_encode = time.perf_counter()
            if options.expert == AUTO:
                # Route only to experts whose index can answer (a pinned index is searched
                # whatever the expert).
                available = self._answering() if options.index is None else None

                def planner(router: Router, features: np.ndarray) -> tuple[list, list[Plan]]:
                    decisions = router.route(features, available)
                    return decisions, [encoders_for(d, options) for d in decisions]

                decisions, plans, vectors = await self._routed(
                    queries, planner, lease, not lexical_only, start_lexical
                )
                routed_at = lease.routed_at or time.perf_counter()
                route_ms = round((routed_at - started) * 1000, 3)
            else:
                decision = RoutingDecision(options.expert, {}, False)
                decisions = [decision] * len(queries)
                plans = [encoders_for(decision, options) for _ in queries]
                lease.route(lambda _router: (None, {e for p in plans for e in p}))
                route_ms = _ms(started)
                start_lexical(plans)
                vectors = (
                    {} if lexical_only else await self._plan_vectors(queries, plans, lease.versions)
                )
            encode_ms = _ms(t_encode)
            start_lexical(plans)
            t_search = time.perf_counter()
            ranked = await self._search_plans(queries, plans, vectors, options, lexical[0])
            search_ms = _ms(t_search)
        finally:
            lease.release()
            for task in lexical:  # done already unless this request failed or was cancelled
                task.cancel()
        timing = {
            "route": route_ms,
            "encode": encode_ms,
            "search": search_ms,
            "total": _ms(started),
        }
        filling = self._filling(plans, options)
        return [
            SearchResult(hits, decision, timing, filling[qi])
            for qi, (hits, decision) in enumerate(zip(ranked, decisions, strict=True))
        ]

    def _filling(self, plans: list[Plan], options: SearchOptions) -> list[dict[str, Progress]]:
        """Per query: the indexes it searched that first-start indexing is still filling."""
        filling: list[dict[str, Progress]] = [{} for _ in plans]
        if not self.progress.snapshot():
            return filling
        names = self.indexes.names()
        searched: dict[str, set[int]] = {}
        for name, keys in search_jobs(plans, options, names).items():
            searched.setdefault(name, set()).update(qi for qi, _ in keys)
        for name, lexical in lexical_jobs(plans, options, names).items():
            searched.setdefault(name, set()).update(lexical)
        for name, queries in searched.items():
            if (state := self.progress.filling(name)) is not None:
                for qi in queries:
                    filling[qi][name] = state
        return filling

    async def _plan_vectors(
        self,
        queries: Sequence[str],
        plans: list[Plan],
        leased: dict[str, str | None] | None = None,
    ) -> dict[Key, np.ndarray]:
        """One mixed-adapter pass for every (query, expert) pair the plans need."""
        pairs = [(qi, e) for qi, plan in enumerate(plans) for e in plan]
        if not pairs:
            return {}
        encoded = await self._encode(
            [queries[qi] for qi, _ in pairs], [e for _, e in pairs], leased
        )
        return dict(zip(pairs, encoded, strict=True))

    async def _lexical_lists(
        self, queries: Sequence[str], plans: list[Plan], options: SearchOptions
    ) -> dict[int, list[Candidates]]:
        """Each query's BM25 candidates from each index its lexical leg searches (one BM25
        call per index)."""
        jobs = lexical_jobs(plans, options, self.indexes.names())
        found = await asyncio.gather(
            *(self._search_lexical(n, qis, queries, options) for n, qis in jobs.items())
        )
        lists: dict[int, list[Candidates]] = {}
        for result in found:
            for qi, candidates in result.items():
                # Kept as arrays (extend would build a Hit for every candidate): ranking
                # reads them as they are and builds only the top k.
                lists.setdefault(qi, []).append(candidates)
        return lists

    async def _search_plans(
        self,
        queries: Sequence[str],
        plans: list[Plan],
        vectors: dict[Key, np.ndarray],
        options: SearchOptions,
        lexical: asyncio.Task[dict[int, list[Candidates]]],
    ) -> list[list[RankedHit]]:
        # The core groups every (query, expert) vector by the index it searches (one batched
        # FAISS call per index); with the lexical lists, the core then ranks each query.
        # Hybrid legs go without text: only the fused top k fetch theirs.
        with_text = options.include_text and options.mode == "dense"
        dense_jobs = search_jobs(plans, options, self.indexes.names())
        try:
            found = await asyncio.gather(
                *(
                    self._search_index(n, keys, vectors, options, with_text)
                    for n, keys in dense_jobs.items()
                )
            )
        except BaseException:
            lexical.cancel()
            raise
        lexical_lists = await lexical
        dense_lists: dict[Key, list[Candidates]] = {}
        for result in found:
            for key, candidates in result.items():
                dense_lists.setdefault(key, []).append(candidates)  # as arrays (see above)
        ranked = [
            rank_query(
                queries[qi],
                plan,
                {e: dense_lists.get((qi, e), []) for e in plan},
                lexical_lists.get(qi, []),
                options,
                self.registry.fusion_weights,
            )
            for qi, plan in enumerate(plans)
        ]
        if options.include_text and not with_text:
            ranked = await self._with_text(ranked)
        return ranked

    async def _with_text(self, ranked: list[list[RankedHit]]) -> list[list[RankedHit]]:
        """The fused hits with their documents' text (one read per index)."""
        wanted: Wanted = {}
        for hits in ranked:
            for item in hits:
                wanted.setdefault(item.hit.index, set()).add(item.hit.id)
        if self.documents_batcher is not None:
            stored = await self.documents_batcher.submit(wanted)
        else:
            stored = (await asyncio.to_thread(fetch_batch(self.indexes), [wanted]))[0]
        return [
            [
                replace(item, hit=replace(stored[key], score=item.hit.score))
                if (key := (item.hit.index, item.hit.id)) in stored
                else item
                for item in hits
            ]
            for hits in ranked
        ]

    async def _search_index(
        self,
        name: str,
        keys: list[Key],
        vectors: dict[Key, np.ndarray],
        options: SearchOptions,
        with_text: bool,
    ) -> dict[Key, Candidates]:
        try:
            self.indexes.get(name)
            job = SearchJob(
                name,
                np.stack([vectors[key] for key in keys]),
                options.dense_depth,
                with_text,
                where=options.where,
            )
            hits = await self.search_batcher.submit(job, size=len(keys))
        except NotFound:
            if name == options.index:
                raise
            return {}  # an index dropped mid-request simply contributes nothing
        return dict(zip(keys, hits, strict=True))

    async def _search_lexical(
        self, name: str, positions: list[int], queries: Sequence[str], options: SearchOptions
    ) -> dict[int, Candidates]:
        try:
            self.indexes.get(name)
            job = SearchJob(
                name,
                None,
                options.lexical_depth,
                False,
                texts=[queries[qi] for qi in positions],
                where=options.where,
            )
            hits = await self.lexical_batcher.submit(job, size=len(positions))
        except NotFound:
            if name == options.index:
                raise
            return {}
        return dict(zip(positions, hits, strict=True))


def _planned(plan: tuple[list[RoutingDecision], list[Plan]]) -> tuple[Any, set[str]]:
    """A plan and the experts it needs leased (for `_Lease.route`)."""
    return plan, {e for p in plan[1] for e in p}
