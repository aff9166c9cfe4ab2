"""Hidden states of recent routing passes, kept so an expert pass can start mid-network.

An expert whose LoRA starts at layer L sees exactly the base model's input to layer L, so
its pass can resume from the routing (base) pass's hidden states instead of re-running the
lower layers. Shared by every encoder replica: the routing pass and the expert pass of one
query may run on different worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class HiddenStateCache:
    """Text -> unpadded (tokens, dim) hidden state at `layer`; LRU bounded in tokens.

    64k tokens x 384 floats is ~100 MB.
    """

    def __init__(self, layer: int, capacity_tokens: int = 65_536) -> None:
        self.layer = layer
        self.capacity_tokens = capacity_tokens
        self._states: OrderedDict[str, Any] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()
        self._readers: set[str] = set()  # experts whose LoRA starts at or above `layer`

    def note_expert(self, name: str, first_lora_layer: int) -> None:
        """Record where an expert's LoRA starts (on every load: weights may have changed)."""
        with self._lock:
            if first_lora_layer >= self.layer:
                self._readers.add(name)
            else:
                self._readers.discard(name)

    def forget_expert(self, name: str) -> None:
        with self._lock:
            self._readers.discard(name)

    def can_start_from(self, name: str) -> bool:
        return name in self._readers

    @property
    def wanted(self) -> bool:
        """Whether any known expert could resume from the states (else keep none)."""
        return bool(self._readers)

    def get(self, text: str) -> Any | None:
        with self._lock:
            state = self._states.get(text)
            if state is not None:
                self._states.move_to_end(text)
            return state

    def put(self, text: str, state: Any) -> None:
        with self._lock:
            previous = self._states.pop(text, None)
            if previous is not None:
                self._tokens -= len(previous)
            self._states[text] = state
            self._tokens += len(state)
            while self._tokens > self.capacity_tokens:
                _, dropped = self._states.popitem(last=False)
                self._tokens -= len(dropped)
