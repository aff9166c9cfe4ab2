"""Shortcuts the service takes and the exact paths that stand in when one fails.

Each shortcut (the one-pass LoRA path, the plain base pass, in-memory BM25 postings and
metadata columns, the identity-expert skip, the embedding caches) has an exact path that
gives the same answer at full cost. A shortcut that fails its start-up self-check or raises
while serving is counted here; one-pass and the identity skip are then switched off for the
process (their failures are deterministic: they would fail again), a
cache error only turns that lookup into a miss. `/readyz` and `/metrics` report both.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

# Routed queries in one pass: the layers below the routing layer once, per-row LoRA deltas
# above it (the exact path: a full base pass to route, then peft's full expert pass).
ONE_PASS = "one_pass_lora"
PLAIN_BASE_PASS = "plain_base_pass"  # base passes on the model without LoRA wrappers
LEXICAL_POSTINGS = "lexical_postings"  # BM25 from in-memory postings instead of FTS5's walk
METADATA_COLUMNS = "metadata_columns"  # filters on in-memory columns instead of each row's JSON
IDENTITY_EXPERT_SKIP = "identity_expert_skip"
EMBEDDING_CACHE = "embedding_cache"
SHARED_EMBEDDING_CACHE = "shared_embedding_cache"
ALL = (
    ONE_PASS,
    PLAIN_BASE_PASS,
    LEXICAL_POSTINGS,
    METADATA_COLUMNS,
    IDENTITY_EXPERT_SKIP,
    EMBEDDING_CACHE,
    SHARED_EMBEDDING_CACHE,
)


class Shortcuts:
    """Thread-safe record of which shortcuts are off and how often the exact path stood in."""

    def __init__(self) -> None:
        self._off: dict[str, str] = {}
        self._fallbacks = dict.fromkeys(ALL, 0)
        self._lock = threading.Lock()

    def enabled(self, shortcut: str) -> bool:
        return shortcut not in self._off

    def switch_off(self, shortcut: str, reason: str) -> None:
        """Off for the rest of the process; one WARNING line the first time."""
        with self._lock:
            if shortcut in self._off:
                return
            self._off[shortcut] = reason
        log.warning("%s switched off, the exact path serves instead: %s", shortcut, reason)

    def failed(self, shortcut: str, exc: BaseException, switch_off: bool = True) -> None:
        """A shortcut raised while serving; the caller now takes the exact path."""
        with self._lock:
            self._fallbacks[shortcut] = self._fallbacks.get(shortcut, 0) + 1
        reason = f"{type(exc).__name__}: {exc}"
        if switch_off:
            self.switch_off(shortcut, reason)
        else:
            log.warning("%s failed, the exact path served instead: %s", shortcut, reason)

    @property
    def degraded(self) -> dict[str, str]:
        """Shortcuts switched off, with the reason."""
        with self._lock:
            return dict(self._off)

    @property
    def fallbacks(self) -> dict[str, int]:
        """How many times the exact path stood in for each shortcut."""
        with self._lock:
            return dict(self._fallbacks)
