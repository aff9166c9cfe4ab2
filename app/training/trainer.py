"""LoRA training of the query encoder against frozen, cached document embeddings.

Documents never pass through the model: their base embeddings are a constant matrix, so the
loss can score a query against the WHOLE corpus in one matrix product (every other document
is a negative), which is far harder than the in-batch negatives the prototype found too easy.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.core.ranking import per_query_ndcg
from app.encoder.base_model import BASE_MODEL_NAME, EMBEDDING_DIM
from app.training.examples import Example

Negatives = Literal["corpus", "in-batch", "hard"]


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "value")
    # Encoder layers that get LoRA (None = all). Top layers only (e.g. 4,5) let the serving
    # path start the expert pass from the routing pass's hidden states (RR_REUSE_LAYER).
    layers: tuple[int, ...] | None = None
    temperature: float = 0.05
    learning_rate: float = 2e-4
    batch_size: int = 16
    max_steps: int = 120
    warmup_fraction: float = 0.1
    eval_every: int = 20
    patience: int = 3  # evaluations without improvement before stopping
    negatives: Negatives = "corpus"
    hard_negatives: int = 30  # per query, mined with the base encoder ("hard" mode)
    held_out_fraction: float = 0.15
    max_seq_length: int = 256
    seed: int = 13

    def to_json(self) -> dict[str, Any]:
        layers = None if self.layers is None else list(self.layers)
        return {**asdict(self), "target_modules": list(self.target_modules), "layers": layers}


@dataclass
class Task:
    """One domain: examples to learn from, held-out examples to select on, its corpus."""

    name: str
    train: list[Example]
    held_out: list[Example]
    doc_matrix: np.ndarray  # (n_docs, dim) base-encoder document embeddings, unit rows


@dataclass
class TrainResult:
    adapter_config: bytes
    adapter_model: bytes
    best_step: int
    base_score: float  # held-out nDCG@10 at step 0 (the untrained adapter == base)
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _set_seeds(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _QueryModel:
    """base BertModel + one trainable LoRA adapter; encodes like LoraEncoder (mean pool)."""

    def __init__(self, config: TrainConfig, device: str) -> None:
        from peft import LoraConfig, get_peft_model

        from app.encoder.base_model import load_base_model, load_tokenizer

        self.device = device
        self.max_len = config.max_seq_length
        self.tokenizer = load_tokenizer()
        lora = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            layers_to_transform=None if config.layers is None else list(config.layers),
            bias="none",
        )
        self.model = get_peft_model(load_base_model(device), lora)

    def trainable(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward(self, texts: list[str]) -> Any:
        from app.encoder.base_model import mean_pool

        batch = self.tokenizer(
            texts, truncation=True, max_length=self.max_len, padding=True, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        self.model.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")  # less padding
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self.forward([texts[i] for i in rows]).cpu().numpy()
        return out

    def lora_state(self) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if "lora_" in k}

    def load_lora_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state, strict=False)

    def adapter_files(self) -> tuple[bytes, bytes]:
        """peft's standard files (keys `base_model.model.<module>.lora_A.weight`)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp)
            config = json.loads((Path(tmp) / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = BASE_MODEL_NAME
            # peft keeps target_modules as a set: its order varies from process to process.
            if isinstance(config.get("target_modules"), list):
                config["target_modules"] = sorted(config["target_modules"])
            model_bytes = (Path(tmp) / "adapter_model.safetensors").read_bytes()
        return json.dumps(config, indent=2, sort_keys=True).encode(), model_bytes


def held_out_score(model: _QueryModel, tasks: list[Task]) -> float:
    """Macro-average over tasks of the mean held-out nDCG@10 (each task searches its corpus)."""
    scores = []
    for task in tasks:
        if task.held_out:
            embedded = model.encode([e.text for e in task.held_out])
            relevants = [e.positives for e in task.held_out]
            scores.append(float(per_query_ndcg(embedded, task.doc_matrix, relevants).mean()))
    return float(np.mean(scores)) if scores else 0.0


def _mine_hard(model: _QueryModel, task: Task, count: int) -> list[np.ndarray]:
    """Top-ranked non-relevant documents for each train query under the base encoder."""
    from app.core.ranking import top_k

    embedded = model.encode([e.text for e in task.train])
    rows, _ = top_k(embedded, task.doc_matrix, count + 20)
    return [
        np.array([r for r in ranked if int(r) not in e.positives][:count], dtype=np.int64)
        for ranked, e in zip(rows, task.train, strict=True)
    ]


def _batches(tasks: list[Task], batch_size: int, rng: np.random.Generator):
    """Endless stream of (task index, example indices); each batch comes from one task so its
    queries share one corpus of negatives. Tasks are visited in proportion to their size."""
    while True:
        epoch = []
        for t, task in enumerate(tasks):
            order = rng.permutation(len(task.train))
            epoch += [(t, order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        for i in rng.permutation(len(epoch)):
            yield epoch[int(i)]


def _multi_positive_loss(torch: Any, logits: Any, positive_mask: Any) -> Any:
    """-log of the softmax mass on the positives (all positives of a query count)."""
    all_mass = torch.logsumexp(logits, dim=1)
    pos_mass = torch.logsumexp(logits.masked_fill(~positive_mask, float("-inf")), dim=1)
    return (all_mass - pos_mass).mean()


def train_lora(
    tasks: list[Task], config: TrainConfig, device: str = "cpu", progress: bool = True
) -> TrainResult:
    """Train one adapter on `tasks`; keep the step with the best held-out nDCG@10.

    Step 0 (the untrained adapter, identical to base) is a candidate and may win.
    """
    import torch
    from tqdm import tqdm

    started = time.perf_counter()
    _set_seeds(config.seed)
    rng = np.random.default_rng(config.seed)
    model = _QueryModel(config, device)
    docs = [torch.from_numpy(np.ascontiguousarray(t.doc_matrix)).to(device) for t in tasks]
    hard = (
        [_mine_hard(model, t, config.hard_negatives) for t in tasks]
        if config.negatives == "hard"
        else None
    )

    best_score = base_score = held_out_score(model, tasks)
    best_state, best_step = model.lora_state(), 0
    history = [{"step": 0, "held_out_ndcg@10": round(base_score, 5)}]
    optimizer = torch.optim.AdamW(model.trainable(), lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, int(config.max_steps * config.warmup_fraction))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (config.max_steps - step) / max(1, config.max_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    stale = 0
    stream = _batches(tasks, config.batch_size, rng)
    bar = tqdm(range(1, config.max_steps + 1), disable=not progress, desc="train", unit="step")
    running = None
    for step in bar:
        t, rows = next(stream)
        examples = [tasks[t].train[i] for i in rows]
        candidates = _candidates(config, examples, rows, hard[t] if hard else None)
        model.model.train()
        queries = model.forward([e.text for e in examples])
        pool = docs[t] if candidates is None else docs[t][torch.from_numpy(candidates)]
        logits = queries @ pool.T / config.temperature
        mask = torch.from_numpy(_positive_mask(examples, candidates, docs[t].shape[0])).to(device)
        loss = _multi_positive_loss(torch, logits, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", best=f"{best_score:.3f}@{best_step}")
        if step % config.eval_every == 0 or step == config.max_steps:
            score = held_out_score(model, tasks)
            history.append(
                {"step": step, "loss": round(running, 5), "held_out_ndcg@10": round(score, 5)}
            )
            if score > best_score + 1e-6:
                best_score, best_state, best_step, stale = score, model.lora_state(), step, 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    bar.close()
    model.load_lora_state(copy.deepcopy(best_state))
    adapter_config, adapter_model = model.adapter_files()
    return TrainResult(
        adapter_config=adapter_config,
        adapter_model=adapter_model,
        best_step=best_step,
        base_score=base_score,
        best_score=best_score,
        history=history,
        seconds=time.perf_counter() - started,
    )


def _candidates(
    config: TrainConfig, examples: list[Example], rows: np.ndarray, hard: list[np.ndarray] | None
) -> np.ndarray | None:
    """Corpus rows scored for this batch; None means the whole corpus."""
    if config.negatives == "corpus":
        return None
    chosen = {r for e in examples for r in e.positives}
    if hard is not None:
        chosen |= {int(r) for i in rows for r in hard[int(i)]}
    return np.array(sorted(chosen), dtype=np.int64)


def _positive_mask(
    examples: list[Example], candidates: np.ndarray | None, n_docs: int
) -> np.ndarray:
    columns = np.arange(n_docs) if candidates is None else candidates
    index = {int(c): j for j, c in enumerate(columns)}
    mask = np.zeros((len(examples), len(columns)), dtype=bool)
    for i, e in enumerate(examples):
        for row in e.positives:
            if row in index:
                mask[i, index[row]] = True
    return mask
