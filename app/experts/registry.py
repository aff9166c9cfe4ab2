"""Where experts live: their artifacts on local disk, the router built from their pilots,
and leases that let in-flight requests finish before a deleted expert's files go.

All membership changes and lease acquisitions happen under one lock, so a request that saw
an expert in the router snapshot can always lease it, and a delete waits for those leases.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np

from app.core.hybrid import QueryWeights, weights_lookup
from app.core.names import BASE_EXPERT, check_name
from app.core.router import Aggregation, Router, Rule, build_router
from app.errors import Conflict, NotFound
from app.experts.artifacts import (
    UNTUNED,
    Expert,
    adapter_locator,
    list_expert_dirs,
    read_expert,
    read_fusion_models,
    remove_expert,
    update_spec,
    write_expert,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


class ExpertRegistry:
    def __init__(
        self,
        experts_dir: Path,
        aggregation: Aggregation = "mean",
        threshold: float = 0.0,
        rule: Rule = "centroid",
        fallback_percentile: float | None = None,
        routing_layer: int | None = None,
    ) -> None:
        """`routing_layer`: experts whose pilots record another layer are not routed to
        (their pilots live in another space); None routes every expert."""
        self.experts_dir = experts_dir
        self.aggregation: Aggregation = aggregation
        self.threshold = threshold
        self.rule: Rule = rule
        self.fallback_percentile = fallback_percentile
        self.routing_layer = routing_layer
        self._experts: dict[str, Expert] = {}
        self._leases: Counter[str] = Counter()
        self._pending_removal: set[str] = set()
        self._lock = threading.Condition()
        self.router = Router({}, aggregation, threshold)
        self.fusion_models: tuple[QueryWeights, QueryWeights | None] = UNTUNED

    # -- reads ---------------------------------------------------------------------------

    def load_all(self) -> list[str]:
        with self._lock:
            self._experts = {p.name: read_expert(p) for p in list_expert_dirs(self.experts_dir)}
            self.fusion_models = read_fusion_models(self.experts_dir)
            self._rebuild_router()
            return self.names()

    def names(self) -> list[str]:
        return sorted(self._experts)

    def __contains__(self, name: str) -> bool:
        return name in self._experts

    def get(self, name: str) -> Expert:
        try:
            return self._experts[name]
        except KeyError:
            raise NotFound(f"expert {name!r} not found") from None

    def fusion_weights(self, encoder: str) -> QueryWeights:
        """Hybrid's dense weight for a query `encoder` embedded (`weights_lookup`)."""
        expert = self._experts.get(encoder)
        weight = None if expert is None else expert.spec.fusion_weight
        gated = () if expert is None or expert.spec.use_adapter else (encoder,)
        return weights_lookup({encoder: weight}, *self.fusion_models, gated=gated)(encoder)

    def set_fusion_weight(self, name: str, weight: float | None) -> Expert:
        """Set (None: clear) an expert's hybrid dense weight, persisted in its expert.json."""
        with self._lock:
            expert = update_spec(self.get(name), fusion_weight=weight)
            self._experts[name] = expert
            return expert

    def adapter_dir(self, name: str) -> Path:
        """Directory of an expert's adapter; the encoder's AdapterLocator."""
        return adapter_locator({name: self.get(name).path})(name)

    def routable(self, expert: Expert) -> bool:
        """Its pilots live at the routing layer (or record none: taken as that layer)."""
        layer = (expert.spec.extra.get("pilots") or {}).get("layer")
        return self.routing_layer is None or layer is None or layer == self.routing_layer

    def _rebuild_router(self) -> None:
        experts = [e for e in self._experts.values() if len(e.pilots)]
        for expert in experts:
            if not self.routable(expert):
                log.warning(
                    "expert %s is not routed to: its pilots are routing features of layer %s, "
                    "the router reads layer %s (rebuild them: rr build-pilots)",
                    expert.name,
                    expert.spec.extra["pilots"]["layer"],
                    self.routing_layer,
                )
        experts = [e for e in experts if self.routable(e)]
        self.router = build_router(
            {e.name: e.pilots for e in experts},
            {e.name: e.spec.fallback_threshold for e in experts},
            self.rule,
            self.aggregation,
            self.threshold,
            self.fallback_percentile,
        )

    # -- leases --------------------------------------------------------------------------

    @contextmanager
    def routed_lease(self, route: Callable[[Router], tuple[T, Iterable[str]]]) -> Iterator[T]:
        """Route against the current router and lease the experts it chose, atomically:
        a concurrent delete can neither slip in between nor pull an expert from under us."""
        decided, leased, _ = self.route_and_lease(route)
        try:
            yield decided
        finally:
            self.release(leased)

    def route_and_lease(
        self, route: Callable[[Router], tuple[T, Iterable[str]]]
    ) -> tuple[T, list[str], dict[str, str | None]]:
        """`routed_lease` for callers whose lease outlives a block (a routed pass decides
        on a model worker's thread): returns (decision, leased names, their adapters'
        sha256 as leased: a delete may drop the name before the lease ends); `release`
        the names."""
        with self._lock:
            decided, names = route(self.router)
            wanted = [n for n in set(names) if n != BASE_EXPERT]
            for name in wanted:  # routed experts always are; a named one may be gone
                if name not in self._experts:
                    raise NotFound(f"expert {name!r} not found")
            self._leases.update(wanted)
            versions: dict[str, str | None] = {
                n: self._experts[n].spec.adapter_sha256 for n in wanted
            }
        return decided, wanted, versions

    def release(self, names: Iterable[str]) -> None:
        with self._lock:
            self._leases.subtract(names)
            self._lock.notify_all()

    def lease(self, names: Iterable[str]) -> AbstractContextManager[None]:
        """Hold experts for the span of a request; NotFound if one is gone already."""
        return self.routed_lease(lambda _router: (None, names))

    # -- changes -------------------------------------------------------------------------

    def add(
        self,
        name: str,
        adapter_config: bytes,
        adapter_model: bytes,
        pilots: np.ndarray,
        description: str = "",
        fallback_threshold: float | None = None,
        extra: dict | None = None,
    ) -> Expert:
        check_name(name)
        with self._lock:
            if name in self._experts or name in self._pending_removal:
                raise Conflict(f"expert {name!r} already exists")
            self._pending_removal.add(name)  # reserve the name while files are written
        try:
            expert = write_expert(
                self.experts_dir,
                name,
                adapter_config,
                adapter_model,
                pilots,
                description,
                fallback_threshold,
                extra,
            )
        except FileExistsError:
            raise Conflict(f"expert {name!r} already exists") from None
        finally:
            with self._lock:
                self._pending_removal.discard(name)
        with self._lock:
            self._experts[name] = expert
            self._rebuild_router()
        return expert

    def remove(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop routing to `name`, wait for its in-flight requests, then delete its files."""
        with self._lock:
            if name not in self._experts:
                raise NotFound(f"expert {name!r} not found")
            del self._experts[name]
            self._pending_removal.add(name)
            self._rebuild_router()
            deadline = time.monotonic() + timeout_s
            while self._leases[name] > 0 and time.monotonic() < deadline:
                self._lock.wait(timeout=0.05)
        try:
            remove_expert(self.experts_dir, name)
        finally:
            with self._lock:
                self._pending_removal.discard(name)
