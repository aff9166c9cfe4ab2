"""The change log in Redis: a stream every gateway follows, plus the expert registry hash.

An append is one Lua script, so the precondition (expert exists / does not), the registry
update and the stream entry happen atomically: two gateways adding the same name at once
get one 201 and one 409. With AOF and `appendfsync always` (docker-compose), a write is on
disk before Redis answers, and only then does the admin request get its answer.
"""

from __future__ import annotations

from typing import Any

from app.errors import Conflict, NotFound, Unavailable
from app.replication.changes import Change, from_fields, payload_fields

STREAM = "rr:changes"
REGISTRY = "rr:experts"  # expert name -> stream id of the entry that added it (its version)

_APPEND = """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2])
if ARGV[1] == 'expert_added' then
  if exists == 1 then return redis.error_reply('conflict') end
elseif exists == 0 then
  return redis.error_reply('not_found')
end
local fields = {'kind', ARGV[1], 'name', ARGV[2]}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
if ARGV[1] == 'expert_added' then
  redis.call('HSET', KEYS[1], ARGV[2], id)
elseif ARGV[1] == 'expert_removed' then
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return id
"""


def redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisChangeLog:
    def __init__(self, client: Any, stream: str = STREAM, registry: str = REGISTRY) -> None:
        self.client = client
        self.stream = stream
        self.registry = registry
        self._append = client.register_script(_APPEND)

    async def append(self, change: Change) -> str:
        """Durably record a change; raises Conflict/NotFound/Unavailable."""
        import redis

        args: list[Any] = [change.kind, change.name]
        for key, value in payload_fields(change).items():
            args += [key, value]
        try:
            entry = await self._append(keys=[self.registry, self.stream], args=args)
        except redis.ResponseError as exc:
            if "conflict" in str(exc):
                raise Conflict(f"expert {change.name!r} already exists") from None
            if "not_found" in str(exc):
                raise NotFound(f"expert {change.name!r} not found") from None
            raise
        except redis_errors() as exc:
            raise Unavailable(
                "shared state (Redis) is unavailable: admin writes are paused"
            ) from exc
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def read(
        self, after: str, block_ms: int | None, count: int = 64
    ) -> list[tuple[str, Change]]:
        reply = await self.client.xread({self.stream: after}, count=count, block=block_ms)
        entries = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                key = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                entries.append((key, from_fields(fields)))
        return entries

    async def experts(self) -> set[str]:
        names = await self.client.hkeys(self.registry)
        return {n.decode() if isinstance(n, bytes) else n for n in names}
