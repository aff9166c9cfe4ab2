"""Prometheus metrics: counters updated on the request path, gauges read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.service.stats import StatsService

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rr_http_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rr_http_request_seconds",
            "HTTP latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.searches = Counter(
            "rr_search_queries",
            "Queries searched, by the expert that encoded them",
            ["expert"],
            registry=self.registry,
        )
        self.search_latency = Histogram(
            "rr_search_seconds",
            "Search latency by routed expert",
            ["expert"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.routing = Counter(
            "rr_routing_decisions",
            "Routing decisions by chosen expert",
            ["expert"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "rr_routing_fallbacks",
            "Queries that fell back to the base encoder",
            registry=self.registry,
        )

    def observe_routing(self, decisions: Iterable[Any]) -> None:
        for decision in decisions:
            self.routing.labels(decision.expert).inc()
            if decision.fallback:
                self.fallbacks.inc()

    def observe_search(self, results: Iterable[Any], seconds: float) -> None:
        for result in results:
            self.searches.labels(result.routing.expert).inc()
            self.search_latency.labels(result.routing.expert).observe(seconds)

    def watch(self, stats: Callable[[], StatsService | None]) -> None:
        """Gauges and counters of the running service, read at each scrape."""
        self.registry.register(_StatsCollector(stats))


class _StatsCollector:
    def __init__(self, stats: Callable[[], StatsService | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Any]:
        service = self.stats()
        if service is None:  # still starting
            return
        snap = service.snapshot()
        pool = snap.pool
        yield CounterMetricFamily("rr_adapter_loads", "LoRA adapters loaded", value=pool.loads)
        yield CounterMetricFamily(
            "rr_adapter_evictions", "LoRA adapters evicted", value=pool.evictions
        )
        yield GaugeMetricFamily("rr_adapters_resident", "Adapters loaded", value=snap.resident)
        held = GaugeMetricFamily(
            "rr_expert_resident_bytes",
            "Memory a resident expert holds over all model workers (peft + one-pass tables)",
            labels=["expert"],
        )
        for name, size in sorted(snap.resident_bytes.items()):
            held.add_metric([name], size)
        yield held
        yield CounterMetricFamily(
            "rr_expert_rows_one_pass",
            "Expert rows served in one pass: base layers shared, per-row LoRA deltas above",
            value=pool.one_pass_rows,
        )
        yield CounterMetricFamily(
            "rr_expert_rows_exact",
            "Expert rows served by a full peft pass (LoRA below the routing layer, or the "
            "one-pass shortcut off)",
            value=pool.exact_rows,
        )
        off = GaugeMetricFamily(
            "rr_shortcut_degraded",
            "Shortcut switched off for this process (1): the exact path serves instead",
            labels=["shortcut"],
        )
        fallbacks = CounterMetricFamily(
            "rr_shortcut_fallbacks",
            "Times the exact path stood in for a shortcut that raised",
            labels=["shortcut"],
        )
        for name, count in snap.fallbacks.items():
            off.add_metric([name], float(name in snap.degraded))
            fallbacks.add_metric([name], count)
        yield off
        yield fallbacks
        depth = GaugeMetricFamily("rr_queue_depth", "Rows waiting per batcher", labels=["batcher"])
        batches = CounterMetricFamily("rr_batches", "Batches run per batcher", labels=["batcher"])
        for batcher in snap.batchers:
            depth.add_metric([batcher.name], batcher.pending)
            batches.add_metric([batcher.name], batcher.stats.batches)
        yield depth
        yield batches
        rejected = sum(b.stats.rejected for b in snap.batchers)
        yield CounterMetricFamily("rr_rejected", "Requests refused with 429", value=rejected)

        hits = CounterMetricFamily("rr_cache_hits", "Embedding cache hits", labels=["level"])
        misses = CounterMetricFamily("rr_cache_misses", "Embedding cache misses", labels=["level"])
        local, shared = snap.local_cache, snap.shared_cache
        hits.add_metric(["local"], local.hits)
        misses.add_metric(["local"], local.misses)
        if shared is not None:
            hits.add_metric(["shared"], shared.hits)
            misses.add_metric(["shared"], shared.misses)
        yield hits
        yield misses
        lookups = local.hits + local.misses
        ratio = (local.hits + (shared.hits if shared else 0)) / lookups if lookups else 0.0
        yield GaugeMetricFamily(
            "rr_cache_hit_ratio", "Share of lookups served from a cache", value=ratio
        )
        if shared is not None:
            yield CounterMetricFamily(
                "rr_shared_cache_bypassed",
                "Lookups that skipped Redis (unreachable)",
                value=snap.shared_cache_bypassed,
            )

        sizes = GaugeMetricFamily("rr_index_documents", "Documents per index", labels=["index"])
        for name, count in snap.index_documents.items():
            sizes.add_metric([name], count)
        yield sizes

        follower = snap.follower
        if follower is not None:
            yield GaugeMetricFamily(
                "rr_replication_lag_seconds",
                "Age of the last applied change when applied",
                value=follower.lag_s,
            )
            yield CounterMetricFamily(
                "rr_replication_applied", "Change-log entries applied", value=follower.applied
            )
            yield GaugeMetricFamily(
                "rr_replication_connected",
                "Change log reachable (1) or not (0)",
                value=float(follower.connected),
            )
            yield GaugeMetricFamily(
                "rr_replication_caught_up",
                "Caught up with the change log",
                value=float(follower.caught_up),
            )


class RequestMetrics:
    """ASGI middleware: count and time every request by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
