"""`make soak`: the service under the faults a production deployment meets, with figures.

Every part runs real processes on 127.0.0.1 (`rr serve`, redis-server) and a shipped expert's
trained adapter, and checks what clients were told against what the service then holds:

1. **crash rounds**: `kill -9` during document upserts and deletes; every third round the
   gateway instead kills itself right after a write landed and before answering
   (`RR_TEST_CRASH_AFTER_WRITES`), so a batch the client saw fail is stored whole. After each
   restart: every acknowledged document present as written, every acknowledged delete gone,
   each unacknowledged batch present whole or not at all (a partial batch is a failure).
2. **churn**: searches at concurrency 32 while an extra expert is registered, filled and
   deleted every second: 5xx answers and hits from an expert after its delete returned.
3. **Redis restart**: two gateways share Redis; Redis is killed (SIGKILL) and restarted during
   admin writes. Acknowledged writes must reach both gateways; refused ones answer 503.
4. **disk full**: the index volume is a small tmpfs; upserts until it is full must answer 507
   (or 503) with the previous state intact, and resume once space is freed.
5. **schemathesis**: the schema fuzz suite with more cases per operation.

    .venv/bin/python -m bench.soak                 # the full run (~10 min), `make soak`
    .venv/bin/python -m bench.soak --quick         # the small version `make test` runs
    .venv/bin/python -m bench.soak --quick --parts churn --json-out churn.json
Exit status 1 on any loss, partial batch, 5xx or failed check.
"""

from __future__ import annotations

# ruff: noqa: B008  (typer declares options as argument defaults)
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import typer

from tests.processes import TOKEN, Gateway, RedisServer, adapter_files

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPERT = "soak"
SHIPPED = Path(__file__).resolve().parent.parent / "experts"
QUERIES = [
    "aerodynamic heating of a blunt body",
    "boundary layer transition on a flat plate",
    "buckling of thin cylindrical shells",
    "heat transfer in hypersonic flow",
]


@dataclass
class Outcome:
    name: str
    figures: dict[str, object] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "ok" if not self.failures else "FAILED: " + "; ".join(self.failures[:5])
        shown = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        return f"{self.name}: {shown} -> {status}"


def register(client: httpx.Client, name: str) -> httpx.Response:
    data = {"name": name, "pilot_queries": json.dumps(QUERIES)}
    return client.post(
        "/admin/experts", headers=AUTH, data=data, files=adapter_files(SHIPPED / "cranfield")
    )


# Words documents are made of: each document's own random draw, so every text (and vector)
# is distinct and a search for a document's own text finds it first.
VOCABULARY = " ".join(QUERIES).split() + [f"v{n}" for n in range(300)]


def documents(prefix: str, n: int, filler_words: int = 0) -> list[dict[str, str]]:
    """`n` documents `prefix-0...` on the soak's topic: 12 words each, or `filler_words`."""
    out = []
    for i in range(n):
        doc_id = f"{prefix}-{i}"
        words = random.Random(doc_id).choices(VOCABULARY, k=filler_words or 12)
        out.append({"id": doc_id, "title": f"{prefix} {i}", "text": " ".join(words)})
    return out


def present(client: httpx.Client, expert: str, doc_id: str) -> dict | None:
    response = client.get(f"/admin/experts/{expert}/documents/{doc_id}", headers=AUTH)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def findable(client: httpx.Client, docs: dict[str, str], sample: int, seed: int = 0) -> int:
    """How many of (up to) `sample` of `docs` (id -> title; text as `documents` writes it)
    a dense search for their own text finds in the top 3: FAISS holds their vectors, not
    only SQLite their rows."""
    rng = random.Random(seed)
    chosen = rng.sample(sorted(docs), min(sample, len(docs)))
    found = 0
    for doc_id in chosen:
        stored = present(client, EXPERT, doc_id)
        if stored is None:
            continue
        body = {
            "query": f"{stored['title']} {stored['text']}"[:2000],
            "expert": "base",
            "index": EXPERT,
            "mode": "dense",
            "k": 3,
            "include_text": False,
        }
        hits = client.post("/v1/search", json=body).json().get("hits", [])
        found += any(hit["id"] == doc_id for hit in hits)
    return found


def gateway(root: Path, name: str, encoder: str, redis_url: str | None = None, **env) -> Gateway:
    """redis_url None: embedded, the gateway's own disk is the only state."""
    settings = {"RR_ENCODER_BACKEND": encoder} | {k: str(v) for k, v in env.items()}
    return Gateway(root, redis_url, name, env=settings)


# -- 1. crash rounds -----------------------------------------------------------------------


def crash_rounds(root: Path, rounds: int, encoder: str, seed: int = 0) -> Outcome:
    rng = random.Random(seed)
    outcome = Outcome("crash rounds")
    state = WriteLog()
    node = gateway(root, "crash", encoder)
    try:
        return _crash_rounds(node, outcome, state, rounds, rng)
    finally:
        node.stop()


def _crash_rounds(
    node: Gateway, outcome: Outcome, state: WriteLog, rounds: int, rng: random.Random
) -> Outcome:
    injected = 0
    for round_no in range(rounds):
        inject = round_no % 3 == 2
        node.env.pop("RR_TEST_CRASH_AFTER_WRITES", None)
        if inject:  # the Nth write lands, then the gateway dies before answering
            node.env["RR_TEST_CRASH_AFTER_WRITES"] = str(rng.randint(1, 4))
        node.start()
        with httpx.Client(base_url=node.url, timeout=60) as client:
            if round_no == 0:
                assert register(client, EXPERT).status_code == 201
            state.resolve(client, outcome)  # what the last kill left in doubt
            killer = None
            if not inject:
                killer = threading.Timer(rng.uniform(0.5, 2.0), node.kill)
                killer.start()
            state.write_until_killed(client, round_no, rng)
        if killer is not None:
            killer.join()
        else:
            injected += 1
        if node.process is not None:
            node.process.wait(timeout=30)  # killed by the timer, or by itself
            node.process = None
    node.start()
    with httpx.Client(base_url=node.url, timeout=60) as client:
        state.resolve(client, outcome)
        lost = state.verify(client, outcome)
        live = {d: t for d, t in state.acked.items() if d not in state.deleted}
        sampled = min(100, len(live))
        by_vector = findable(client, live, sampled)
        searchable = client.post("/v1/search", json={"query": QUERIES[0]}).status_code
    node.stop()
    if by_vector != sampled:
        outcome.failures.append(f"{sampled - by_vector} of {sampled} not found by their vector")
    if searchable != 200:
        outcome.failures.append(f"search after the last restart answered {searchable}")
    acknowledged = len(state.acked) - len(state.deleted)
    outcome.figures = {
        "rounds": rounds,
        "of which after-write kills": injected,
        "acknowledged documents": acknowledged,
        "present": acknowledged - lost,
        "found by their own vector (sample)": f"{by_vector}/{sampled}",
        "acknowledged deletes": len(state.deleted),
        "unacknowledged batches landed whole / absent / partial": (
            f"{state.whole} / {state.absent} / {state.partial}"
        ),
    }
    return outcome


class WriteLog:
    """What clients were told (acknowledged upserts and deletes) and what a kill left in
    doubt (a batch or delete sent, never answered)."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}  # id -> title, as acknowledged
        self.deleted: set[str] = set()
        self.doubtful_batch: list[dict] = []
        self.doubtful_delete: str | None = None
        self.whole = self.absent = self.partial = 0

    def write_until_killed(self, client: httpx.Client, round_no: int, rng: random.Random) -> None:
        """Upserts of 20 documents, and deletes, until the gateway dies (bounded)."""
        live = [doc_id for doc_id in self.acked if doc_id not in self.deleted]
        for op in range(10_000):
            if live and rng.random() < 0.25:
                doc_id = live.pop(rng.randrange(len(live)))
                try:
                    status = client.delete(
                        f"/admin/experts/{EXPERT}/documents/{doc_id}", headers=AUTH
                    ).status_code
                except httpx.TransportError:
                    self.doubtful_delete = doc_id
                    return
                if status != 204:
                    raise RuntimeError(f"delete answered {status}")
                self.deleted.add(doc_id)
                continue
            batch = documents(f"r{round_no}b{op}", 20)
            try:
                response = client.put(
                    f"/admin/experts/{EXPERT}/documents", headers=AUTH, json={"documents": batch}
                )
            except httpx.TransportError:
                self.doubtful_batch = batch
                return
            if response.status_code != 200:
                raise RuntimeError(f"upsert answered {response.status_code}: {response.text}")
            self.acked.update({d["id"]: d["title"] for d in batch})
            live.extend(d["id"] for d in batch)

    def resolve(self, client: httpx.Client, outcome: Outcome) -> None:
        """After a restart: an unanswered batch must be stored whole or not at all."""
        if self.doubtful_batch:
            found = [present(client, EXPERT, d["id"]) is not None for d in self.doubtful_batch]
            if all(found):
                self.whole += 1
                self.acked.update({d["id"]: d["title"] for d in self.doubtful_batch})
            elif not any(found):
                self.absent += 1
            else:
                self.partial += 1
                outcome.failures.append(f"a batch landed in part: {sum(found)}/{len(found)}")
        if self.doubtful_delete and present(client, EXPERT, self.doubtful_delete) is None:
            self.deleted.add(self.doubtful_delete)
        self.doubtful_batch, self.doubtful_delete = [], None

    def verify(self, client: httpx.Client, outcome: Outcome) -> int:
        """Acknowledged documents present as written, acknowledged deletes gone."""
        lost = 0
        for doc_id, title in self.acked.items():
            found = present(client, EXPERT, doc_id)
            if doc_id in self.deleted:
                if found is not None:
                    outcome.failures.append(f"{doc_id}: deleted (acknowledged) but present")
            elif found is None or found["title"] != title:
                lost += 1
                outcome.failures.append(f"{doc_id}: acknowledged, then {found or 'missing'}")
        return lost


# -- 2. churn under load -------------------------------------------------------------------


def churn(root: Path, seconds: float, encoder: str, concurrency: int = 32) -> Outcome:
    outcome = Outcome("churn")
    node = gateway(root, "churn", encoder)
    node.start()
    deleted_at: dict[str, float] = {}
    cycles, stop = 0, threading.Event()

    def churner() -> None:
        nonlocal cycles
        with httpx.Client(base_url=node.url, timeout=60) as admin:
            while not stop.is_set():
                name = f"churn{cycles}"
                started = time.monotonic()
                if register(admin, name).status_code != 201:
                    outcome.failures.append(f"{name}: register failed")
                docs = {"documents": documents(name, 20)}
                put = admin.put(f"/admin/experts/{name}/documents", headers=AUTH, json=docs)
                deleted = admin.delete(f"/admin/experts/{name}", headers=AUTH)
                if put.status_code != 200 or deleted.status_code != 204:
                    outcome.failures.append(
                        f"{name}: upload {put.status_code}, delete {deleted.status_code}"
                    )
                else:
                    deleted_at[name] = time.monotonic()
                cycles += 1
                stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    async def search_load() -> tuple[int, int, int]:
        searches = errors = stale = 0
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as client:

            async def worker(i: int) -> None:
                nonlocal searches, errors, stale
                while time.monotonic() < deadline and searches < 200_000:
                    sent = time.monotonic()
                    body = {"query": QUERIES[i % 4], "k": 5}
                    response = await client.post("/v1/search", json=body)
                    searches += 1
                    if response.status_code >= 500:
                        errors += 1
                        continue
                    if response.status_code != 200:
                        continue
                    answer = response.json()
                    named = {answer["routing"]["expert"]} | {h["expert"] for h in answer["hits"]}
                    stale += any(deleted_at.get(n, float("inf")) < sent for n in named)

            await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return searches, errors, stale

    with httpx.Client(base_url=node.url, timeout=60) as admin:
        assert register(admin, EXPERT).status_code == 201
        admin.put(
            f"/admin/experts/{EXPERT}/documents",
            headers=AUTH,
            json={"documents": documents("base", 50)},
        )
    thread = threading.Thread(target=churner)
    thread.start()
    try:
        searches, errors, stale = asyncio.run(search_load())
    finally:
        stop.set()
        thread.join()
        node.stop()
    outcome.figures = {
        "searches": searches,
        "concurrency": concurrency,
        "expert cycles": cycles,
        "5xx": errors,
        "hits from deleted experts": stale,
    }
    if errors:
        outcome.failures.append(f"{errors} searches answered 5xx")
    if stale:
        outcome.failures.append(f"{stale} answers named an expert after its delete returned")
    return outcome


# -- 3. Redis killed and restarted during admin writes -------------------------------------


def redis_restart(root: Path, seconds: float, encoder: str) -> Outcome:
    outcome = Outcome("redis restart")
    redis = RedisServer(root / "redis")
    redis.start()
    a = gateway(root, "a", encoder, redis.url)
    b = gateway(root, "b", encoder, redis.url)
    a.start()
    b.start()
    statuses: dict[int, int] = {}
    acked: list[str] = []
    try:
        with (
            httpx.Client(base_url=a.url, timeout=60) as client_a,
            httpx.Client(base_url=b.url, timeout=60) as client_b,
        ):
            assert register(client_a, EXPERT).status_code == 201
            killer = threading.Timer(seconds / 3, _bounce, args=(redis, seconds / 3))
            killer.start()
            deadline = time.monotonic() + seconds
            batch_no = 0
            while time.monotonic() < deadline and batch_no < 10_000:
                batch = documents(f"w{batch_no}", 10)
                batch_no += 1
                try:
                    response = client_a.put(
                        f"/admin/experts/{EXPERT}/documents",
                        headers=AUTH,
                        json={"documents": batch},
                    )
                except httpx.TransportError:
                    statuses[0] = statuses.get(0, 0) + 1
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    acked.extend(d["id"] for d in batch)
                time.sleep(0.05)
            killer.join()
            missing = {"a": 0, "b": 0}
            for name, client in (("a", client_a), ("b", client_b)):
                _until(lambda c=client: present(c, EXPERT, acked[-1]) is not None, 60)
                missing[name] = sum(present(client, EXPERT, d) is None for d in acked)
    finally:
        a.stop()
        b.stop()
        redis.stop()
    outcome.figures = {
        "admin writes": sum(statuses.values()),
        "answers": dict(sorted(statuses.items())),
        "acknowledged documents": len(acked),
        "missing on A / B": f"{missing['a']} / {missing['b']}",
    }
    if missing["a"] or missing["b"]:
        outcome.failures.append("acknowledged documents missing after Redis restarted")
    if bad := {s: n for s, n in statuses.items() if s not in (200, 503)}:
        outcome.failures.append(f"answers other than 200/503: {bad}")
    if not statuses.get(503):
        outcome.failures.append("no write met the outage (503): the bounce missed the writes")
    return outcome


def _bounce(redis: RedisServer, down_s: float) -> None:
    redis.process.kill()
    redis.process.wait(timeout=10)
    time.sleep(down_s)
    redis.start()


def _until(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("not converged")
        time.sleep(0.2)


# -- 4. disk full ----------------------------------------------------------------------------


def disk_full(root: Path, encoder: str, size_mb: int = 24) -> Outcome:
    outcome = Outcome("disk full")
    volume = root / "small-volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        outcome.figures = {"skipped": f"cannot mount a tmpfs ({mounted.stderr.strip()})"}
        outcome.failures.append("not run: needs root (mount) for a size-limited volume")
        return outcome
    node = gateway(root, "disk", encoder, RR_INDEXES_DIR=volume / "indexes")
    try:
        ballast = volume / "ballast"
        ballast.write_bytes(b"\0" * 4 * 1024 * 1024)  # freed later: "space is freed"
        node.start()
        acked: list[str] = []
        refused: dict[int, int] = {}
        refused_ids: list[str] = []
        with httpx.Client(base_url=node.url, timeout=60) as client:
            assert register(client, EXPERT).status_code == 201
            for batch_no in range(2_000):  # bounded: ~24 MB fills in well under this
                batch = documents(f"f{batch_no}", 25, filler_words=400)
                response = client.put(
                    f"/admin/experts/{EXPERT}/documents", headers=AUTH, json={"documents": batch}
                )
                if response.status_code == 200:
                    acked.extend(d["id"] for d in batch)
                    continue
                refused[response.status_code] = refused.get(response.status_code, 0) + 1
                refused_ids.extend(d["id"] for d in batch)
                if len(refused) and sum(refused.values()) >= 3:
                    break
            intact = sum(present(client, EXPERT, d) is not None for d in acked)
            leaked = sum(present(client, EXPERT, d) is not None for d in refused_ids)
            search = client.post("/v1/search", json={"query": QUERIES[0]}).status_code
            ballast.unlink()
            resumed = client.put(
                f"/admin/experts/{EXPERT}/documents",
                headers=AUTH,
                json={"documents": documents("after", 5)},
            ).status_code
        node.kill()
        node.start()
        with httpx.Client(base_url=node.url, timeout=60) as client:
            after_restart = sum(present(client, EXPERT, d) is not None for d in acked)
            by_vector = findable(client, {d: "" for d in acked}, 50)
    finally:
        node.stop()
        subprocess.run(["umount", "-l", str(volume)], check=False)
    outcome.figures = {
        "volume": f"{size_mb} MB tmpfs",
        "acknowledged documents": len(acked),
        "refused answers": refused,
        "intact": intact,
        "refused documents stored": leaked,
        "search while full": search,
        "write after freeing space": resumed,
        "intact after kill -9 and restart": after_restart,
        "found by their own vector (sample)": f"{by_vector}/{min(50, len(acked))}",
    }
    if leaked:
        outcome.failures.append(f"{leaked} documents of refused batches were stored")
    if by_vector != min(50, len(acked)):
        outcome.failures.append("acknowledged documents not found by their vector")
    if not refused or set(refused) - {507, 503}:
        outcome.failures.append(f"a full disk answered {refused or 'nothing but 200'}")
    if intact != len(acked) or after_restart != len(acked):
        outcome.failures.append("acknowledged documents lost on a full disk")
    if search != 200:
        outcome.failures.append(f"search on a full disk answered {search}")
    if resumed != 200:
        outcome.failures.append(f"write after freeing space answered {resumed}")
    return outcome


# -- 5. schemathesis ---------------------------------------------------------------------------


def schema_fuzz(root: Path, examples: int) -> Outcome:
    outcome = Outcome("schemathesis")
    counts = root / "fuzz-counts.json"
    env = os.environ | {"RR_FUZZ_EXAMPLES": str(examples), "RR_FUZZ_COUNTS": str(counts)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_schema_fuzz.py",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=1800,
    )
    figures = json.loads(counts.read_text()) if counts.exists() else {}
    outcome.figures = {
        "cases": figures.get("cases", "?"),
        "stateful steps": figures.get("stateful_steps", "?"),
        "failed tests": run.stdout.count("FAILED"),
    }
    if run.returncode != 0:
        outcome.failures.append("schema fuzz failed:\n" + run.stdout[-3000:])
    return outcome


# -- the suite -------------------------------------------------------------------------------

PARTS = ("crash", "churn", "redis", "disk", "schema")


def run(
    rounds: int = 20,
    churn_s: float = 30.0,
    redis_s: float = 12.0,
    fuzz_examples: int = 200,
    encoder: str = "minilm",
    parts: tuple[str, ...] = PARTS,
) -> list[Outcome]:
    root = Path(tempfile.mkdtemp(prefix="rr-soak-"))
    outcomes = []
    try:
        steps = {
            "crash": lambda: crash_rounds(root, rounds, encoder),
            "churn": lambda: churn(root, churn_s, encoder),
            "redis": lambda: redis_restart(root, redis_s, encoder),
            "disk": lambda: disk_full(root, encoder),
            "schema": lambda: schema_fuzz(root, fuzz_examples),
        }
        for part in parts:
            started = time.monotonic()
            outcome = steps[part]()
            outcome.figures["seconds"] = round(time.monotonic() - started)
            print(outcome.line(), flush=True)
            outcomes.append(outcome)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return outcomes


def main(
    quick: bool = typer.Option(False, help="The small version (what `make test` runs)."),
    rounds: int = typer.Option(20, help="Crash rounds."),
    churn_s: float = typer.Option(30.0, help="Seconds of searches under expert churn."),
    redis_s: float = typer.Option(12.0, help="Seconds of admin writes around a Redis restart."),
    encoder: str = typer.Option("minilm", help="minilm (the real encoder) or fake."),
    parts: str = typer.Option(",".join(PARTS), help="Comma-separated subset of the parts."),
    json_out: Path = typer.Option(None, help="Also write each part's figures here (JSON)."),
) -> None:
    chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
    if unknown := set(chosen) - set(PARTS):
        raise typer.BadParameter(f"unknown parts {sorted(unknown)}", param_hint="--parts")
    if quick:
        rounds, churn_s, redis_s, fuzz, encoder = 4, 5.0, 8.0, 20, "fake"
    else:
        fuzz = 200
    outcomes = run(rounds, churn_s, redis_s, fuzz, encoder, chosen)
    if json_out is not None:
        json_out.write_text(json.dumps([asdict(o) for o in outcomes], default=str))
    failed = [o for o in outcomes if o.failures]
    print(f"soak: {len(outcomes) - len(failed)}/{len(outcomes)} parts passed")
    raise typer.Exit(1 if failed else 0)


if __name__ == "__main__":
    typer.run(main)
