"""A container engine for the deployment test: Docker where a Docker engine answers, else
Podman (with podman-compose), base images built locally where no image registry answers.

The one place the test (tests/test_compose.py) and `make compose-test` start images and the
compose stack. Podman runs with docker/podman/containers.conf (runc, cgroupfs, no systemd).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
GATEWAY_IMAGE = "routerretriever-gateway:cpu"
# The images the compose file and Dockerfile name, and their local stand-ins (Debian bookworm
# from debootstrap, then docker/base-images/<name>.Containerfile).
UPSTREAM_IMAGES = {
    "python": "python:3.11-slim",
    "redis": "redis:7-alpine",
    "nginx": "nginx:1.28-alpine",
}
LOCAL_ROOT_IMAGE = "localhost/rr-base:bookworm"
LOCAL_IMAGES = {
    "python": "localhost/rr-python:3.11-bookworm",
    "redis": "localhost/rr-redis:bookworm",
    "nginx": "localhost/rr-nginx:bookworm",
}
IMAGE_VARIABLES = {
    "python": "DEPLOY_PYTHON_IMAGE",
    "redis": "DEPLOY_REDIS_IMAGE",
    "nginx": "DEPLOY_LB_IMAGE",
}
TORCH_WHEELS = Path("/opt/wheels")  # where this machine's pip finds the CPU torch


def log(message: str) -> None:
    print(f"[compose-test] {message}", file=sys.stderr, flush=True)


@dataclass
class Engine:
    name: str  # "docker" or "podman"
    compose: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return _run([self.name, *args], self.env, timeout, check)

    def has_image(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0

    def build_volumes(self) -> list[str]:
        """What the gateway's build needs to reach the pip mirror the host reaches: the
        host's CA bundle and pip settings (Podman only: `docker build` mounts nothing)."""
        if self.name != "podman":
            return []
        mounts = []
        for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
            if Path(path).is_file():
                mounts += ["-v", f"{path}:{path}:ro"]
        return mounts


def _run(
    command: Sequence[str], env: dict[str, str], timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """A command with `env` added, output captured; RuntimeError with its tail on failure."""
    result = subprocess.run(
        list(command), env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:4])} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def find_engine() -> Engine | str:
    """The engine to use, or why none can run here."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return Engine("docker", ["docker", "compose"])
    if not shutil.which("podman"):
        return (
            "no container engine runs here: `docker info` fails or docker is absent, and "
            "podman is not installed (`make containers` installs podman, buildah, runc and "
            "debootstrap)"
        )
    compose = Path(sys.executable).with_name("podman-compose")
    if not compose.exists():
        return "podman is here but podman-compose is not in the venv (make install)"
    engine = Engine(
        "podman",
        [str(compose), "--podman-path", shutil.which("podman") or "podman"],
        {"CONTAINERS_CONF": str(DOCKER / "podman" / "containers.conf")},
    )
    probe = engine.run("info", check=False, timeout=120)
    if probe.returncode != 0:
        return f"podman cannot run here: {probe.stderr.strip()[-500:]}"
    return engine


def registry_answers(engine: Engine, image: str, timeout: float = 45) -> bool:
    """Whether `image` can be pulled (or is here already)."""
    if engine.has_image(image):
        return True
    try:
        return engine.run("pull", "-q", image, timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def base_images(engine: Engine) -> dict[str, str]:
    """The compose variables naming the base images: the upstream ones where a registry
    answers, else local stand-ins, built once (kept between runs as any pulled image is)."""
    if registry_answers(engine, UPSTREAM_IMAGES["python"]):
        for image in UPSTREAM_IMAGES.values():
            engine.run("pull", "-q", image, timeout=600)
        return {}
    log("no image registry answers: building local base images")
    if not engine.has_image(LOCAL_ROOT_IMAGE):
        _import_debootstrap(engine)
    for name, image in LOCAL_IMAGES.items():
        if not engine.has_image(image):
            started = time.perf_counter()
            # apt over the Debian mirror needs no host CA; mounting it read-only would
            # break the ca-certificates package's own set-up.
            engine.run(
                "build",
                "--network",
                "host",
                "-f",
                str(DOCKER / "base-images" / f"{name}.Containerfile"),
                "-t",
                image,
                str(DOCKER / "base-images"),
            )
            log(f"built {image} in {time.perf_counter() - started:.0f}s")
    return {IMAGE_VARIABLES[name]: image for name, image in LOCAL_IMAGES.items()}


def _import_debootstrap(engine: Engine) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is needed for local base images (make containers)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rr-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                [engine.name, "import", "-", LOCAL_ROOT_IMAGE],
                stdin=tar.stdout,
                env={**os.environ, **engine.env},
                check=True,
                capture_output=True,
                timeout=600,
            )
    log(f"debootstrap bookworm -> {LOCAL_ROOT_IMAGE} in {time.perf_counter() - started:.0f}s")


def build_gateway(engine: Engine, images: dict[str, str], image: str = GATEWAY_IMAGE) -> None:
    """docker/Dockerfile from this checkout, as compose would build it; torch from this
    machine's wheel directory when the engine can mount it (the PyTorch index may not
    resolve here)."""
    args = ["build", "--network", "host", *engine.build_volumes(), "-f", str(DOCKER / "Dockerfile")]
    if engine.name == "podman":
        args += ["--format", "docker"]  # keeps HEALTHCHECK (OCI images have none)
        if any(TORCH_WHEELS.glob("torch-*.whl")):
            args += ["-v", f"{TORCH_WHEELS}:/wheels:ro", "--build-arg", "TORCH_WHEELS=/wheels"]
    if "DEPLOY_PYTHON_IMAGE" in images:
        args += ["--build-arg", f"PYTHON_IMAGE={images['DEPLOY_PYTHON_IMAGE']}"]
    engine.run(*args, "-t", image, str(ROOT), timeout=1800)


@dataclass
class Stack:
    """The compose project: `up`, `kill`, `down -v`, a command inside a service's container."""

    engine: Engine
    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = [*self.engine.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        return _run(command, {**self.engine.env, **self.env}, timeout)

    def containers(self, service: str | None = None) -> list[str]:
        """Names of this project's containers (of one service), running or not (Compose's
        labels, which podman-compose sets too)."""
        labels = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service is not None:
            labels += ["--filter", f"label=com.docker.compose.service={service}"]
        found = self.engine.run("ps", "-a", *labels, "--format", "{{.Names}}")
        return sorted(name for name in found.stdout.split() if name)

    def exec(self, container: str, command: Sequence[str], timeout: float = 120) -> str:
        return self.engine.run("exec", container, *command, timeout=timeout).stdout

    def mounts(self, container: str) -> list[str]:
        """Names of the volumes mounted in a container."""
        found = self.engine.run(
            "inspect", container, "--format", "{{range .Mounts}}{{.Name}} {{end}}"
        )
        return found.stdout.split()

    def down(self) -> list[str]:
        """`down -v`, then the volumes it left (podman-compose keeps the anonymous volumes of
        the images' VOLUMEs, which `docker compose down -v` removes): removed, and named."""
        mounted = {volume for name in self.containers() for volume in self.mounts(name)}
        self.compose("down", "-v", timeout=300)
        present = set(self.engine.run("volume", "ls", "--format", "{{.Name}}").stdout.split())
        left = sorted(mounted & present)
        if left:
            self.engine.run("volume", "rm", *left)
        return left
