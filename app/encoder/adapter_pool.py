"""A bounded LRU pool of LoRA experts loaded into one PeftModel, checked on load.

vLLM keeps its adapter manager apart from the forward pass; so does this: the pool loads,
validates and evicts adapters, and tells a listener (the encoder's one-pass LoRA bank) what
became resident or left. It is not thread-safe by itself: the encoder calls it under its lock.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from app.encoder.base import BASE, AdapterLocator, PoolStats
from app.errors import InvalidAdapter

_LAYER = re.compile(r"\.layer\.(\d+)\.")


class AdapterPool:
    def __init__(
        self,
        model: Any,
        locate: AdapterLocator,
        capacity: int,
        stats: PoolStats,
        on_load: Callable[[str], None],
        on_unload: Callable[[str], None],
    ) -> None:
        """`model`: the PeftModel; `on_load(name)` runs after an adapter applied (it may
        raise InvalidAdapter to refuse it), `on_unload(name)` before one leaves."""
        self.model = model
        self.capacity = capacity
        self.stats = stats
        self._locate = locate
        self._on_load = on_load
        self._on_unload = on_unload
        self._resident: OrderedDict[str, None] = OrderedDict()

    def resident(self) -> list[str]:
        """Resident experts, least recently used first."""
        return list(self._resident)

    def __contains__(self, name: str) -> bool:
        return name in self._resident

    def ensure(self, names: Sequence[str]) -> None:
        """Load missing adapters, evicting the least recently used ones not needed now."""
        wanted = [n for n in dict.fromkeys(names) if n != BASE]
        for name in wanted:
            if name in self._resident:
                self._resident.move_to_end(name)
                continue
            self.shrink(self.capacity - 1, keep=set(wanted))
            self._load(name)

    def adopt(self, name: str) -> None:
        """Make an adapter already added to the model resident (the self-checks' probe)."""
        self._on_load(name)
        self._resident[name] = None

    def unload(self, name: str) -> None:
        if name in self._resident:
            self._delete(name)
            del self._resident[name]

    def shrink(self, size: int, keep: set[str]) -> None:
        for victim in [n for n in self._resident if n not in keep]:
            if len(self._resident) <= size:
                break
            self._delete(victim)
            del self._resident[victim]
            self.stats.evictions += 1

    def layers_of(self, name: str) -> list[int]:
        """The encoder layers `name`'s LoRA modules sit in (loaded adapters only)."""
        return sorted(
            {
                int(m.group(1))
                for path, module in self.model.named_modules()
                if name in getattr(module, "lora_A", {}) and (m := _LAYER.search(path))
            }
        )

    def lora_bytes(self, name: str) -> int:
        return sum(
            p.numel() * p.element_size()
            for path, p in self.model.named_parameters()
            if f".{name}." in path
        )

    def _load(self, name: str) -> None:
        directory = self._locate(name)
        started = time.perf_counter()
        try:
            result = self.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:  # peft's errors vary
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            raise InvalidAdapter(f"adapter of expert {name!r} could not be loaded: {exc}") from exc
        missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k]
        applied = sum(1 for m in self.model.modules() if name in getattr(m, "lora_A", {}))
        if missing or applied == 0:
            # Never serve base-model vectors under an expert's name.
            self.model.delete_adapter(name)
            raise InvalidAdapter(f"adapter of expert {name!r} did not apply to the base model")
        self.model.eval()
        try:
            self._on_load(name)
        except Exception:
            self.model.delete_adapter(name)
            raise
        self._resident[name] = None
        self.stats.loads += 1
        self.stats.last_load_ms = (time.perf_counter() - started) * 1000

    def _delete(self, name: str) -> None:
        self._on_unload(name)
        self.model.delete_adapter(name)
