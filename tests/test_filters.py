"""Metadata filters: the reference semantics (`MetadataFilter.matches`), plain errors, and
the columnar fast path agreeing with the reference on random metadata."""

from __future__ import annotations

import json
import random
import sqlite3

import numpy as np
import pytest

from app.core.filters import MAX_FIELDS, MAX_IN_VALUES, MetadataFilter
from app.index import metadata_columns


def _matches(spec: dict, metadata: dict) -> bool:
    return MetadataFilter.parse(spec).matches(metadata)


def test_equality_is_typed_as_json() -> None:
    assert _matches({"lang": "en"}, {"lang": "en"})
    assert not _matches({"lang": "en"}, {"lang": "EN"})
    assert _matches({"year": 2010}, {"year": 2010.0})
    assert not _matches({"year": 2010}, {"year": "2010"})
    assert not _matches({"flag": 1}, {"flag": True})  # a boolean is no number
    assert not _matches({"flag": True}, {"flag": 1})
    assert _matches({"flag": True}, {"flag": True})
    assert _matches({"lang": {"eq": "en"}}, {"lang": "en"})
    # Missing, null, lists and objects match no condition.
    for value in (None, ["en"], {"x": "en"}):
        assert not _matches({"lang": "en"}, {"lang": value})
    assert not _matches({"lang": "en"}, {})


def test_in_and_ranges_on_numbers_and_dates() -> None:
    assert _matches({"source": {"in": ["a", "b"]}}, {"source": "b"})
    assert not _matches({"source": {"in": ["a", "b"]}}, {"source": "c"})
    assert _matches({"year": {"gte": 2010, "lt": 2020}}, {"year": 2010})
    assert not _matches({"year": {"gte": 2010, "lt": 2020}}, {"year": 2020})
    assert not _matches({"year": {"gt": 2010}}, {"year": "2011"})  # strings are no numbers
    day = {"published": "2021-03-04"}
    assert _matches({"published": {"gte": "2021-03-04"}}, day)
    assert _matches({"published": {"lt": "2021-03-04T00:00:01Z"}}, day)
    assert not _matches({"published": {"gt": "2021-03-04T00:00:00+00:00"}}, day)
    # An offset is honoured: 01:00+02:00 is 23:00 UTC the day before.
    east = {"published": "2021-03-04T01:00:00+02:00"}
    assert _matches({"published": {"gt": "2021-03-03T22:59:00Z"}}, east)
    assert _matches({"published": {"lt": "2021-03-04t00:00:01z"}}, day)  # RFC 3339 lowercase
    assert not _matches({"published": {"gte": "2021-01-01"}}, {"published": "soon"})
    assert not _matches({"published": {"gte": "2021-01-01"}}, {"published": 2022})
    # Integers past float's range: bounds beyond every value, equal to none.
    assert _matches({"n": {"lt": 10**400}}, {"n": 1e308})
    assert not _matches({"n": {"gt": 10**400}}, {"n": 1e308})
    assert not _matches({"n": 10**400}, {"n": 10**400})
    assert MetadataFilter.parse({"a": 1}) == MetadataFilter.parse({"a": 1.0})  # one search


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"year": {"between": [1, 2]}}, "unknown operator 'between'"),
        ({"year": {}}, "give at least one of"),
        ({"year": {"gte": "last year"}}, "takes a number or an ISO 8601 date"),
        ({"year": {"gte": True}}, "takes a number or an ISO 8601 date"),
        ({"year": {"gte": None}}, "takes a number or an ISO 8601 date"),
        ({"source": {"in": []}}, "'in' takes a non-empty list"),
        ({"source": {"in": "a"}}, "'in' takes a non-empty list"),
        ({"source": {"in": list(range(MAX_IN_VALUES + 1))}}, f"at most {MAX_IN_VALUES}"),
        ({"source": None}, "not null"),
        ({"source": ["a"]}, "not a list"),
        ({"source": {"eq": {"a": 1}}}, "not an object"),
        ({f"f{i}": 1 for i in range(MAX_FIELDS + 1)}, f"at most {MAX_FIELDS} fields"),
    ],
)
def test_malformed_filters_say_what_is_wrong(spec: dict, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        MetadataFilter.parse(spec)
    assert words in str(caught.value)


def _store(metadata: list[dict]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE docs (id TEXT, metadata TEXT)")
    db.executemany(
        "INSERT INTO docs VALUES (?, ?)", [(str(i), json.dumps(m)) for i, m in enumerate(metadata)]
    )
    return db


def _random_value(rng: random.Random) -> object:
    return rng.choice(
        [
            rng.randint(1990, 2030),
            rng.randint(1990, 2030) + 0.5,
            str(rng.randint(1990, 2030)),
            rng.choice(["a", "b", "c", "en", "de"]),
            rng.choice([True, False]),
            f"20{rng.randint(10, 30)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            f"20{rng.randint(10, 30)}-01-01T0{rng.randint(0, 9)}:00:00+01:00",
            None,
            [1, 2],
            {"nested": 1},
        ]
    )


def _random_filter(rng: random.Random, fields: list[str]) -> dict:
    spec: dict = {}
    for name in rng.sample(fields, 1 if rng.random() < 0.75 else 2):
        kind = rng.choice(["bare", "eq", "in", "range", "date"])
        if kind == "bare":
            spec[name] = _random_value(rng) if rng.random() < 0.3 else rng.choice(["a", 2000, True])
        elif kind == "eq":
            spec[name] = {"eq": rng.choice(["en", 2010, 2010.5, False, "2010"])}
        elif kind == "in":
            spec[name] = {"in": rng.sample(["a", "b", 2001, 2002, True, "2001"], 3)}
        elif kind == "range":
            spec[name] = {"gte": rng.randint(1990, 2030), "lt": rng.randint(2000, 2040)}
        else:
            spec[name] = {"gt": f"20{rng.randint(10, 30)}-05-01", "lte": "2030-01-01T00:00:00Z"}
    try:
        MetadataFilter.parse(spec)
    except ValueError:
        return {"f0": "a"}  # a random bare value can be a list: not a filter
    return spec


def test_columns_agree_with_the_reference_on_random_metadata() -> None:
    rng = random.Random(7)
    fields = ["f0", "f1", "f2", "f3"]
    metadata = [
        {name: _random_value(rng) for name in fields if rng.random() < 0.8} for _ in range(600)
    ]
    metadata[5] = "not an object"  # type: ignore[call-overload]
    db = _store(metadata)
    columns = metadata_columns.build(db, generation=3)
    assert columns.generation == 3 and columns.complete
    selective = 0
    for _ in range(300):
        where = MetadataFilter.parse(_random_filter(rng, [*fields, "absent"]))
        mask = columns.mask(where)
        assert mask is not None
        expected = [isinstance(m, dict) and where.matches(m) for m in metadata]
        assert mask.tolist() == expected, where
        selective += 0 < sum(expected) < len(metadata)
    assert selective > 150  # most filters pick some documents, not none or all


def test_fields_past_the_column_limit_leave_the_answer_to_the_exact_path() -> None:
    many = {f"f{i}": i for i in range(metadata_columns.MAX_FIELDS + 1)}
    columns = metadata_columns.build(_store([many, {"f0": 1}]), generation=0)
    assert not columns.complete
    assert columns.mask(MetadataFilter.parse({"f0": 0})).tolist() == [True, False]
    last = f"f{metadata_columns.MAX_FIELDS}"
    assert columns.mask(MetadataFilter.parse({last: 1})) is None  # unknown: not "absent"


def test_the_self_check_refuses_columns_that_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = metadata_columns._Column._equals

    def off_by_one(self, wanted):  # a bug in the fast path: every match shifted one row
        return np.roll(wrong(self, wanted), 1)

    monkeypatch.setattr(metadata_columns._Column, "_equals", off_by_one)
    db = _store([{"lang": "en" if i % 3 else "de"} for i in range(50)])
    with pytest.raises(ValueError, match="disagree"):
        metadata_columns.build(db, generation=0)


def test_filters_equal_only_when_typed_alike() -> None:
    """Batched searches group by filter: {"a": true} and {"a": 1} must stay two searches."""
    pairs = [
        ({"a": True}, {"a": 1}),
        ({"a": False}, {"a": 0}),
        ({"a": {"in": [True]}}, {"a": {"in": [1]}}),
    ]
    for left, right in pairs:
        one, two = MetadataFilter.parse(left), MetadataFilter.parse(right)
        assert one != two and len({one, two}) == 2
    assert MetadataFilter.parse({"a": 1}) == MetadataFilter.parse({"a": 1.0})
    assert hash(MetadataFilter.parse({"a": "x"})) == hash(MetadataFilter.parse({"a": "x"}))
