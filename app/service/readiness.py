"""Readiness: may a load balancer send this gateway traffic? (`/readyz`)

Read from live state only (index row counters, flags): it answers on the event loop at every
probe, so it never runs SQL or waits on an index lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.errors import NotFound
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.service.indexing_progress import IndexingProgress
from app.shortcuts import Shortcuts


@dataclass(frozen=True)
class Readiness:
    ready: bool
    body: dict[str, Any] = field(default_factory=dict)


class ReadinessService:
    def __init__(
        self,
        registry: ExpertRegistry,
        indexes: IndexStore,
        shortcuts: Shortcuts,
        caught_up: Callable[[], bool],  # the Redis change log replayed (always, without Redis)
        indexing: Callable[[], bool],  # first-start corpus indexing still running
        progress: IndexingProgress | None = None,
        precisions: Callable[[], dict[str, str]] = dict,  # what queries / documents run at
    ) -> None:
        self.registry = registry
        self.indexes = indexes
        self.shortcuts = shortcuts
        self.caught_up = caught_up
        self.indexing = indexing
        self.progress = progress if progress is not None else IndexingProgress()
        self.precisions = precisions

    def check(self) -> Readiness:
        """200 `ready`: fully indexed. 200 `serving`: first-start indexing is still filling
        some indexes, and searches say so per hit list; send traffic. 503: not yet."""
        unreadable = [n for n in self.indexes.names() if not self._readable(n)]
        missing = [n for n in self.registry.names() if n not in self.indexes]
        caught_up = self.caught_up()
        degraded = self.shortcuts.degraded  # shortcuts off: the exact path serves, still ready
        if unreadable or missing or not caught_up:
            body: dict[str, Any] = {
                "status": "degraded" if caught_up else "catching_up",
                "unreadable": unreadable,
                "missing": missing,
                "degraded": degraded,
            }
            return Readiness(False, body)
        body = {
            "status": "ready",
            "experts": len(self.registry.names()),
            "degraded": degraded,
            "precision": self.precisions(),
        }
        if self.indexing():
            body["status"] = "serving"
            body["indexing"] = {
                name: {"indexed": p.indexed, "total": p.total}
                for name, p in self.progress.snapshot().items()
            }
        return Readiness(True, body)

    def _readable(self, name: str) -> bool:
        try:
            return self.indexes.get(name).readable()
        except NotFound:  # dropped between listing and reading
            return True
