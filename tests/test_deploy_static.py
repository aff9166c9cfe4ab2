"""Static checks of the deployment files (no Docker engine runs in this project's CI).

docker/docker-compose.yml, docker/Dockerfile, docker/Dockerfile.gpu, docker/nginx.conf and
.dockerignore are parsed and cross-checked against the repository and `app.settings.Settings`:
paths they name exist, layers are ordered for caching, every RR_* variable is a real setting,
health checks, scaling, the GPU profile and the load balancer are wired as docs/DEPLOY.md says.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
NGINX_CONF = DOCKER / "nginx.conf"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
GATEWAYS = ("gateway", "gateway-gpu")
SERVE_CMD = ["rr", "serve", "--host", "0.0.0.0", "--port", "8000"]
PORT = 8000

# --------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # 1-based line of the instruction's first physical line


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, `\\` continuations joined."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, where Docker ignores them too
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        logical = " ".join(p for p in parts if p)
        keyword, _, args = logical.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, "Dockerfile ends inside a line continuation"
    return instructions


def split_args(args: str) -> list[str]:
    """Exec (JSON array) or shell-word form of an instruction's arguments."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list), args
        return [str(v) for v in value]
    return shlex.split(args)


def copy_parts(inst: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY/ADD, shell or exec form."""
    flags: dict[str, str] = {}
    rest = inst.args
    while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s+", rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    words = split_args(rest)
    assert len(words) >= 2, f"line {inst.line}: COPY needs a source and a destination"
    return flags, words[:-1], words[-1]


def env_pairs(inst: Instruction) -> dict[str, str]:
    """`ENV a=1 b=2` (or the legacy `ENV a 1`) as a dict."""
    words = shlex.split(inst.args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def dockerfile(kind: str) -> list[Instruction]:
    return parse_dockerfile(DOCKERFILES[kind].read_text())


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for inst in instructions:
        if inst.keyword == "ENV":
            env.update(env_pairs(inst))
    return env


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as an anchored regex."""
    pattern = pattern.strip().lstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((_ignore_regex(line.lstrip("!")), negated))
    return rules


def is_ignored(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether the build context drops `relative` (a path or one of its parents matches)."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for regex, negated in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negated
    return ignored


def nginx_blocks(text: str, keyword: str) -> dict[str, str]:
    """`keyword NAME { body }` blocks of nginx.conf (bodies without nested blocks)."""
    text = re.sub(r"#[^\n]*", "", text)
    return {
        m.group(1): m.group(2)
        for m in re.finditer(rf"\b{keyword}\s+(\S+)\s*\{{([^{{}}]*)\}}", text)
    }


def nginx_directives(text: str, name: str) -> list[str]:
    text = re.sub(r"#[^\n]*", "", text)
    return [m.group(1).strip() for m in re.finditer(rf"(?:^|[;{{}}\s]){name}\s+([^;{{}}]*);", text)]


def nginx_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    assert match, f"not an nginx size: {value!r}"
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * scale


def load_helper() -> Any:
    spec = importlib.util.spec_from_file_location("lock_without", DOCKER / "lock_without.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def default_of(value: str) -> str:
    """`${VAR:-default}` as its default (a plain value as itself)."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value.strip())
    return match.group(1) if match else value


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host port or None, container port) for each `ports` entry."""
    result: list[tuple[str | None, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((str(published) if published is not None else None, str(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        fields = spec.rsplit(":", 2)
        if len(fields) == 1:
            result.append((None, fields[0]))
        else:
            result.append((fields[-2] or None, fields[-1]))
    return result


def settings_env_names() -> set[str]:
    return {f"RR_{name.upper()}" for name in Settings.model_fields}


# --------------------------------------------------------------------------- compose


def test_compose_has_the_documented_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "gateway", "lb", "gateway-gpu"} <= set(services)


def test_build_contexts_and_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    built = {}
    for name, service in services.items():
        if "build" not in service:
            continue
        build = service["build"]
        build = {"context": build} if isinstance(build, str) else build
        context = (DOCKER / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile_path = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile_path.is_file(), f"{name}: {dockerfile_path} does not exist"
        built[name] = (context, dockerfile_path.resolve())
    assert built["gateway"] == (ROOT, DOCKERFILES["cpu"])
    assert built["gateway-gpu"] == (ROOT, DOCKERFILES["gpu"])


def mounts(service: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """(kind, source, target) of each volume entry: kind is bind, volume or anonymous."""
    result: list[tuple[str, str | None, str]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = volume.get("source")
            kind = volume.get("type", "volume") if source else "anonymous"
            result.append((kind, source, volume["target"]))
            continue
        fields = str(volume).split(":")
        if len(fields) == 1:
            result.append(("anonymous", None, fields[0]))
        else:
            kind = "bind" if fields[0].startswith((".", "/", "~")) else "volume"
            result.append((kind, fields[0], fields[1]))
    return result


def test_volumes_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    binds = 0
    for name, service in services.items():
        for kind, source, _target in mounts(service):
            assert source is not None or kind == "anonymous"
            if kind == "bind":
                binds += 1
                if not source.startswith(("/", "~")):
                    path = (DOCKER / source).resolve()
                    assert path.exists(), f"{name}: bind-mount source {source} ({path}) is missing"
                    assert ROOT in path.parents, f"{name}: {source} points outside the repository"
            elif kind == "volume":
                assert source in declared, f"{name}: named volume {source!r} is not declared"
    assert binds >= 1  # nginx.conf is bind-mounted: the check above ran on a real path


def test_gateway_state_is_per_replica(services: dict[str, dict[str, Any]]) -> None:
    """Each gateway applies the Redis change log to its own experts and indexes (and keeps
    its log position under the indexes directory): a named volume or bind mount there would
    be shared by every replica, so both are the images' VOLUMEs, one pair per container."""
    image_volumes = {
        v
        for i in dockerfile("cpu") + dockerfile("gpu")
        if i.keyword == "VOLUME"
        for v in split_args(i.args)
    }
    for name in GATEWAYS:
        env = environment(services[name])
        by_target = {target: (kind, source) for kind, source, target in mounts(services[name])}
        for directory in (env["RR_EXPERTS_DIR"], env["RR_INDEXES_DIR"]):
            assert directory in image_volumes, f"{name}: {directory} is no VOLUME of the images"
            # Listed at all, podman-compose would make it one volume every replica shares.
            assert directory not in by_target, f"{name}: {directory} shared"


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    redis_test = healthcheck_command(services["redis"])
    assert "redis-cli" in redis_test and "ping" in redis_test
    for name in GATEWAYS:
        test = healthcheck_command(services[name])
        assert f"127.0.0.1:{PORT}/readyz" in test, name
        assert "curl" not in test and "wget" not in test, f"{name}: the images have neither"
        assert services[name]["healthcheck"].get("start_period"), f"{name}: model load needs one"


def test_dependencies_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name in GATEWAYS:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["lb"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_admin_token_must_be_set(services: dict[str, dict[str, Any]]) -> None:
    for name in GATEWAYS:
        token = environment(services[name])["RR_ADMIN_TOKEN"]
        assert re.fullmatch(r"\$\{RR_ADMIN_TOKEN:\?[^}]+\}", token), f"{name}: {token!r}"


def test_every_rr_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names()
    named: dict[str, str] = {}
    for name, service in services.items():
        named.update(
            {
                var: f"compose service {name}"
                for var in environment(service)
                if var.startswith("RR_")
            }
        )
    compose_text = COMPOSE_FILE.read_text()
    named.update(
        {var: "compose interpolation" for var in re.findall(r"\$\{?(RR_[A-Z0-9_]+)", compose_text)}
    )
    for path in DOCKERFILES.values():
        text = path.read_text()
        env = dockerfile_env(parse_dockerfile(text))
        named.update({var: f"{path.name} ENV" for var in env if var.startswith("RR_")})
        named.update({var: path.name for var in re.findall(r"\b(RR_[A-Z0-9_]+)", text)})
    assert {"RR_REDIS_URL", "RR_ADMIN_TOKEN", "RR_EXPERTS_DIR", "RR_INDEXES_DIR"} <= set(named)
    unknown = {var: where for var, where in named.items() if var not in known}
    assert not unknown, f"not fields of app.settings.Settings: {unknown}"


def test_redis_url_points_at_the_redis_service(services: dict[str, dict[str, Any]]) -> None:
    for name in GATEWAYS:
        assert environment(services[name])["RR_REDIS_URL"].startswith("redis://redis:6379/"), name


def test_redis_persists_with_aof(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    assert words[0] == "redis-server"
    options = dict(zip(words[1::2], words[2::2], strict=False))
    assert options.get("--appendonly") == "yes"
    assert options.get("--appendfsync") in {"always", "everysec"}
    data = [
        (kind, source) for kind, source, target in mounts(services["redis"]) if target == "/data"
    ]
    assert data and data[0][0] == "volume"  # the AOF lives in a named volume


def test_gpu_service_only_in_gpu_profile_and_reserves_a_gpu(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["gateway-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    for name, service in services.items():
        if name != "gateway-gpu":
            assert not service.get("profiles"), f"{name} must start without a profile"
            assert "deploy" not in service or "devices" not in str(service["deploy"]), name
    # The GPU replicas join the CPU ones behind `lb`, which resolves the name `gateway`.
    assert "gateway" in gpu["networks"]["default"]["aliases"]


def test_gateways_can_scale(services: dict[str, dict[str, Any]]) -> None:
    for name in GATEWAYS:
        service = services[name]
        fixed = [host for host, _ in published_ports(service) if host is not None]
        assert not fixed, f"{name} publishes host port(s) {fixed}: --scale would collide"
        assert "container_name" not in service, f"{name}: a fixed container name cannot scale"
        assert str(PORT) in [str(p) for p in service.get("expose", [])], name


def test_lb_publishes_8000_and_mounts_nginx_conf(services: dict[str, dict[str, Any]]) -> None:
    lb = services["lb"]
    # The host port: 8000 unless DEPLOY_PORT says otherwise.
    assert lb["ports"] == ["${DEPLOY_PORT:-8000}:8000"]
    assert default_of(lb["image"]).startswith("nginx:")
    mounts = [str(v) for v in lb["volumes"]]
    assert "./nginx.conf:/etc/nginx/rr/nginx.conf:ro" in mounts, mounts
    assert "./nginx-start.sh:/etc/nginx/rr/start.sh:ro" in mounts, mounts
    assert lb["command"] == ["/bin/sh", "/etc/nginx/rr/start.sh"]
    start = (DOCKER / "nginx-start.sh").read_text()
    assert "/etc/resolv.conf" in start and "RESOLVER_ADDRESS" in start
    assert "nginx -c /tmp/nginx.conf" in start


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_base_image(kind: str) -> None:
    """Two stages on one base (the venv built in the first runs in the second), by default
    python:3.11-slim: the lock is resolved for CPython 3.11 (CUDA comes in wheels)."""
    text = DOCKERFILES[kind].read_text()
    froms = [i.args.split()[0] for i in dockerfile(kind) if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert text.index("ARG PYTHON_IMAGE") < text.index("FROM")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_copy_sources_exist_in_the_build_context(kind: str) -> None:
    rules = dockerignore_rules()
    copies = [i for i in dockerfile(kind) if i.keyword in {"COPY", "ADD"}]
    assert copies
    for inst in copies:
        flags, sources, _ = copy_parts(inst)
        if "from" in flags:  # from the build stage: the venv it made
            assert flags["from"] == "build" and sources == ["/opt/venv"], inst
            continue
        for source in sources:
            assert source not in {".", "./"}, f"line {inst.line}: COPY . defeats layer caching"
            matches = (
                list(ROOT.glob(source.rstrip("/")))
                if any(c in source for c in "*?[")
                else [ROOT / source]
            )
            assert matches and all(m.exists() for m in matches), (
                f"line {inst.line}: {source} missing"
            )
            assert not is_ignored(source, rules), f"line {inst.line}: .dockerignore drops {source}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dependencies_install_from_the_lock_before_the_code_is_copied(kind: str) -> None:
    instructions = dockerfile(kind)
    deps = next(
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "--require-hashes" in i.args
    )
    assert re.search(r"pip install --no-deps --require-hashes -r \S+", instructions[deps].args)
    assert "requirements/service.lock" in instructions[deps].args
    copy_app = next(
        n
        for n, i in enumerate(instructions)
        if i.keyword == "COPY" and any(s.rstrip("/") == "app" for s in copy_parts(i)[1])
    )
    assert deps < copy_app, "dependencies must be installed in a layer before COPY app/"
    before = {s for i in instructions[:deps] if i.keyword == "COPY" for s in copy_parts(i)[1]}
    assert before <= {"requirements/service.lock", "docker/lock_without.py"}, before
    assert "requirements/service.lock" in before
    project = next(
        n
        for n, i in enumerate(instructions)
        if i.keyword == "RUN" and re.search(r"pip install --no-deps (--no-compile )?\.", i.args)
    )
    assert copy_app < project
    # `pip install .` needs the project's metadata in the build (the image once failed
    # to build without it: "Neither 'setup.py' nor 'pyproject.toml' found").
    copied = {s for i in instructions[:project] if i.keyword == "COPY" for s in copy_parts(i)[1]}
    assert {"pyproject.toml", "README.md", "app/"} <= copied, copied
    torch = next(
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "torch==" in i.args
    )
    assert torch < deps


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_torch_build_matches_the_image(kind: str) -> None:
    instructions = dockerfile(kind)
    run = next(i.args for i in instructions if i.keyword == "RUN" and "torch==" in i.args)
    text = DOCKERFILES[kind].read_text()
    assert "2.13.0" in run or "TORCH_VERSION=2.13.0" in text
    if kind == "cpu":
        index = re.search(r"TORCH_INDEX_URL=(\S+)", text)
        assert index and index.group(1).endswith("/whl/cpu")
        assert '--index-url "$TORCH_INDEX_URL"' in run
        # A build that cannot reach that index takes torch from mounted wheels instead.
        assert '--find-links "$TORCH_WHEELS"' in run
    else:
        index = re.search(r"TORCH_INDEX_URL=(\S+)", text)
        assert index and re.search(r"/whl/cu\d+$", index.group(1))


def test_gpu_image_swaps_faiss_cpu_for_gpu_faiss() -> None:
    instructions = dockerfile("gpu")
    deps = next(i.args for i in instructions if i.keyword == "RUN" and "lock_without.py" in i.args)
    assert "requirements/service.lock faiss-cpu" in deps
    args = {k: v for i in instructions if i.keyword == "ARG" for k, _, v in [i.args.partition("=")]}
    assert re.fullmatch(r"faiss-gpu\S*==\S+", args["FAISS_GPU_REQUIREMENT"])  # pinned exactly
    assert "${FAISS_GPU_REQUIREMENT}" in deps
    assert "! pip show faiss-cpu" in deps
    cpu_deps = [
        i.args
        for i in dockerfile("cpu")
        if i.keyword == "RUN" and re.search(r"pip install [^&]*faiss", i.args)
    ]
    assert not cpu_deps  # the CPU image keeps the lock's faiss-cpu


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_runtime_settings(kind: str) -> None:
    instructions = dockerfile(kind)
    env = dockerfile_env(instructions)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["RR_EXPERTS_DIR"] == "/data/experts"
    assert env["RR_INDEXES_DIR"] == "/data/indexes"
    volumes = [v for i in instructions if i.keyword == "VOLUME" for v in split_args(i.args)]
    assert {"/data/experts", "/data/indexes"} <= set(volumes)
    # Content written to a VOLUME path after the VOLUME instruction is discarded.
    volume_at = max(n for n, i in enumerate(instructions) if i.keyword == "VOLUME")
    seeded = [
        n
        for n, i in enumerate(instructions)
        if i.keyword == "COPY" and copy_parts(i)[2].rstrip("/") == "/data/experts"
    ]
    assert seeded and max(seeded) < volume_at
    assert any(copy_parts(i)[1] == ["experts/"] for i in instructions if i.keyword == "COPY")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_runs_rr_serve_as_non_root_with_a_healthcheck(kind: str) -> None:
    instructions = dockerfile(kind)
    cmds = [i for i in instructions if i.keyword == "CMD"]
    assert len(cmds) == 1 and split_args(cmds[0].args) == SERVE_CMD
    assert cmds[0].args.startswith("[")  # exec form: rr is PID 1 and gets SIGTERM
    assert not [i for i in instructions if i.keyword == "ENTRYPOINT"]
    users = [i.args.split(":")[0] for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    last_user = max(n for n, i in enumerate(instructions) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in instructions[last_user:])
    expose = [p for i in instructions if i.keyword == "EXPOSE" for p in i.args.split()]
    assert str(PORT) in expose
    checks = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0].args
    assert f"127.0.0.1:{PORT}/healthz" in check and "python" in check and "curl" not in check


def test_both_images_run_as_the_same_uid() -> None:
    uids = {
        kind: re.findall(r"useradd[^&]*--uid (\d+)", DOCKERFILES[kind].read_text())
        for kind in DOCKERFILES
    }
    assert uids["cpu"] and uids["cpu"] == uids["gpu"], uids  # volumes stay writable across images


# ------------------------------------------------------------- helpers shipped in docker/


def test_lock_without_drops_whole_entries_of_the_real_lock() -> None:
    helper = load_helper()
    lock = (ROOT / "requirements" / "service.lock").read_text()
    kept = helper.without(lock, ["faiss-cpu"])
    assert "faiss-cpu==" in lock and "faiss-cpu==" not in kept
    assert kept.count("==") == lock.count("==") - 1
    dropped = set(lock.splitlines()) - set(kept.splitlines())
    assert all("faiss" in line or "--hash" in line or "#" in line for line in dropped), dropped
    assert helper.without(lock, []) == lock
    with pytest.raises(SystemExit):  # a renamed dependency must break the image build
        helper.without(lock, ["faiss-gpu"])


def test_every_excluded_package_is_in_the_lock() -> None:
    helper = load_helper()
    lock = (ROOT / "requirements" / "service.lock").read_text()
    for kind in DOCKERFILES:
        for inst in dockerfile(kind):
            if inst.keyword == "RUN" and "lock_without.py" in inst.args:
                excluded = re.findall(r"service\.lock ((?:[\w-]+ ?)+)>", inst.args)
                assert excluded
                helper.without(lock, excluded[0].split())  # SystemExit if unknown


# --------------------------------------------------------------------------- nginx


def test_nginx_proxies_to_the_gateway_service(services: dict[str, dict[str, Any]]) -> None:
    text = NGINX_CONF.read_text()
    assert not nginx_blocks(text, "upstream")  # resolved at run time instead (next test)
    (target,) = nginx_directives(text, "set")
    variable, address = target.split()
    assert address == f"gateway:{PORT}" and address.split(":")[0] in services
    passes = nginx_directives(text, "proxy_pass")
    assert passes and set(passes) == {f"http://{variable}"}, passes


def test_nginx_finds_scaled_replicas_through_the_network_dns(
    services: dict[str, dict[str, Any]],
) -> None:
    """A variable in proxy_pass is resolved per request through `resolver` (cached `valid`
    seconds), over every address the name has: scaled replicas are found on any nginx
    (1.22 up), with no `server ... resolve` (1.27.3+). The resolver is the container's own,
    filled in from /etc/resolv.conf at start (Docker: 127.0.0.11, Podman: its gateway)."""
    text = NGINX_CONF.read_text()
    (resolver,) = nginx_directives(text, "resolver")
    assert resolver.split()[0] == "RESOLVER_ADDRESS"
    assert re.search(r"valid=\d+s", resolver)


def test_nginx_never_resends_admin_writes() -> None:
    locations = nginx_blocks(NGINX_CONF.read_text(), "location")
    assert {"/", "/v1/", "/admin/"} <= set(locations)
    # Only a write that never reached a replica (no `non_idempotent`: nothing was sent).
    assert nginx_directives(locations["/admin/"], "proxy_next_upstream") == ["error"]
    for path, body in locations.items():
        retries = " ".join(nginx_directives(body, "proxy_next_upstream"))
        # Only the read-only API may have a POST re-sent to another replica.
        assert "non_idempotent" not in retries or path == "/v1/", path


def test_nginx_limits_and_headers_match_the_gateway() -> None:
    text = NGINX_CONF.read_text()
    sizes = nginx_directives(text, "client_max_body_size")
    assert sizes
    assert {nginx_size(s) for s in sizes} == {Settings.model_fields["max_request_bytes"].default}
    headers = {
        h.split()[0].lower(): h.split(None, 1)[1]
        for h in nginx_directives(text, "proxy_set_header")
    }
    assert "x-request-id" in headers
    assert "$http_x_request_id" in text  # the caller's id is passed through
    assert {"host", "x-forwarded-for", "x-forwarded-proto"} <= set(headers)
    for timeout in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        assert nginx_directives(text, timeout), timeout
    listens = nginx_directives(text, "listen")
    assert [listen.split()[0] for listen in listens] == [str(PORT)]


# --------------------------------------------------------------------------- .dockerignore


def test_dockerignore_keeps_the_image_inputs_and_drops_local_state() -> None:
    rules = dockerignore_rules()
    for dropped in (
        ".venv",
        ".git",
        "indexes/expert/docs.sqlite",
        "cache",
        ".pytest_cache",
        "tests/__pycache__/x.pyc",
        "app/__pycache__/x.pyc",
    ):
        assert is_ignored(dropped, rules), dropped
    for kept in (
        "pyproject.toml",
        "README.md",
        "experts",
        "docker/lock_without.py",
        "requirements/service.lock",
        "docker/seed-experts.sh",
    ):
        assert not is_ignored(kept, rules), kept
    sources = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "app").rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    assert sources
    dropped_sources = [s for s in sources if is_ignored(s, rules)]
    assert not dropped_sources, dropped_sources
