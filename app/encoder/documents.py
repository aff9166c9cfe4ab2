"""How a document becomes encoder input: one rule for indexing, training and evaluation."""

from __future__ import annotations


def document_text(title: str | None, text: str | None) -> str:
    """BEIR convention: title and body joined by a space (either may be empty)."""
    return " ".join(part.strip() for part in (title or "", text or "") if part and part.strip())
