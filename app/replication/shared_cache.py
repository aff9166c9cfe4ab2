"""Query-embedding cache shared by all gateways through Redis, with a TTL.

Keys carry the encoder version (`base` or `<expert>@<adapter sha256>`), so changing an
expert's weights invalidates its entries by construction. Redis trouble never fails a
search: the cache is bypassed for a short while and the bypass is counted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from app.replication.redis_log import redis_errors

log = logging.getLogger(__name__)
_PAUSE_S = 2.0


class SharedEmbeddingCache:
    def __init__(self, client: Any, dim: int, ttl_s: int, prefix: str = "rr:emb") -> None:
        self.client = client
        self.dim = dim
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.hits = 0
        self.misses = 0
        self.bypassed = 0
        self._paused_until = 0.0

    def _key(self, text: str, version: str) -> str:
        return f"{self.prefix}:{version}:{hashlib.sha1(text.encode()).hexdigest()}"

    def _available(self) -> bool:
        return time.monotonic() >= self._paused_until

    def _pause(self, exc: BaseException) -> None:
        if self._available():
            log.warning("shared cache bypassed for %.0fs: %s", _PAUSE_S, exc)
        self._paused_until = time.monotonic() + _PAUSE_S

    async def get_many(self, items: list[tuple[str, str]]) -> list[np.ndarray | None]:
        if not items or not self._available():
            self.bypassed += len(items)
            return [None] * len(items)
        try:
            values = await self.client.mget([self._key(t, v) for t, v in items])
        except redis_errors() as exc:
            self._pause(exc)
            self.bypassed += len(items)
            return [None] * len(items)
        out = [None if raw is None else np.frombuffer(raw, dtype=np.float32) for raw in values]
        found = sum(v is not None for v in out)
        self.hits += found
        self.misses += len(out) - found
        return out

    async def put_many(self, items: list[tuple[str, str, np.ndarray]]) -> None:
        if not items or not self._available():
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for text, version, vector in items:
                    pipe.set(
                        self._key(text, version), vector.astype(np.float32).tobytes(), ex=self.ttl_s
                    )
                await pipe.execute()
        except redis_errors() as exc:
            self._pause(exc)
