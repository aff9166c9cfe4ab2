"""One snapshot of the running service's counters, for `/metrics` (read at scrape time)."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.encoder.base import PoolStats, QueryEncoder
from app.errors import NotFound
from app.index import IndexStore
from app.replication.follower import Follower
from app.replication.shared_cache import SharedEmbeddingCache
from app.service.batcher import BatcherStats, MicroBatcher
from app.service.embedding_cache import EmbeddingCache


@dataclass(frozen=True)
class BatcherSnapshot:
    name: str
    pending: int
    stats: BatcherStats


@dataclass(frozen=True)
class CacheSnapshot:
    hits: int
    misses: int


@dataclass(frozen=True)
class FollowerSnapshot:
    lag_s: float
    applied: int
    connected: bool
    caught_up: bool


@dataclass(frozen=True)
class ServiceSnapshot:
    pool: PoolStats
    resident: int
    degraded: dict[str, str]
    fallbacks: dict[str, int]
    batchers: list[BatcherSnapshot]
    local_cache: CacheSnapshot
    shared_cache: CacheSnapshot | None
    shared_cache_bypassed: int
    index_documents: dict[str, int] = field(default_factory=dict)
    resident_bytes: dict[str, int] = field(default_factory=dict)  # expert -> bytes held
    follower: FollowerSnapshot | None = None


class StatsService:
    def __init__(
        self,
        encoder: QueryEncoder,
        indexes: IndexStore,
        batchers: list[MicroBatcher],
        cache: EmbeddingCache,
        shared_cache: SharedEmbeddingCache | None = None,
        follower: Follower | None = None,
    ) -> None:
        self.encoder = encoder
        self.indexes = indexes
        self.batchers = batchers
        self.cache = cache
        self.shared_cache = shared_cache
        self.follower = follower

    def snapshot(self) -> ServiceSnapshot:
        shared, follower = self.shared_cache, self.follower
        sizes = {}
        for name in self.indexes.names():
            try:
                sizes[name] = len(self.indexes.get(name))
            except NotFound:  # dropped while scraping
                continue
        return ServiceSnapshot(
            pool=self.encoder.stats,
            resident=len(self.encoder.resident()),
            degraded=self.encoder.shortcuts.degraded,
            fallbacks=self.encoder.shortcuts.fallbacks,
            batchers=[BatcherSnapshot(b.name, b.pending, b.stats) for b in self.batchers],
            local_cache=CacheSnapshot(self.cache.hits, self.cache.misses),
            shared_cache=None if shared is None else CacheSnapshot(shared.hits, shared.misses),
            shared_cache_bypassed=0 if shared is None else shared.bypassed,
            index_documents=sizes,
            resident_bytes={n: self.encoder.resident_bytes(n) for n in self.encoder.resident()},
            follower=None
            if follower is None
            else FollowerSnapshot(
                follower.lag_s, follower.applied, follower.connected, follower.caught_up
            ),
        )
