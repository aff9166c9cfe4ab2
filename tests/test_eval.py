"""`rr eval` end to end on a tiny synthetic benchmark: schema, settings, oracles, report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_training_data import write_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:unsafe cast:UserWarning"),  # numba, inside ranx
    pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaTypeSafetyWarning"),
]

DOMAINS = {
    "geo": ["volcano lava", "glacier ice", "earthquake fault", "river delta", "desert dune"],
    "music": ["violin concerto", "jazz trumpet", "piano sonata", "drum rhythm", "opera aria"],
    "food": ["bread yeast", "cheese aging", "spicy curry", "sushi rice", "chocolate cocoa"],
}


def make_benchmark(root: Path) -> Path:
    for name, topics in DOMAINS.items():
        docs = [
            (f"{name}{i}", topic, f"All about {topic}, a {name} subject.")
            for i, topic in enumerate(topics)
        ]
        queries = {
            f"{name}-q{i}-{s}": f"{word} {topic}"
            for i, topic in enumerate(topics)
            for s, word in enumerate(("what is", "explain"))
        }
        qrels = {
            split: [(f"{name}-q{i}-{s}", f"{name}{i}", 1) for i in range(len(topics))]
            for s, split in enumerate(("train", "test"))
        }
        write_dataset(root, name, docs, queries, qrels)
    spec = {
        "experts": {
            n: {"train": "qrels/train.tsv", "test": "qrels/test.tsv"} for n in ("geo", "music")
        },
        "zero_shot": {"food": {"test": "qrels/test.tsv"}},
    }
    (root / "benchmark.json").write_text(json.dumps(spec))
    return root / "benchmark.json"


def test_eval_writes_the_documented_schema(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    benchmark = make_benchmark(tmp_path / "data")
    experts, out, cache = tmp_path / "experts", tmp_path / "out", tmp_path / "cache"
    runner = CliRunner()
    common = [
        "--benchmark",
        str(benchmark),
        "--experts-dir",
        str(experts),
        "--cache-dir",
        str(cache),
    ]
    trained = runner.invoke(app, ["train-all", *common, "--max-steps", "2"])
    assert trained.exit_code == 0, trained.output
    report = tmp_path / "p.json"
    built = runner.invoke(app, ["build-pilots", *common[:4], "--report", str(report)])
    assert built.exit_code == 0, built.output
    # Pilot sets of TRAIN queries at the routing layer, compared on held-out train queries.
    spec = json.loads((experts / "geo" / "expert.json").read_text())
    assert spec["extra"]["pilots"]["layer"] == 4 and spec["pilot_count"] == 5
    rows = json.loads(report.read_text())["held_out_train_comparison"]
    assert {(r["layer"], r["rule"]) for r in rows} >= {(4, "learned"), (6, "centroid")}
    result = runner.invoke(
        app, ["eval", *common, "--out", str(out), "--multitask-dir", str(tmp_path / "none")]
    )
    assert result.exit_code == 0, result.output

    data = json.loads((out / "eval.json").read_text())
    assert set(data) >= {"ndcg@10", "recall@100", "routing"}
    assert set(data["ndcg@10"]) == {"geo", "music", "food"}
    methods = set(data["ndcg@10"]["geo"])
    assert {
        "bm25",
        "base",
        "expert:geo",
        "expert:music",
        "dataset_router",
        "router_mean",
        "router_max",
        "router_top2",
        "dataset_oracle",
        "instance_oracle",
    } <= methods
    assert "service:router_mean" in methods and "service:router_mean" not in data["ndcg@10"]["food"]
    # The served router (layer-4 features, learned rule) beside today's rule.
    assert {"router", "hybrid:router", "service:router", "service_hybrid:router"} <= methods
    assert {"router_centroid@L4", "router_learned@final"} <= methods
    assert set(data["routing_accuracy"]["router"]) == {"geo", "music", "food"}
    for dataset, row in data["ndcg@10"].items():
        assert row["instance_oracle"] >= row["dataset_oracle"] - 1e-9 >= row["base"] - 1e-6, dataset
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert sum(data["routing"]["geo"].values()) == 5
    assert set(data["averages"]["ndcg@10"]) == {"in_domain", "zero_shot"}
    assert (out / "eval.md").read_text().startswith("# Evaluation")
    assert (out / "ndcg_by_dataset.png").stat().st_size > 0
    assert (out / "routing_confusion.png").stat().st_size > 0
