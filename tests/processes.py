"""Real processes on 127.0.0.1 for multi-gateway tests and the benchmarks: `rr serve` and
redis-server. The one place either is started (bench/ uses it too; tests import nothing from
bench/)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

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
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not installed (apt-get install redis-server)")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
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


class ServerProcess:
    """A server as a real separate process on 127.0.0.1 (so it can be killed with SIGKILL):
    started by `start` (which waits until GET `ready_path` answers 200), stopped by `stop`.
    `log_path` takes its output (else it shares this process's). Also a context manager:
    started on entry, stopped on exit."""

    ready_path = "/healthz"

    def __init__(
        self,
        name: str,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})  # added to this process's environment
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self._launch(self.ready_path)

    def _launch(self, path: str) -> None:
        import httpx

        log: IO[bytes] | None = None
        if self.log_path is not None:
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own copy
        try:
            self.process = subprocess.Popen(
                self.command(),
                env=os.environ | self.env,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
            )
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    self.process = None
                    raise RuntimeError(f"{self.name} exited ({code}) during start-up{self._tail()}")
                try:
                    if client.get(path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.name} not ready after {self.ready_timeout:.0f}s{self._tail()}"
                    )
                time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

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
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _tail(self) -> str:
        tail = self.log_tail()
        return f":\n{tail}" if tail else ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Gateway(ServerProcess):
    """`rr serve` serving `root/name/experts` and `root/name/indexes`.

    No corpus indexing on start (RR_DATASETS_DIR points nowhere) and the admin API on
    (`TOKEN`); `redis_url` None: embedded, the gateway's own disk is the only state. `env`
    adds settings (`self.env` may be changed until `start`), `serve_options` adds `rr serve`
    flags. `start()` waits for `/readyz`, `start(wait_ready=False)` only for `/healthz`.
    """

    def __init__(
        self,
        root: Path,
        redis_url: str | None = None,
        name: str = "gateway",
        env: dict[str, str] | None = None,
        serve_options: Sequence[str] = (),
        log_path: Path | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        self.root = root / name
        settings = {
            "RR_EXPERTS_DIR": str(self.root / "experts"),
            "RR_INDEXES_DIR": str(self.root / "indexes"),
            "RR_DATASETS_DIR": str(self.root / "no-datasets"),
            "RR_ADMIN_TOKEN": TOKEN,
        }
        if redis_url:
            settings["RR_REDIS_URL"] = redis_url
        super().__init__(f"gateway {name}", settings | (env or {}), log_path, ready_timeout)
        self.serve_options = list(serve_options)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.serve_options,
        ]

    def start(self, wait_ready: bool = True) -> None:
        self._launch("/readyz" if wait_ready else "/healthz")

    def __enter__(self) -> Gateway:
        self.start()
        return self
