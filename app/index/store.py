"""All experts' indexes under `RR_INDEXES_DIR/<expert>/`, opened at start-up."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

from app.core.names import check_name
from app.errors import NotFound
from app.index.expert_index import DB_FILE, ExpertIndex
from app.shortcuts import Shortcuts


class IndexStore:
    def __init__(
        self,
        root: Path,
        dim: int,
        kind: str = "flat",
        hnsw_m: int = 32,
        shortcuts: Shortcuts | None = None,
    ) -> None:
        self.root = root
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
        self.dim = dim
        self.kind = kind
        self.hnsw_m = hnsw_m
        self._indexes: dict[str, ExpertIndex] = {}
        self._lock = threading.Lock()

    def open_existing(self) -> list[str]:
        """Open every persisted index (leftovers of interrupted deletes are removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".trash-"):
                shutil.rmtree(child, ignore_errors=True)
            elif child.is_dir() and (child / DB_FILE).exists():
                self.open(child.name)
        return self.names()

    def names(self) -> list[str]:
        return sorted(self._indexes)

    def __contains__(self, name: str) -> bool:
        return name in self._indexes

    def get(self, name: str) -> ExpertIndex:
        try:
            return self._indexes[name]
        except KeyError:
            raise NotFound(f"index {name!r} not found") from None

    def open(self, name: str) -> ExpertIndex:
        """The index of `name`, created empty if it does not exist yet."""
        check_name(name)
        with self._lock:
            if name not in self._indexes:
                self._indexes[name] = ExpertIndex(
                    name, self.root / name, self.dim, self.kind, self.hnsw_m, self.shortcuts
                )
            return self._indexes[name]

    def drop(self, name: str) -> None:
        """Close and delete an index and its documents (no-op if absent)."""
        with self._lock:
            index = self._indexes.pop(name, None)
        if index is not None:
            index.close()  # waits for a search holding the index lock to finish
        path = self.root / name
        if path.exists():
            trash = self.root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()
