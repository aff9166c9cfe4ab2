"""Train one expert end to end: data -> LoRA -> held-out metrics -> `experts/<name>/`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.data.beir import load_corpus, load_qrels, load_queries
from app.training.examples import Example, from_qrels, self_supervised, split_held_out
from app.training.trainer import Task, TrainConfig, TrainResult, train_lora

if TYPE_CHECKING:
    from app.encoder.lora_encoder import LoraEncoder

log = logging.getLogger(__name__)


def base_encoder(max_seq_length: int = 256, device: str = "cpu") -> LoraEncoder:
    """A LoraEncoder with no experts (documents and router queries use the base model)."""
    from app.encoder.lora_encoder import LoraEncoder
    from app.errors import NotFound

    def no_adapters(name: str) -> Path:
        raise NotFound(f"no adapter {name!r} here")

    return LoraEncoder(no_adapters, device=device, max_seq_length=max_seq_length)


@dataclass
class ExpertData:
    task: Task
    qrels_examples: list[Example]  # the real train queries (pilots and thresholds use these)
    synthetic_count: int


def build_task(
    name: str,
    dataset_dir: Path,
    qrels_path: Path | None,
    use_self_supervised: bool,
    config: TrainConfig,
    encoder: LoraEncoder,
    cache_dir: Path,
    max_synthetic: int = 2000,
) -> ExpertData:
    """Held-out slice = real train queries when there are any, else synthetic pairs."""
    from app.data.doc_embeddings import document_embeddings

    doc_ids, doc_matrix = document_embeddings(dataset_dir, encoder, cache_dir)
    real: list[Example] = []
    if qrels_path is not None:
        real = from_qrels(load_queries(dataset_dir), load_qrels(qrels_path), doc_ids)
    train, held_out = split_held_out(real, config.held_out_fraction, salt=f"{name}:{config.seed}")
    synthetic: list[Example] = []
    if use_self_supervised:
        synthetic = self_supervised(load_corpus(dataset_dir), max_synthetic, config.seed)
        if not real:
            train, held_out = split_held_out(
                synthetic, config.held_out_fraction, salt=f"{name}:{config.seed}"
            )
            synthetic = []
    if not train:
        raise ValueError(f"{name}: no training examples (no qrels positives, no --self-supervised)")
    task = Task(name=name, train=train + synthetic, held_out=held_out, doc_matrix=doc_matrix)
    return ExpertData(task=task, qrels_examples=real, synthetic_count=len(synthetic))


def initial_pilots(
    encoder: LoraEncoder, examples: list[Example], aggregation: str = "mean"
) -> tuple[np.ndarray, float | None]:
    """Plain centroid of the train queries + calibrated fallback (build-pilots refines both)."""
    from app.core.router import Router
    from app.training.pilots import calibrate_threshold, centroid_pilots

    if not examples:
        return np.zeros((0, encoder.dim), np.float32), None
    embedded = encoder.encode([e.text for e in examples])
    pilots = centroid_pilots(embedded)
    own = Router({"x": pilots}, aggregation=aggregation).score(embedded)[:, 0]  # type: ignore[arg-type]
    return pilots, calibrate_threshold(own)


def _relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def result_metadata(
    config: TrainConfig,
    data: ExpertData,
    result: TrainResult,
    dataset_dir: Path,
    qrels: Path | None,
) -> dict[str, Any]:
    return {
        "dataset": dataset_dir.name,
        "train_qrels": _relative(qrels, dataset_dir),
        "training": config.to_json(),
        "examples": {
            "train": len(data.task.train),
            "held_out": len(data.task.held_out),
            "synthetic": data.synthetic_count,
        },
        "metrics": _metrics(result),
    }


def train_expert(
    name: str,
    dataset_dir: Path,
    qrels_path: Path | None,
    experts_dir: Path,
    cache_dir: Path,
    config: TrainConfig,
    use_self_supervised: bool = False,
    replace: bool = True,
    progress: bool = True,
    encoder: LoraEncoder | None = None,
) -> dict[str, Any]:
    """Train and write `experts_dir/name`; returns the metadata stored in expert.json."""
    from app.experts.artifacts import write_expert

    encoder = encoder or base_encoder(config.max_seq_length)
    data = build_task(
        name, dataset_dir, qrels_path, use_self_supervised, config, encoder, cache_dir
    )
    result = train_lora([data.task], config, progress=progress)
    pilots, threshold = initial_pilots(encoder, data.qrels_examples or data.task.train)
    extra = result_metadata(config, data, result, dataset_dir, qrels_path)
    write_expert(
        experts_dir,
        name,
        result.adapter_config,
        result.adapter_model,
        pilots,
        description=f"LoRA query expert for {dataset_dir.name}",
        fallback_threshold=threshold,
        extra=extra,
        replace=replace,
    )
    log.info(
        "%s: held-out nDCG@10 %.4f -> %.4f (step %d, %.0fs)",
        name,
        result.base_score,
        result.best_score,
        result.best_step,
        result.seconds,
    )
    return extra


def train_multitask(
    sets: list[tuple[str, Path, Path]],
    out_dir: Path,
    cache_dir: Path,
    config: TrainConfig,
    name: str = "multitask",
    progress: bool = True,
) -> dict[str, Any]:
    """The paper's Multi-Task baseline: one adapter on all domains' train queries mixed.

    `sets` holds (name, dataset dir, train qrels). Each batch comes from one domain so its
    negatives are that domain's corpus; held-out selection averages over domains.
    """
    from app.experts.artifacts import write_expert

    encoder = base_encoder(config.max_seq_length)
    parts = [build_task(n, d, q, False, config, encoder, cache_dir) for n, d, q in sets]
    result = train_lora([p.task for p in parts], config, progress=progress)
    extra = {
        "datasets": [n for n, _, _ in sets],
        "training": config.to_json(),
        "metrics": _metrics(result),
    }
    write_expert(
        out_dir,
        name,
        result.adapter_config,
        result.adapter_model,
        np.zeros((0, encoder.dim), np.float32),
        description="multi-task baseline",
        extra=extra,
        replace=True,
    )
    return extra


def _metrics(result) -> dict:  # noqa: ANN001 - a TrainResult
    """Training outcome as stored in expert.json."""
    return {
        "held_out_ndcg@10_base": round(result.base_score, 5),
        "held_out_ndcg@10_best": round(result.best_score, 5),
        "best_step": result.best_step,
        "train_seconds": round(result.seconds, 1),
        "history": result.history,
    }
