"""One `Settings` object for the whole service, read from `RR_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_datasets_dir() -> Path | None:
    candidate = Path("../shared/datasets")
    return candidate if candidate.is_dir() else None


class Settings(BaseSettings):
    """Service configuration. Every field maps to `RR_<FIELD>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="RR_", env_file=None, extra="ignore")

    experts_dir: Path = Path("experts")
    indexes_dir: Path = Path("indexes")
    datasets_dir: Path | None = Field(default_factory=_default_datasets_dir)
    cache_dir: Path = Path("cache")  # document-embedding cache shared with training
    # Index the benchmark's expert corpora on first start (experts with empty indexes).
    index_corpora_on_start: bool = True
    # No default on purpose: admin endpoints answer 503 until an operator sets a token.
    admin_token: SecretStr | None = None
    # Keys for the search API (every /v1 route), comma-separated, separate from the admin
    # token; each client sends one as `Authorization: Bearer <key>` (the OpenAI clients'
    # api_key). Unset: search is open, as before. /healthz, /readyz, /metrics stay open.
    api_keys: SecretStr | None = None
    # Browser origins allowed to call the API (CORS), comma-separated, e.g.
    # "https://search.example.com,http://localhost:3000"; "*" allows any. None by default:
    # browsers on other origins are refused, as before.
    cors_origins: str = ""
    # Test-only (`make soak`): SIGKILL the process after its Nth document write has landed,
    # before it answers (app/service/crash_point.py). Never set it in production.
    test_crash_after_writes: int | None = Field(default=None, ge=1)

    # `minilm`: the real encoder. `fake`: a deterministic stand-in with no model (tests, demos
    # of the API; app/encoder/fake.py), same contract.
    encoder_backend: Literal["minilm", "fake"] = "minilm"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_resident_experts: int = Field(default=16, ge=1)
    max_seq_length: int = Field(default=256, ge=8, le=512)
    encode_batch_size: int = Field(default=64, ge=1)
    # Queries. `auto`: where the hardware has bf16 dot products (CUDA, AVX512-BF16, AMX),
    # measured at start-up: bf16 autocast if it is faster than fp32 on a probe batch and
    # agrees with it (cosine >= 0.9999), else fp32; `/readyz` says which. Elsewhere fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Documents (indexing, uploads) only; queries keep `precision`. `auto`: bf16 autocast
    # where the hardware has bf16 dot products (CUDA, AVX512-BF16, AMX) and a start-up check
    # agrees with fp32 (cosine >= 0.9999), else fp32. Measured on the 2-core AVX512-BF16
    # machine: nDCG@10 within 0.0024 of fp32-embedded documents on every staged set.
    document_precision: Literal["auto", "fp32", "bf16"] = "auto"

    # Routing features are the pooled hidden states entering this layer: a routed query runs
    # the layers below it once, is routed, then continues with its expert in the same pass.
    # Experts whose LoRA changes a layer below it are served by a full second pass.
    # 0: the pooled token embeddings; 6 (MiniLM's layer count): the final embedding.
    routing_layer: int = Field(default=4, ge=0, le=6)

    # Micro-batching: rows per batched forward pass, how long the worker waits for more
    # work before running a partial batch, and the queue bound past which requests get 429.
    max_batch: int = Field(default=64, ge=1)
    # Model worker threads, each with its own encoder replica (0 = auto: one per CPU core,
    # at most 4; one on CUDA), and intra-op threads per worker (0 = auto: cores / workers).
    # Measured on the 2-core machine at batch 32: one worker with 1 thread 29 queries/s, with
    # 2 threads 47, two workers with 1 thread each 56.
    encoder_workers: int = Field(default=0, ge=0, le=64)
    torch_threads: int = Field(default=0, ge=0, le=256)
    max_wait_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    # While another encoder worker is busy, a worker that takes a batch waits up to this long
    # for it to fill (up to `max_batch` rows) instead of `max_wait_ms`: work queued behind a
    # busy worker would wait anyway, and a fuller batch costs less per row.
    # Unset: `max_wait_ms` applies either way.
    busy_wait_ms: float | None = Field(default=None, ge=0.0, le=1000.0)
    max_queue: int = Field(default=2048, ge=1)
    embedding_cache_size: int = Field(default=10_000, ge=0)

    # `learned`: a pilot vector and bias per expert fitted on every expert's pilot set (a
    # softmax regression, refitted on each expert change); `centroid`: similarity to the
    # pilots by `router_aggregation` (the paper's rule). Held-out TRAIN queries, layer 4:
    # own-expert accuracy 0.960 learned vs 0.846 centroid (app/core/router_fit.py).
    router_rule: Literal["learned", "centroid"] = "learned"
    # Experts without their own fallback threshold fall back below this percentile of their
    # own pilots' similarity to their centroid; unset (the default): below
    # RR_ROUTER_FALLBACK_THRESHOLD. Measured on held-out TRAIN queries at layer 4 with the
    # learned rule: even percentile 0 sent 2.6% of in-domain queries to the fallback
    # (own-expert accuracy 0.960 -> 0.946), and in the service setting a fallback is no hit.
    router_fallback_percentile: float | None = Field(default=None, ge=0.0, le=100.0)
    router_aggregation: Literal["mean", "max"] = "mean"
    # Below this cosine similarity to the best expert's pilots the query falls back to the
    # base encoder and is searched across all indexes. Experts may carry their own
    # calibrated threshold in expert.json, which takes precedence.
    router_fallback_threshold: float = Field(default=0.0, ge=-1.0, le=1.0)

    index_kind: Literal["flat", "hnsw"] = "flat"
    # OpenMP threads per FAISS search (0 = auto: a quarter of the cores, at least one).
    faiss_threads: int = Field(default=0, ge=0, le=256)
    hnsw_m: int = Field(default=32, ge=4)

    # A guard against huge inputs, not a length limit: every text is cut at max_seq_length
    # tokens as it is encoded (unless a request says truncate: false), and real chunks
    # (LangChain's splitters: 1,000-4,000 characters) are far below it.
    max_query_chars: int = Field(default=100_000, ge=1)
    # Inputs per /v1/embeddings or batch-search request: OpenAI's own limit, so clients that
    # batch as they do for OpenAI (langchain: 1,000) work. Rows are encoded in buckets of
    # RR_ENCODE_BATCH_SIZE, so memory grows with the bucket, not the request.
    max_batch_queries: int = Field(default=2048, ge=1)
    max_k: int = Field(default=1000, ge=1)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # Shared state across gateways (registry, change log, cache). Unset: embedded, one machine.
    redis_url: str | None = None
    redis_timeout_s: float = Field(default=1.0, gt=0)
    redis_cache_ttl_s: int = Field(default=86_400, ge=1)

    @property
    def api_key_list(self) -> list[bytes]:
        raw = self.api_keys.get_secret_value() if self.api_keys is not None else ""
        return [key.strip().encode() for key in raw.split(",") if key.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
