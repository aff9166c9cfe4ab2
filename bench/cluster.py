"""Real processes for multi-gateway tests and benchmarks: redis-server and `rr serve`."""

from __future__ import annotations

import socket
import time
from pathlib import Path

TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def adapter_files(path: Path) -> dict[str, tuple[str, bytes, str]]:
    """A peft adapter directory as the multipart files of `POST /admin/experts`."""
    return {
        "adapter_config": (
            "adapter_config.json",
            (path / "adapter_config.json").read_bytes(),
            "application/json",
        ),
        "adapter_model": (
            "adapter_model.safetensors",
            (path / "adapter_model.safetensors").read_bytes(),
            "application/octet-stream",
        ),
    }


class RedisServer:
    """A real redis-server on a free 127.0.0.1 port, AOF on, data in `directory`."""

    def __init__(self, directory: Path) -> None:
        import shutil

        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not installed (apt-get install redis-server)")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        import subprocess

        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class Gateway:
    """`rr serve` as a real separate process (so it can be killed with SIGKILL)."""

    def __init__(self, root: Path, redis_url: str, name: str) -> None:
        self.root = root / name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "RR_EXPERTS_DIR": str(self.root / "experts"),
            "RR_INDEXES_DIR": str(self.root / "indexes"),
            "RR_DATASETS_DIR": str(self.root / "no-datasets"),
            "RR_REDIS_URL": redis_url,
            "RR_ADMIN_TOKEN": TOKEN,
        }
        self.process = None

    def start(self, wait_ready: bool = True) -> None:
        import os
        import subprocess
        import sys

        import httpx

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=os.environ | self.env,
        )
        deadline = time.monotonic() + 120
        path = "/readyz" if wait_ready else "/healthz"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("gateway exited during start-up")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()  # SIGKILL: no shutdown hooks run
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
            self.process = None
