"""Micro-batching: concurrent requests' work coalesced into batches on one thread.

HTTP handlers `await submit(payload)`; a worker thread takes everything queued (up to
`max_batch` rows, waiting at most `max_wait_ms` for more, or `busy_wait_ms` while another
worker is busy: the batch then fills at no latency cost, since the queue would wait for
that worker anyway), runs one batched call, and resolves each caller's future. The event
loop never runs model or index code. Several workers (one `process` each, e.g. one per
encoder replica) take batches from one queue.

- Bounded: past `max_pending` queued rows, `submit` raises Overloaded (HTTP 429).
- A caller that went away (cancelled future) is skipped, never resolved, and does not
  affect the rest of its batch; a batch that fails is retried job by job, so one bad job
  fails alone.
- `call(fn)` runs `fn` on a worker thread, in queue order with the batches (`fn` itself
  must be safe next to the other workers' batches: encoder replicas lock their own pools).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import Overloaded

Process = Callable[[Sequence[Any]], Sequence[Any]]  # payloads of one batch -> their results


@dataclass
class _Job:
    payload: Any
    size: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    exclusive: Callable[[], Any] | None = None


@dataclass
class BatcherStats:
    batches: int = 0
    jobs: int = 0
    rows: int = 0
    rejected: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0


def _single(process: Process, payload: Any) -> Callable[[], Any]:
    """`process` on one payload alone (to isolate a failing job of a batch)."""
    return lambda: process([payload])[0]


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by a client that went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class MicroBatcher:
    def __init__(
        self,
        name: str,
        process: Process | Sequence[Process],
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        max_pending: int = 4096,
        on_start: Callable[[], object] | None = None,
        busy_wait_ms: float | None = None,
    ) -> None:
        self.name = name
        processes = list(process) if isinstance(process, Sequence) else [process]
        if not processes:
            raise ValueError("at least one worker")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.busy_wait_s = self.max_wait_s if busy_wait_ms is None else busy_wait_ms / 1000
        self._busy = 0  # workers running a batch now
        self.max_pending = max_pending
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._pending_rows = 0
        self._closed = False
        self._on_start = on_start
        self.stats = BatcherStats()
        self._threads = [
            threading.Thread(target=self._run, args=(fn,), name=f"batcher-{name}-{i}", daemon=True)
            for i, fn in enumerate(processes)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Rows queued and not yet taken into a batch."""
        return self._pending_rows

    async def submit(self, payload: Any, size: int = 1) -> Any:
        return await self._enqueue(payload, size, None)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._enqueue(None, 0, lambda: fn(*args))

    async def _enqueue(self, payload: Any, size: int, exclusive: Callable[[], Any] | None) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(payload, size, loop.create_future(), loop, exclusive)
        with self._cond:
            if self._closed:
                raise Overloaded(f"{self.name} is shutting down")
            if (
                exclusive is None
                and self._pending_rows + size > self.max_pending
                and self._pending_rows
            ):
                self.stats.rejected += 1
                raise Overloaded(f"{self.name} queue is full ({self._pending_rows} rows waiting)")
            self._pending_rows += size
            self._queue.append(job)
            self._cond.notify()
        return await job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # -- worker thread -------------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            self._pending_rows -= first.size
            if first.exclusive is not None:
                return [first]
            batch, rows = [first], first.size
            wait = self.busy_wait_s if self._busy else self.max_wait_s
            deadline = time.monotonic() + wait
            while rows < self.max_batch:
                while not self._queue and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._queue:
                    break
                nxt = self._queue[0]
                if nxt.exclusive is not None or rows + nxt.size > self.max_batch:
                    break
                self._queue.popleft()
                self._pending_rows -= nxt.size
                batch.append(nxt)
                rows += nxt.size
            return batch

    def _run(self, process: Process) -> None:
        if self._on_start is not None:
            self._on_start()  # per-thread set-up, e.g. torch's thread count
        while (batch := self._take()) is not None:
            live = [job for job in batch if not job.future.cancelled()]
            if not live:
                continue
            with self._cond:
                self._busy += 1
            started = time.perf_counter()
            try:
                if live[0].exclusive is not None:
                    outcomes = [self._outcome(live[0].exclusive)]
                else:
                    outcomes = self._run_batch(process, live)
            finally:
                with self._cond:
                    self._busy -= 1
            elapsed = time.perf_counter() - started
            rows = sum(job.size for job in live)
            with self._cond:  # counted before callers see results (metrics stay consistent)
                self.stats.batches += 1
                self.stats.jobs += len(live)
                self.stats.rows += rows
                self.stats.busy_s += elapsed
                self.stats.largest_batch = max(self.stats.largest_batch, rows)
            for job, (result, error) in zip(live, outcomes, strict=True):
                job.loop.call_soon_threadsafe(_resolve, job.future, result, error)

    def _run_batch(
        self, process: Process, jobs: list[_Job]
    ) -> list[tuple[Any, BaseException | None]]:
        try:
            results = process([job.payload for job in jobs])
        except BaseException as exc:
            if len(jobs) == 1:
                return [(None, exc)]
            # Isolate the failing job(s): each one alone.
            return [self._outcome(_single(process, job.payload)) for job in jobs]
        return [(result, None) for result in results]

    @staticmethod
    def _outcome(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        try:
            return fn(), None
        except BaseException as exc:  # handed to the caller, who maps it to a status
            return None, exc
