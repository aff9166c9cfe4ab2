"""Where admin changes go: applied at once (embedded) or through the Redis change log."""

from __future__ import annotations

from typing import Any, Protocol

from app.replication.changes import Applier, Change
from app.replication.follower import Follower
from app.replication.redis_log import RedisChangeLog


class ChangeSink(Protocol):
    async def submit(self, change: Change) -> Any: ...


class LocalSink:
    """One machine, no Redis: apply directly."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier

    async def submit(self, change: Change) -> Any:
        return await self.applier.apply(change)


class ReplicatedSink:
    """Record the change durably in Redis first; answer once this gateway applied it."""

    def __init__(self, changelog: RedisChangeLog, follower: Follower) -> None:
        self.changelog = changelog
        self.follower = follower

    async def submit(self, change: Change) -> Any:
        entry_id = await self.changelog.append(change)
        return await self.follower.wait_applied(entry_id)
