"""How far first-start indexing is, per expert: searches, `/v1/experts` and `/readyz` say so."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    indexed: int
    total: int


class IndexingProgress:
    """Which expert corpora the first start is still indexing, and how far each one is."""

    def __init__(self) -> None:
        self._progress: dict[str, Progress] = {}
        self._lock = threading.Lock()

    def plan(self, name: str, total: int) -> None:
        with self._lock:
            self._progress[name] = Progress(0, total)

    def advance(self, name: str, documents: int) -> None:
        with self._lock:
            current = self._progress[name]
            self._progress[name] = Progress(current.indexed + documents, current.total)

    def finish(self, name: str) -> None:
        with self._lock:
            self._progress.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._progress.clear()

    def filling(self, name: str) -> Progress | None:
        """How far `name`'s corpus is, while it is being indexed (else None)."""
        return self._progress.get(name)

    def snapshot(self) -> dict[str, Progress]:
        with self._lock:
            return dict(self._progress)
