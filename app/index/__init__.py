"""Per-expert vector indexes (FAISS) with an embedded document store (SQLite)."""

from app.core.documents import Document, Hit
from app.index.expert_index import ExpertIndex
from app.index.store import IndexStore

__all__ = ["Document", "ExpertIndex", "Hit", "IndexStore"]
