"""The small version of `make soak` (bench/soak.py), in `make test`: real `rr serve` processes
and redis-server, the fake encoder (the faults are in storage and replication, not the model).

Each part runs as `python -m bench.soak --quick --parts <part>` (tests import nothing from
bench/) and checks what clients were told against what the service then holds; see the module
docstring of bench/soak.py for the full run's figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def soak_part(part: str, tmp_path: Path) -> dict:
    """One part of the quick soak; its outcome (name, figures, failures), failures asserted
    empty."""
    out = tmp_path / f"{part}.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--quick", "--parts", part, "--json-out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout[-3000:])
    assert out.exists(), (
        f"bench.soak wrote no outcome (exit {done.returncode}):\n{done.stderr[-3000:]}"
    )
    [outcome] = json.loads(out.read_text())
    assert not outcome["failures"], outcome["failures"]
    assert done.returncode == 0, done.stdout[-3000:]
    return outcome


def test_kill_9_during_writes_loses_nothing_acknowledged_and_no_batch_in_part(
    tmp_path: Path,
) -> None:
    outcome = soak_part("crash", tmp_path)
    assert outcome["figures"]["of which after-write kills"] == 1


def test_searches_during_expert_churn_get_no_5xx_and_no_deleted_expert(tmp_path: Path) -> None:
    figures = soak_part("churn", tmp_path)["figures"]
    assert figures["expert cycles"] >= 2 and figures["searches"] > 100


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_restart_during_admin_writes_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    figures = soak_part("redis", tmp_path)["figures"]
    assert figures["acknowledged documents"] > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited tmpfs needs root")
def test_a_full_index_volume_answers_507_keeps_state_and_recovers(tmp_path: Path) -> None:
    figures = soak_part("disk", tmp_path)["figures"]
    assert figures["refused answers"].get("507")  # JSON keys are strings
