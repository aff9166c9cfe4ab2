"""Text that can cross the wire: every string we accept, store or return must be UTF-8.

JSON allows lone UTF-16 surrogates (`"\\ud800"`); Python decodes them into a `str` that
cannot be encoded as UTF-8, so a tokenizer, SQLite or the JSON response fails on it later.
Such text is refused at the edge (`not_utf8`), and anything already stored is repaired on
the way out (`repaired`).
"""

from __future__ import annotations

import re
from typing import Any

# Text with something to search: a character outside Python's whitespace (str.isspace). The
# class is spelled out so the same pattern means the same in the OpenAPI schema (ECMA regex,
# whose \s differs) and in the service.
NOT_BLANK = "[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK)


def blank(text: str) -> bool:
    """Empty or whitespace only (the same test as the schema's NOT_BLANK pattern)."""
    return _NOT_BLANK.search(text) is None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_utf8(value: Any, where: str = "") -> str | None:
    """The path of the first string (key or value, at any depth) that is not valid UTF-8."""
    if isinstance(value, str):
        return None if _encodable(value) else (where or "text")
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and not _encodable(key):
                return f"{where}.<key>" if where else "<key>"
            if (found := not_utf8(item, path)) is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (found := not_utf8(item, f"{where}[{i}]")) is not None:
                return found
    return None


def repaired(value: Any) -> Any:
    """`value` with every string made valid UTF-8 (each lone surrogate becomes "?")."""
    if isinstance(value, str):
        return value if _encodable(value) else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {repaired(k): repaired(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [repaired(item) for item in value]
    return value
