"""Metadata filters: which documents a search may return, decided before its top k.

A filter is an object of conditions on top-level metadata fields, all of which must hold:
`{"year": {"gte": 2010}, "source": {"in": ["a", "b"]}, "lang": "en"}`. A bare value means
equality; an object takes `eq`, `in`, `gt`, `gte`, `lt` and `lte` (several are ANDed: a
range). Comparisons are typed as JSON is: a number matches numbers (2010 equals 2010.0, never
the string "2010" nor `true`), a string matches the same string, a boolean the same boolean.
Range bounds are numbers, or ISO 8601 dates and datetimes, which then compare as instants
with document values that parse as ISO dates (a date is its midnight, naive times are UTC).
A document whose field is missing, null, a list or an object matches no condition on it.

`MetadataFilter.matches` is the reference semantics: the in-memory index and the exact path
of the served index call it per document, and the fast columnar path
(`app/index/metadata_columns.py`) is checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

Op = Literal["eq", "in", "gt", "gte", "lt", "lte"]
RANGE_OPS: tuple[Op, ...] = ("gt", "gte", "lt", "lte")
OPS: tuple[Op, ...] = ("eq", "in", *RANGE_OPS)
MAX_FIELDS = 32  # fields per filter (each takes at most the six operators)
MAX_IN_VALUES = 1024
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    # eq: one scalar; in: a tuple of scalars; a range op: a float, a number or an instant
    # (seconds since the epoch) as `instant` says.
    value: Any
    instant: bool = False  # a range bound given as an ISO date

    def holds(self, value: Any) -> bool:
        if self.op == "eq":
            return same(value, self.value)
        if self.op == "in":
            return any(same(value, option) for option in self.value)
        left = as_instant(value) if self.instant else as_number(value)
        if left is None:
            return False
        return compare(self.op, left, self.value)


@dataclass(frozen=True, eq=False)
class MetadataFilter:
    """Conditions that all hold (hashable: searches that share a filter share a search).
    Equal only when typed alike: Python's `True == 1.0` must not merge `{"a": true}` with
    `{"a": 1}` into one search."""

    conditions: tuple[Condition, ...]

    def _key(self) -> tuple:
        return tuple((c.field, c.op, c.instant, _typed(c.value)) for c in self.conditions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataFilter) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return all(c.holds(metadata.get(c.field)) for c in self.conditions)

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> MetadataFilter:
        """A filter from its JSON form; ValueError in plain words for a malformed one."""
        if not isinstance(spec, Mapping):
            raise ValueError("filter must be an object of metadata fields and conditions")
        if len(spec) > MAX_FIELDS:
            raise ValueError(f"a filter names at most {MAX_FIELDS} fields")
        conditions: list[Condition] = []
        for field, wanted in spec.items():
            if not isinstance(field, str):
                raise ValueError("filter field names must be strings")
            if isinstance(wanted, Mapping):
                if not wanted:
                    raise ValueError(f"field {field!r}: give at least one of {_OPS_TEXT}")
                conditions.extend(_condition(field, op, value) for op, value in wanted.items())
            else:
                conditions.append(_condition(field, "eq", wanted))
        return cls(tuple(conditions))


_OPS_TEXT = ", ".join(OPS)


def _typed(value: Any) -> Any:
    """A value with its JSON type, for equality (a tuple of them for `in`)."""
    if isinstance(value, tuple):
        return tuple(_typed(v) for v in value)
    return (type(value).__name__, value)


def _condition(field: str, op: Any, value: Any) -> Condition:
    where = f"field {field!r}"
    if op not in OPS:
        raise ValueError(f"{where}: unknown operator {op!r} (use {_OPS_TEXT})")
    if op == "eq":
        return Condition(field, "eq", _scalar(value, where))
    if op == "in":
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"{where}: 'in' takes a non-empty list of values")
        if len(value) > MAX_IN_VALUES:
            raise ValueError(f"{where}: 'in' takes at most {MAX_IN_VALUES} values")
        return Condition(field, "in", tuple(_scalar(v, where) for v in value))
    if isinstance(value, str):
        instant = as_instant(value)
        if instant is None:
            raise ValueError(f"{where}: {op!r} takes a number or an ISO 8601 date, not {value!r}")
        return Condition(field, op, instant, instant=True)
    number = as_number(value)
    if number is None and isinstance(value, int) and not isinstance(value, bool):
        number = math.inf if value > 0 else -math.inf  # past float: a bound beyond any value
    if number is None:
        raise ValueError(f"{where}: {op!r} takes a number or an ISO 8601 date")
    return Condition(field, op, number)


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        number = as_number(value)  # numbers compare as floats, as the stored columns do
        if number is not None:
            return number
        if isinstance(value, int):
            return value  # past float's range: equals no stored number
    raise ValueError(f"{where}: values are strings, numbers or booleans (not {_kind(value)})")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def same(value: Any, wanted: Scalar) -> bool:
    """JSON equality of scalars: booleans are not numbers, numbers are not strings."""
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(wanted, str):
        return isinstance(value, str) and value == wanted
    number = as_number(value)
    return number is not None and number == wanted


def as_number(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (booleans, strings, NaN,
    infinities, integers past float's range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def as_instant(value: Any) -> float | None:
    """An ISO 8601 date or datetime string as seconds since the epoch (naive: UTC)."""
    if not isinstance(value, str) or not 4 <= len(value) <= 64 or not value[:4].isdigit():
        return None
    value = value.upper()  # RFC 3339 allows a lowercase "t" and "z"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def compare(op: Op, left: Any, right: float) -> Any:
    """`left op right`; `left` a float or a numpy array of them (NaN compares false)."""
    if op == "gt":
        return left > right
    if op == "gte":
        return left >= right
    if op == "lt":
        return left < right
    return left <= right
