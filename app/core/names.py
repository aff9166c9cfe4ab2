"""Expert names: safe as directory names and URL segments by construction."""

from __future__ import annotations

import re

from app.errors import InvalidInput

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NAME_WORDS = "1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)
BASE_EXPERT = "base"  # the plain base encoder: always available, no adapter, no index
AUTO = "auto"  # "let the router choose"
RESERVED = frozenset({BASE_EXPERT, AUTO})


def check_name(name: str) -> str:
    """Return `name` if it is a valid expert name; raise InvalidInput otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid expert name {name!r}: use 1-64 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name
