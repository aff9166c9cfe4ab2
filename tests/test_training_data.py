"""BEIR loaders and training examples, on tiny hand-written files (no model)."""

from __future__ import annotations

import json
from pathlib import Path

from app.data.beir import load_benchmark, load_corpus, load_qrels, load_queries, positive_qrels
from app.training.examples import from_qrels, self_supervised, split_held_out


def write_dataset(
    root: Path,
    name: str,
    docs: list[tuple[str, str, str]],
    queries: dict[str, str],
    qrels: dict[str, list[tuple[str, str, int]]],
) -> Path:
    """A BEIR directory: docs (id, title, text), queries, qrels per split file name."""
    directory = root / name
    (directory / "qrels").mkdir(parents=True)
    with open(directory / "corpus.jsonl", "w") as handle:
        for doc_id, title, text in docs:
            handle.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(directory / "queries.jsonl", "w") as handle:
        for qid, text in queries.items():
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (directory / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def test_loaders_read_beir_layout(tmp_path: Path) -> None:
    directory = write_dataset(
        tmp_path,
        "toy",
        [("d1", "Title one", "body one"), ("d2", "", "body two")],
        {"q1": "first", "q2": "second"},
        {"train": [("q1", "d1", 2), ("q1", "d2", 0), ("q2", "d2", 0)]},
    )
    corpus = load_corpus(directory)
    assert corpus[1] == {"_id": "d2", "title": "", "text": "body two"}
    assert load_queries(directory) == {"q1": "first", "q2": "second"}
    qrels = load_qrels(directory / "qrels/train.tsv")
    assert qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 0}}
    # grade 0 is "judged not relevant": never a positive, and q2 has none left
    assert positive_qrels(qrels) == {"q1": {"d1": 2}}


def test_benchmark_resolves_sets_and_qrels(tmp_path: Path) -> None:
    spec = {
        "experts": {"a": {"train": "qrels/dev.tsv", "test": "qrels/test.tsv"}},
        "zero_shot": {"z": {"test": "qrels/test.tsv"}},
    }
    (tmp_path / "benchmark.json").write_text(json.dumps(spec))
    bench = load_benchmark(tmp_path / "benchmark.json")
    assert [s.name for s in bench.all_sets] == ["a", "z"]
    assert bench.experts[0].train_qrels == tmp_path / "a/qrels/dev.tsv"
    assert bench.zero_shot[0].train_qrels is None and not bench.zero_shot[0].has_expert


def test_examples_map_positives_to_corpus_rows() -> None:
    examples = from_qrels(
        {"q1": "x", "q2": "y", "q3": ""},
        {"q1": {"d2": 1, "missing": 1}, "q2": {"d1": 0}, "q3": {"d1": 1}},
        ["d1", "d2"],
    )
    assert [(e.query_id, e.positives) for e in examples] == [("q1", {1: 1})]


def test_held_out_split_is_deterministic_and_disjoint() -> None:
    examples = from_qrels(
        {f"q{i}": "t" for i in range(40)}, {f"q{i}": {"d": 1} for i in range(40)}, ["d"]
    )
    train, held = split_held_out(examples, 0.15, salt="s")
    again_train, again_held = split_held_out(list(reversed(examples)), 0.15, salt="s")
    assert {e.query_id for e in held} == {e.query_id for e in again_held}
    assert len(held) == 6 and not {e.query_id for e in train} & {e.query_id for e in held}


def test_self_supervised_pairs_come_from_the_corpus() -> None:
    corpus = [
        {
            "_id": f"d{i}",
            "title": f"a long enough title {i}",
            "text": " ".join(f"w{i}_{j}" for j in range(60)),
        }
        for i in range(5)
    ]
    pairs = self_supervised(corpus, max_pairs=100, seed=1)
    assert len(pairs) == 10  # one title pair and one span pair per document
    for pair in pairs:
        (row,) = pair.positives
        assert pair.text in corpus[row]["title"] + " " + corpus[row]["text"]
    assert pairs == self_supervised(corpus, max_pairs=100, seed=1)
