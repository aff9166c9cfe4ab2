"""The docker-compose deployment, built and started for real (`make compose-test`).

Builds the CPU image from this checkout, starts docker/docker-compose.yml (Redis, two
gateways, the nginx load balancer) with Docker or Podman, and drives it from outside through
the load balancer: readiness, an expert registered through the admin API and a routed search
for it answered by both gateways, documents uploaded and found on both, one gateway killed
while searches keep answering, Redis restarted with nothing lost, `down -v` leaving nothing.
Each step prints its time. Skipped, saying why, where no container engine can run.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests import containers
from tests.helpers import AUTH, TOKEN, make_adapter, register
from tests.processes import free_port

pytestmark = pytest.mark.slow

EXPERT = "deploycheck"
PILOTS = [
    "lattice gauge plaquette renormalisation on a torus",
    "wilson loop area law in lattice gauge theory",
    "plaquette action monte carlo on a gauge lattice",
]
DOCUMENTS = [
    {"id": "g1", "title": "Plaquettes", "text": "The plaquette action of a lattice gauge theory."},
    {"id": "g2", "title": "Wilson loops", "text": "Area law of Wilson loops on the lattice."},
]


def step(name: str) -> Callable[[], None]:
    started = time.perf_counter()
    containers.log(f"{name} ...")

    def done() -> None:
        containers.log(f"{name}: {time.perf_counter() - started:.1f}s")

    return done


def wait_for(check: Callable[[], Any], what: str, timeout: float = 300) -> Any:
    """Poll `check` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
            last = found
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[containers.Stack, str]]:
    engine = containers.find_engine()
    if isinstance(engine, str):
        pytest.skip(engine)
    done = step(f"base images ({engine.name})")
    images = containers.base_images(engine)
    done()
    done = step(f"image build ({containers.GATEWAY_IMAGE})")
    containers.build_gateway(engine, images)
    done()
    port = free_port()
    project = f"rrtest{uuid.uuid4().hex[:6]}"
    env = {**images, "RR_ADMIN_TOKEN": TOKEN, "DEPLOY_PORT": str(port), "DEPLOY_GATEWAYS": "2"}
    deployed = containers.Stack(engine, project, env)
    volumes_before = set(engine.run("volume", "ls", "--format", "{{.Name}}").stdout.split())
    try:
        done = step("stack up (redis, 2 gateways, lb)")
        deployed.compose("up", "-d", "--no-build")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, "readyz")
        for gateway in deployed.containers("gateway"):  # each replica, not just the first
            wait_for(lambda g=gateway: call_inside(deployed, g, "/readyz"), f"{gateway} ready")
        done()
        yield deployed, url
    finally:
        done = step("down -v")
        left = deployed.down()
        done()
        if left:
            containers.log(f"down -v left {len(left)} anonymous volumes ({engine.name}): removed")
        assert deployed.containers() == []
        left = set(engine.run("volume", "ls", "--format", "{{.Name}}").stdout.split())
        assert left <= volumes_before, left - volumes_before


def call_inside(
    deployed: containers.Stack, container: str, path: str, body: dict | None = None
) -> dict:
    """GET, or POST `body`, on one gateway itself, from inside its container (not the lb)."""
    script = (
        "import json, sys, urllib.request; "
        "data = sys.argv[2].encode() if len(sys.argv) > 2 else None; "
        "r = urllib.request.Request('http://127.0.0.1:8000' + sys.argv[1], data=data, "
        "headers={'content-type': 'application/json'}); "
        "print(urllib.request.urlopen(r, timeout=60).read().decode())"
    )
    command = ["python", "-c", script, path, *([] if body is None else [json.dumps(body)])]
    return json.loads(deployed.exec(container, command))


def search_inside(deployed: containers.Stack, container: str, body: dict) -> dict:
    return call_inside(deployed, container, "/v1/search", body)


def test_the_stack_deploys_scales_and_survives(stack: tuple[containers.Stack, str]) -> None:
    deployed, url = stack
    gateways = deployed.containers("gateway")
    assert len(gateways) == 2, gateways
    # Each replica applies the change log to state of its own: no volume in common.
    mounts = [deployed.mounts(gateway) for gateway in gateways]
    assert len(mounts[0]) == 2 and not set(mounts[0]) & set(mounts[1]), mounts
    with httpx.Client(base_url=url, timeout=120) as client:
        done = step("register an expert through the lb")
        with tempfile.TemporaryDirectory() as tmp:
            adapter = make_adapter(11, tmp)
            response = register(client, EXPERT, adapter, PILOTS)
        assert response.status_code == 201, response.text
        done()

        done = step("both gateways route to it")
        query, route = {"query": PILOTS[0], "k": 2}, {"query": PILOTS[0]}
        for gateway in gateways:  # the other one learns of it through the Redis change log
            wait_for(
                lambda g=gateway: call_inside(deployed, g, "/v1/route", route)["expert"] == EXPERT,
                f"{gateway} routes to {EXPERT}",
                timeout=120,
            )
        done()

        done = step("documents uploaded: a routed search answered by both gateways")
        response = client.put(
            f"/admin/experts/{EXPERT}/documents", headers=AUTH, json={"documents": DOCUMENTS}
        )
        assert response.json() == {"inserted": 2, "updated": 0}, response.text
        for gateway in gateways:
            found = wait_for(
                lambda g=gateway: (answer := search_inside(deployed, g, query))["hits"] and answer,
                f"{gateway} hits",
            )
            assert found["routing"]["expert"] == EXPERT and not found["routing"]["fallback"]
            assert found["hits"][0]["id"] == "g1" and found["hits"][0]["index"] == EXPERT
        done()

        done = step("one gateway killed while searches go on through the lb")
        outcomes: list[int] = []
        stop = threading.Event()

        def searches() -> None:
            with httpx.Client(base_url=url, timeout=60) as load:
                for _ in range(2000):  # bounded; stopped once enough ran after the kill
                    if stop.is_set():
                        return
                    outcomes.append(load.post("/v1/search", json=query).status_code)

        load = threading.Thread(target=searches)
        load.start()
        wait_for(lambda: len(outcomes) >= 20, "searches before the kill", timeout=60)
        deployed.engine.run("kill", gateways[1])
        killed_at = len(outcomes)
        wait_for(lambda: len(outcomes) >= killed_at + 100, "searches after the kill", 120)
        stop.set()
        load.join(timeout=120)
        assert not load.is_alive()
        assert outcomes == [200] * len(outcomes), outcomes
        containers.log(f"{len(outcomes)} searches, {len(outcomes) - killed_at} after the kill")
        after = client.post("/v1/search", json=query).json()
        assert after["routing"]["expert"] == EXPERT and after["hits"][0]["id"] == "g1"
        done()

        done = step("redis restarted: nothing lost")
        [redis] = deployed.containers("redis")
        length = deployed.exec(redis, ["redis-cli", "XLEN", "rr:changes"]).strip()
        deployed.engine.run("restart", redis)
        wait_for(lambda: deployed.exec(redis, ["redis-cli", "PING"]).strip() == "PONG", "redis")
        assert deployed.exec(redis, ["redis-cli", "XLEN", "rr:changes"]).strip() == length
        # The killed gateway comes back with its own volumes and replays the log.
        deployed.engine.run("start", gateways[1])
        for gateway in gateways:
            hits = wait_for(
                lambda g=gateway: search_inside(deployed, g, query)["hits"], f"{gateway} after"
            )
            assert hits[0]["id"] == "g1"
        # A write after the restart lands in the log and reaches both gateways.
        # Until the gateway has its Redis connection back, admin writes answer 503 (paused,
        # nothing written); then the same write succeeds.
        more = [{"id": "g3", "text": "Confinement and the plaquette lattice string tension."}]
        upload = {"headers": AUTH, "json": {"documents": more}}
        path = f"/admin/experts/{EXPERT}/documents"
        wait_for(lambda: client.put(path, **upload).status_code == 200, "admin writes", 120)
        three = {**query, "k": 3}
        for gateway in gateways:
            wait_for(
                lambda g=gateway: len(search_inside(deployed, g, three)["hits"]) == 3,
                f"{gateway} has g3",
            )
        assert int(deployed.exec(redis, ["redis-cli", "XLEN", "rr:changes"])) > int(length)
        done()
