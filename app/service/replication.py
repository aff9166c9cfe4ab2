"""Wire replication at start-up: embedded (no Redis) or following the Redis change log."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app.errors import Conflict, ServiceError
from app.experts.artifacts import ADAPTER_CONFIG, ADAPTER_MODEL
from app.experts.registry import ExpertRegistry
from app.replication.changes import Applier, ExpertAdded
from app.replication.follower import Follower
from app.replication.redis_log import RedisChangeLog, redis_errors
from app.replication.shared_cache import SharedEmbeddingCache
from app.replication.sinks import ChangeSink, LocalSink, ReplicatedSink
from app.settings import Settings

log = logging.getLogger(__name__)
FOLLOW_BLOCK_MS = 1000


@dataclass
class Replication:
    sink: ChangeSink
    follower: Follower | None = None
    shared_cache: SharedEmbeddingCache | None = None
    clients: list = field(default_factory=list)
    _seeding: asyncio.Task | None = None

    @property
    def replicated(self) -> bool:
        return self.follower is not None

    @property
    def ready(self) -> bool:
        return self.follower is None or self.follower.caught_up

    async def stop(self) -> None:
        if self._seeding is not None:
            self._seeding.cancel()
        if self.follower is not None:
            await self.follower.stop()
        for client in self.clients:
            await client.aclose()


async def start_replication(
    settings: Settings, registry: ExpertRegistry, applier: Applier, dim: int
) -> Replication:
    """Embedded (changes applied at once) without RR_REDIS_URL, else follow the change log."""
    redis_url = settings.redis_url
    if not redis_url:
        return Replication(sink=LocalSink(applier))
    import redis.asyncio as redis

    def connect(read_timeout_s: float) -> redis.Redis:
        return redis.from_url(
            redis_url,
            socket_timeout=read_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=10,
        )

    client = connect(settings.redis_timeout_s)
    changelog = RedisChangeLog(client)
    # The follower blocks on XREAD for up to a second: it needs its own, more patient socket.
    follower_log = RedisChangeLog(connect(FOLLOW_BLOCK_MS / 1000 + settings.redis_timeout_s))
    follower = Follower(follower_log, applier, settings.indexes_dir, FOLLOW_BLOCK_MS)
    follower.start()
    shared = SharedEmbeddingCache(client, dim, settings.redis_cache_ttl_s)
    replication = Replication(
        ReplicatedSink(changelog, follower),
        follower,
        shared,
        [client, follower_log.client],
    )
    replication._seeding = asyncio.create_task(_seed_local_experts(registry, changelog, follower))
    return replication


async def _seed_local_experts(
    registry: ExpertRegistry, changelog: RedisChangeLog, follower: Follower
) -> None:
    """Publish experts that exist only on this gateway's disk (e.g. shipped in the image)."""
    while True:
        try:
            if follower.caught_up:
                known = await changelog.experts()
                for name in registry.names():
                    if name in known:
                        continue
                    expert = registry.get(name)
                    change = ExpertAdded(
                        name,
                        (expert.path / ADAPTER_CONFIG).read_bytes(),
                        (expert.path / ADAPTER_MODEL).read_bytes(),
                        expert.pilots,
                        expert.spec.description,
                        expert.spec.fallback_threshold,
                        expert.spec.extra,
                    )
                    try:
                        await changelog.append(change)
                        log.info("published local expert %r to the change log", name)
                    except Conflict:
                        pass
                return
        except (ServiceError, *redis_errors()) as exc:  # type: ignore[misc]  # run-time tuple
            log.warning("seeding local experts postponed: %s", exc)
        await asyncio.sleep(0.5)
