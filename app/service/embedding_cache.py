"""In-process LRU of query embeddings, keyed by (text, encoder version).

The encoder version is "base" or "<expert>@<adapter sha256>", so an expert re-added with new
weights can never be served an old vector; deleting an expert also drops its entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class EmbeddingCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str, version: str) -> np.ndarray | None:
        with self._lock:
            vector = self._items.get((text, version))
            if vector is None:
                self.misses += 1
                return None
            self._items.move_to_end((text, version))
            self.hits += 1
            return vector

    def put(self, text: str, version: str, vector: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[(text, version)] = vector
            self._items.move_to_end((text, version))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def drop_expert(self, name: str) -> None:
        prefix = f"{name}@"
        with self._lock:
            for key in [k for k in self._items if k[1].startswith(prefix)]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)
