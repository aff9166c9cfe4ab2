"""A small closed-loop async HTTP load generator (reusable by any benchmark).

`concurrency` workers each own one client with a single keep-alive connection (a shared
httpx pool across 32-64 workers burned ~5 ms of client CPU per request here and capped
every server at ~200 QPS). The default client is a minimal asyncio HTTP/1.1 one
(`RawClient`): it costs a fraction of httpx's CPU per request, and the generator shares the
machine with the server. `client="httpx"` gives each worker its own `httpx.AsyncClient`.

Workers take the next request index from a shared counter until `requests` requests have
been sent, so every point sends the same bodies in the same order whatever the
concurrency. Bodies are serialised once, up front.

    result = asyncio.run(run_load("http://127.0.0.1:8000", "/v1/search", bodies, 32, 1000))
    print(result.qps, result.p50_ms, result.p99_ms, result.errors)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

OnResponse = Callable[[int, bytes], None]
"""Called with (status code, body) for every measured response (keep it cheap)."""


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]  # every completed request, successful or not, in send order
    ok: int
    errors: int  # everything that is not 2xx and not 429: 4xx, 5xx, timeouts, resets
    rejected_429: int
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "ReadTimeout", ...
    error_samples: list[str] = field(default_factory=list)  # first few error bodies
    client_cpu_ms_per_request: float = 0.0  # this process's CPU (load generator overhead)

    @property
    def qps(self) -> float:
        """Successful requests per second of wall-clock time."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of successful-or-not request latencies, in ms."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p95_ms(self) -> float:
        return self.percentile(95)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else math.nan

    @classmethod
    def merged(cls, parts: Sequence[LoadResult]) -> LoadResult:
        """Several runs at one concurrency as one point: their requests, wall-clock time and
        latencies added up (QPS = all successes / all seconds)."""
        if not parts:
            raise ValueError("nothing to merge")
        requests = sum(p.requests for p in parts)
        statuses: Counter[str] = Counter()
        for part in parts:
            statuses.update(part.statuses)
        return cls(
            concurrency=parts[0].concurrency,
            requests=requests,
            seconds=sum(p.seconds for p in parts),
            latencies_ms=[x for p in parts for x in p.latencies_ms],
            ok=sum(p.ok for p in parts),
            errors=sum(p.errors for p in parts),
            rejected_429=sum(p.rejected_429 for p in parts),
            statuses=statuses,
            error_samples=[x for p in parts for x in p.error_samples][:5],
            client_cpu_ms_per_request=sum(p.client_cpu_ms_per_request * p.requests for p in parts)
            / requests,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "qps": round(self.qps, 2),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
            "ok": self.ok,
            "errors": self.errors,
            "rejected_429": self.rejected_429,
            "statuses": dict(self.statuses),
            "client_cpu_ms_per_request": round(self.client_cpu_ms_per_request, 3),
        }


def encode_bodies(payloads: Sequence[Any]) -> list[bytes]:
    """JSON-serialise request bodies once, so the clock measures the server, not json."""
    return [json.dumps(p, separators=(",", ":")).encode() for p in payloads]


IDLE_RECONNECT_S = 4.0  # uvicorn closes keep-alive connections idle for 5 s


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on one asyncio connection (loopback benchmarks).

    httpx costs ~1.5-2 ms of CPU per request, which on a 2-core machine shared with the
    server is load taken away from the server; this costs a fraction of that. It speaks just
    enough HTTP for JSON APIs: Content-Length or chunked bodies, reconnect on close.
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        parsed = urlsplit(base_url)
        if parsed.scheme != "http":
            raise ValueError("RawClient speaks plain http only")
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return await asyncio.wait_for(self._request(method, path, body), self.timeout)

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is not None and time.monotonic() - self._last_used > IDLE_RECONNECT_S:
            await self.aclose()  # the server may be closing an idle keep-alive connection now
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                content = await self._reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                content = await self._read_chunked()
            else:  # body delimited by connection close
                content = await self._reader.read()
                headers["connection"] = "close"
        except BaseException:
            await self.aclose()  # never reuse a connection left mid-response
            raise
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        self._last_used = time.monotonic()
        return status, content

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")  # trailer end (no trailers expected)
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class HttpxClient:
    """The same interface over `httpx.AsyncClient` with one connection (for comparison)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"content-type": "application/json"},
            trust_env=False,  # loopback only: never route through a proxy from the environment
        )

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = await self._client.request(method, path, content=body or None)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}
# What a failed request can raise: refused/reset connections, timeouts, broken responses.
_FAILURES = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,
    IndexError,
    httpx.HTTPError,
)


async def run_load(
    base_url: str,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    requests: int,
    *,
    timeout: float = 120.0,
    on_response: OnResponse | None = None,
    max_error_samples: int = 5,
    connect_path: str = "/healthz",
    client: str = "raw",
) -> LoadResult:
    """Send `requests` POSTs of `bodies[i % len(bodies)]` with `concurrency` workers.

    `client`: "raw" (default, cheap asyncio HTTP/1.1) or "httpx"; each worker owns one.
    """
    if not bodies:
        raise ValueError("no request bodies")
    if concurrency < 1 or requests < 1:
        raise ValueError("concurrency and requests must be >= 1")
    clients = [CLIENTS[client](base_url, timeout) for _ in range(concurrency)]
    latencies: list[float | None] = [None] * requests
    statuses: Counter[str] = Counter()
    samples: list[str] = []
    next_index = 0

    async def worker(conn: RawClient | HttpxClient) -> None:
        nonlocal next_index
        while next_index < requests:
            i = next_index
            next_index += 1  # single event loop: no lock needed between awaits
            body = bodies[i % len(bodies)]
            started = time.perf_counter()
            try:
                status, content = await conn.request("POST", path, body)
                key = str(status)
            except _FAILURES as exc:
                content, key = repr(exc).encode(), type(exc).__name__
            latencies[i] = (time.perf_counter() - started) * 1000
            statuses[key] += 1
            if key.isdigit() and on_response is not None:
                on_response(int(key), content)
            if not key.startswith("2") and key != "429" and len(samples) < max_error_samples:
                samples.append(f"{key}: {content[:300].decode(errors='replace')}")

    try:
        # Open every connection before the clock starts (the TCP handshake is not load).
        await asyncio.gather(
            *(c.request("GET", connect_path) for c in clients), return_exceptions=True
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    done = [x for x in latencies if x is not None]
    ok = sum(n for k, n in statuses.items() if k.startswith("2"))
    rejected = statuses.get("429", 0)
    return LoadResult(
        concurrency=concurrency,
        requests=requests,
        seconds=wall,
        latencies_ms=done,
        ok=ok,
        errors=len(done) - ok - rejected,
        rejected_429=rejected,
        statuses=statuses,
        error_samples=samples,
        client_cpu_ms_per_request=cpu * 1000 / requests,
    )


async def warm_up(
    base_url: str, path: str, bodies: Sequence[bytes], n: int, concurrency: int = 4, **kwargs: Any
) -> LoadResult:
    """Unmeasured requests (adapters resident, caches warm); the caller may check errors."""
    return await run_load(base_url, path, bodies, concurrency, max(n, concurrency), **kwargs)
