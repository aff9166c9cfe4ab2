"""The small version of `make soak` (bench/soak.py), in `make test`: real `rr serve` processes
and redis-server, the fake encoder (the faults are in storage and replication, not the model).

Each part checks what clients were told against what the service then holds; see the module
docstring of bench/soak.py for the full run's figures.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench import soak

pytestmark = pytest.mark.slow


def _check(outcome: soak.Outcome) -> None:
    print(outcome.line())
    assert not outcome.failures, outcome.line()


def test_kill_9_during_writes_loses_nothing_acknowledged_and_no_batch_in_part(
    tmp_path: Path,
) -> None:
    outcome = soak.crash_rounds(tmp_path, rounds=4, encoder="fake")
    _check(outcome)
    assert outcome.figures["of which after-write kills"] == 1


def test_searches_during_expert_churn_get_no_5xx_and_no_deleted_expert(tmp_path: Path) -> None:
    outcome = soak.churn(tmp_path, seconds=5, encoder="fake")
    _check(outcome)
    assert outcome.figures["expert cycles"] >= 2 and outcome.figures["searches"] > 100


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_restart_during_admin_writes_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    _check(soak.redis_restart(tmp_path, seconds=8, encoder="fake"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")
def test_a_full_index_volume_answers_507_keeps_state_and_recovers(tmp_path: Path) -> None:
    outcome = soak.disk_full(tmp_path, encoder="fake")
    _check(outcome)
    assert outcome.figures["refused answers"].get(507)
