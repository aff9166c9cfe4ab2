"""Small typed records that cross from the index store to the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    index: str  # the expert whose index holds the document
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
