"""`make bench`'s harness end to end, tiny: `python -m bench.serving` with a few requests per
point on (c) and (l) (the shipped experts copied, the base-only path; random all-layer
experts registered through the admin API under RR_ROUTING_LAYER=0), 50 documents per index,
run as a process (tests import nothing from bench/), its report written to a temp dir.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(Settings().datasets_dir or ROOT / "../shared/datasets")


@pytest.mark.skipif(
    not (DATASETS / "benchmark.json").exists(), reason=f"no benchmark data at {DATASETS}"
)
def test_the_serving_benchmark_measures_every_variant_without_errors(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.serving", "--quick", "--requests", "8"]
    command += ["--concurrency", "1,2", "--variants", "c,l", "--pilot-queries", "5", "--docs", "50"]
    command += ["--no-bound", "--no-router-refit", "--datasets-dir", str(DATASETS.resolve())]
    command += ["--out-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "bench.md").read_text()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| (")]
    measured = {(row[0].lstrip("| "), int(row[1])) for row in rows}
    for label in ("(c) base only", "(l) routed, all-layer experts"):
        assert {(label, 1), (label, 2)} <= measured, report
    assert all(row[7] == "0" for row in rows), report  # the errors column
    assert "SMOKE RUN" in report and "## Notes" not in report, report
    assert "(target >= 0.80)" in report  # (l)/(c), with its target
    # (l) measures the one-pass path only if none of its experts takes the full second pass.
    assert "(l) routed, all-layer experts: 10 experts; served in one pass" in report
    assert "by a full second pass 0" in report
    assert (tmp_path / "bench.png").stat().st_size > 0
