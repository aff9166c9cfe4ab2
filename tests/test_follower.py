"""The change-log follower on a full disk: a change recorded in Redis is retried here, never
skipped (other gateways apply it), and its writer hears that it is recorded, not refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.errors import StorageFull, Unavailable
from app.index import Document
from app.replication import follower as follower_module
from app.replication.changes import DocumentsUpserted
from app.replication.follower import Follower


class OneEntryLog:
    """The change log's read contract, holding one entry."""

    def __init__(self, change: DocumentsUpserted) -> None:
        self.entries = [("1-0", change)]

    async def read(self, after: str, block_ms: int | None, count: int = 64):
        if block_ms:
            await asyncio.sleep(0.01)
        return [(i, c) for i, c in self.entries if i > after]


class DiskFullThenFreed:
    def __init__(self, failures: int) -> None:
        self.failures, self.applied = failures, 0

    async def apply(self, change) -> tuple[int, int]:
        if self.failures:
            self.failures -= 1
            raise StorageFull("no space left")
        self.applied += 1
        return (1, 0)


def test_a_change_this_gateway_has_no_space_for_is_retried_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follower_module, "STALLED_RETRY_S", 0.01)
    change = DocumentsUpserted("sci", [Document("d1", "text")], np.zeros((1, 384), np.float32))
    applier = DiskFullThenFreed(failures=3)

    async def scenario() -> None:
        follower = Follower(OneEntryLog(change), applier, tmp_path, block_ms=10)
        waiting = asyncio.ensure_future(follower.wait_applied("1-0", timeout_s=5))
        follower.start()
        with pytest.raises(Unavailable, match="recorded"):
            await waiting  # the writer: recorded, not "nothing was written"
        for _ in range(500):
            if applier.applied:
                break
            await asyncio.sleep(0.01)
        await follower.stop()
        assert applier.applied == 1 and follower.last_id == "1-0"

    asyncio.run(scenario())
