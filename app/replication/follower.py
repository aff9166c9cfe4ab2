"""Follows the Redis change log and applies each entry to local state, in order.

The id of the last applied entry is saved under the indexes directory after each apply, so
a gateway that was down (or killed) resumes where it stopped; applying is idempotent, so
an entry applied just before a crash and replayed after it does no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from app.errors import ServiceError, StorageFull, Unavailable
from app.replication.changes import Applier
from app.replication.redis_log import RedisChangeLog, redis_errors

log = logging.getLogger(__name__)
STATE_FILE = "replication.json"
_RECENT = 1024  # results kept for writers that start waiting after the apply
STALLED_RETRY_S = 5.0  # how often a change this gateway has no disk space for is retried


class _Stalled(Exception):
    """An entry that cannot be applied here yet (no disk space): retry it, never skip it."""


class Follower:
    def __init__(
        self, changelog: RedisChangeLog, applier: Applier, state_dir: Path, block_ms: int
    ) -> None:
        self.changelog = changelog
        self.block_ms = block_ms
        self.applier = applier
        self.state_path = state_dir / STATE_FILE
        self.last_id = self._load_state()
        self.caught_up = False
        self.connected = False
        self.applied = 0
        self.lag_s = 0.0  # age of the newest applied entry when it was applied
        self._recent: OrderedDict[str, tuple[Any, BaseException | None]] = OrderedDict()
        self._waiters: dict[str, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    def _load_state(self) -> str:
        try:
            return json.loads(self.state_path.read_text())["last_id"]
        except (FileNotFoundError, ValueError, KeyError):
            return "0-0"

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.state_path.with_suffix(".tmp")
        with open(temp, "w") as handle:
            json.dump({"last_id": self.last_id}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.state_path)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replication-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                entries = await self.changelog.read(
                    self.last_id, block_ms=self.block_ms if self.caught_up else None
                )
                if not self.connected:
                    log.info("change log reachable; following from %s", self.last_id)
                self.connected, backoff = True, 0.1
                if not entries and not self.caught_up:
                    self.caught_up = True
                    log.info("caught up with the change log at %s", self.last_id)
                for entry_id, change in entries:
                    await self._apply(entry_id, change)
            except asyncio.CancelledError:
                raise
            except _Stalled:
                self.caught_up = False  # /readyz: not ready while changes wait here
                await asyncio.sleep(STALLED_RETRY_S)
            except redis_errors() as exc:
                if self.connected:
                    log.warning("change log unreachable (%s); serving local state", exc)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # never let one bad entry stop replication
                log.exception("change log follower failed; retrying")
                await asyncio.sleep(1.0)

    async def _apply(self, entry_id: str, change: Any) -> None:
        try:
            result, error = await self.applier.apply(change), None
        except StorageFull as exc:
            # Recorded in the log (other gateways apply it): this one must too, once space is
            # freed. The entry stays next; its writer hears that it is recorded, not refused.
            log.error(
                "change %s (%s %s) waits for disk space: %s",
                entry_id,
                change.kind,
                change.name,
                exc,
            )
            waiter = self._waiters.pop(entry_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(
                    (
                        None,
                        Unavailable(
                            "change recorded in the change log; this gateway's index volume "
                            "is full: it applies the change once space is freed (other "
                            "gateways already may)"
                        ),
                    )
                )
            raise _Stalled from exc
        except ServiceError as exc:  # e.g. an adapter that does not apply here
            log.error("change %s (%s %s) failed: %s", entry_id, change.kind, change.name, exc)
            result, error = None, exc
        self.last_id = entry_id
        self._save_state()
        self.applied += 1
        self.lag_s = max(0.0, time.time() - int(entry_id.split("-")[0]) / 1000)
        self._recent[entry_id] = (result, error)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        waiter = self._waiters.pop(entry_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((result, error))

    async def wait_applied(self, entry_id: str, timeout_s: float = 60.0) -> Any:
        """The result of applying `entry_id` here (raises what the apply raised)."""
        if entry_id in self._recent:
            result, error = self._recent[entry_id]
        else:
            future = asyncio.get_running_loop().create_future()
            self._waiters[entry_id] = future
            try:
                result, error = await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                self._waiters.pop(entry_id, None)
                raise Unavailable("change recorded but not yet applied here; retry") from None
        if error is not None:
            raise error
        return result
