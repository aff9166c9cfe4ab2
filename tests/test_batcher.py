"""MicroBatcher behaviour with plain functions: coalescing, back-pressure, isolation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.errors import Overloaded
from app.service.batcher import MicroBatcher


def _doubler(calls: list[list[int]]):
    def run(payloads):
        calls.append(list(payloads))
        return [p * 2 for p in payloads]

    return run


def test_concurrent_submissions_share_batches() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher("t", _doubler(calls), max_batch=8)

    async def main() -> list[int]:
        blocker = asyncio.ensure_future(batcher.call(gate.wait, 5))
        await asyncio.sleep(0.05)  # the worker is now busy: the next submissions queue up
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return await asyncio.gather(*waiting)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2, 3, 4]]  # one batch for all five
    batcher.close()


def test_max_batch_splits_rows() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher("t", _doubler(calls), max_batch=2)

    async def main() -> None:
        blocker = asyncio.ensure_future(batcher.call(gate.wait, 5))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        await asyncio.gather(*waiting)

    asyncio.run(main())
    assert calls == [[0, 1], [2, 3], [4]]
    batcher.close()


def test_full_queue_is_overloaded_not_a_backlog() -> None:
    gate = threading.Event()
    batcher = MicroBatcher("t", _doubler([]), max_batch=4, max_pending=3)

    async def main() -> None:
        blocker = asyncio.ensure_future(batcher.call(gate.wait, 5))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.submit(99)
        assert batcher.stats.rejected == 1
        gate.set()
        await blocker
        assert await asyncio.gather(*queued) == [0, 2, 4]

    asyncio.run(main())
    batcher.close()


def test_cancelled_caller_does_not_poison_the_batch() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher("t", _doubler(calls), max_batch=8)

    async def main() -> list[int]:
        blocker = asyncio.ensure_future(batcher.call(gate.wait, 5))
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        jobs[1].cancel()  # the client went away while queued
        gate.set()
        await blocker
        return [await job for i, job in enumerate(jobs) if i != 1]

    assert asyncio.run(main()) == [0, 4, 6]
    assert calls == [[0, 2, 3]]  # the cancelled job was never computed
    batcher.close()


def test_a_failing_job_fails_alone() -> None:
    def run(payloads):
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p.upper() for p in payloads]

    gate = threading.Event()
    batcher = MicroBatcher("t", run, max_batch=8)

    async def main():
        blocker = asyncio.ensure_future(batcher.call(gate.wait, 5))
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(batcher.submit(p)) for p in ("a", "bad", "c")]
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        return await asyncio.gather(*jobs, return_exceptions=True)

    a, bad, c = asyncio.run(main())
    assert (a, c) == ("A", "C") and isinstance(bad, ValueError)
    batcher.close()


def test_encode_batch_runs_documents_and_queries_in_separate_passes() -> None:
    import numpy as np

    from app.service.batched_work import EncodeJob, encode_batch

    calls = []

    class Recorder:
        def encode(self, texts, adapters, replica, documents=False):
            calls.append((list(texts), documents))
            return np.full((len(texts), 2), 1.0 if documents else 0.0, dtype=np.float32)

    jobs = [
        EncodeJob(["q1"], ["base"]),
        EncodeJob(["d1", "d2"], ["base", "base"], documents=True),
        EncodeJob(["q2"], ["base"]),
    ]
    out = encode_batch(Recorder())(jobs)
    assert calls == [(["q1", "q2"], False), (["d1", "d2"], True)]
    assert [rows[:, 0].tolist() for rows in out] == [[0.0], [1.0, 1.0], [0.0]]


def test_routed_jobs_share_one_pass_and_each_routes_its_own_rows() -> None:
    """Two requests' routed jobs in one batch: one routed pass; each job's chooser sees only
    its own rows' features and gets back only its own rows."""
    import numpy as np

    from app.encoder.base import RoutedPass
    from app.service.batched_work import RoutedEncodeJob, encode_batch

    passes = []

    class Routed:
        def encode_routed(self, texts, choose, replica):
            features = np.arange(len(texts), dtype=np.float32)[:, None]
            picks = [list(row) for row in choose(features)]
            passes.append((list(texts), picks))
            vectors = [np.full((len(row), 1), i, np.float32) for i, row in enumerate(picks)]
            return RoutedPass(features, picks, vectors)

    seen = []

    def chooser(name):
        return lambda f: seen.append((name, f[:, 0].tolist())) or [[name]] * len(f)

    jobs = [RoutedEncodeJob(["a", "b"], chooser("x")), RoutedEncodeJob(["c"], chooser("y"))]
    first, second = encode_batch(Routed())(jobs)
    assert passes == [(["a", "b", "c"], [["x"], ["x"], ["y"]])]
    assert seen == [("x", [0.0, 1.0]), ("y", [2.0])]
    assert first.adapters == [["x"], ["x"]] and second.adapters == [["y"]]
    assert second.features[:, 0].tolist() == [2.0] and second.vectors[0][0, 0] == 2.0


def test_a_worker_waits_for_a_fuller_batch_only_while_another_is_busy() -> None:
    """Two workers: with one busy, the other collects submissions that arrive within
    `busy_wait_ms` into one batch; with both idle, a lone submission runs at once."""
    calls: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher("t", [_doubler(calls), _doubler(calls)], max_batch=8, busy_wait_ms=300)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit(7) == 14  # idle workers: no wait
        assert loop.time() - started < 0.25
        # Arriving 20 ms apart: each alone without the busy wait.
        return await _spread_while_one_busy(batcher, gate, 4)

    assert asyncio.run(main()) == [0, 2, 4, 6]
    assert calls == [[7], [0, 1, 2, 3]]
    batcher.close()


def test_without_a_busy_wait_the_batch_wait_applies_either_way() -> None:
    """`busy_wait_ms` unset: a worker waits `max_wait_ms` whether or not another is busy."""
    calls: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher("t", [_doubler(calls), _doubler(calls)], max_batch=8, max_wait_ms=300)

    assert asyncio.run(_spread_while_one_busy(batcher, gate, 3)) == [0, 2, 4]
    assert calls == [[0, 1, 2]]
    batcher.close()


async def _spread_while_one_busy(
    batcher: MicroBatcher, gate: threading.Event, count: int
) -> list[int]:
    """Submit 0..count-1, 20 ms apart, while one worker is held busy until `gate`."""
    blocker = asyncio.ensure_future(batcher.call(gate.wait, 5))
    await asyncio.sleep(0.05)
    spread = []
    for i in range(count):
        spread.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0.02)
    results = await asyncio.gather(*spread)
    gate.set()
    await blocker
    return results
