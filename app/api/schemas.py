"""Request and response bodies of the public API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from app.core.filters import MAX_FIELDS, MAX_IN_VALUES, OPS, RANGE_OPS, MetadataFilter
from app.core.names import NAME_PATTERN
from app.core.text import NOT_BLANK, blank, not_utf8
from app.encoder.base_model import BASE_MODEL_NAME, EMBEDDING_DIM
from app.settings import Settings

# What the schema states is what the service enforces; limits that are settings show their
# defaults (RR_MAX_QUERY_CHARS, RR_MAX_BATCH_QUERIES), the service checks the configured ones.
_DEFAULTS = Settings.model_fields
MAX_QUERY_CHARS = _DEFAULTS["max_query_chars"].default
MAX_BATCH = _DEFAULTS["max_batch_queries"].default
MAX_K = _DEFAULTS["max_k"].default
EXPERT_OR_MODE = r"^(auto|base|[a-z0-9][a-z0-9_-]{0,63})$"
# JSON integers only (1.0 is one, true and "1" are not): strict ints, integral floats allowed.
Integer = Annotated[
    int, BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)
]
ExpertName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="Expert name.")]
DocumentId = Annotated[
    str, PathParam(min_length=1, max_length=512, description="Document id (as upserted).")
]
QueryText = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK)]


def _valid_filter(spec: dict[str, Any]) -> dict[str, Any]:
    MetadataFilter.parse(spec)  # ValueError in plain words: a 422 naming the field
    return spec


_SCALAR_SCHEMA: list[dict[str, Any]] = [
    {"type": "string"},
    {"type": "number"},
    {"type": "boolean"},
]
_BOUND_SCHEMA = {
    "anyOf": [
        {"type": "number"},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
    ]
}
_CONDITION_SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "eq": {"anyOf": _SCALAR_SCHEMA},
        "in": {
            "type": "array",
            "items": {"anyOf": _SCALAR_SCHEMA},
            "minItems": 1,
            "maxItems": MAX_IN_VALUES,
        },
        **{op: _BOUND_SCHEMA for op in RANGE_OPS},
    },
}
assert set(_CONDITION_SCHEMA["properties"]) == set(OPS)  # type: ignore[call-overload]
MetadataFilterIn = Annotated[
    dict[str, Any],
    AfterValidator(_valid_filter),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_FIELDS,
            "additionalProperties": {"anyOf": [*_SCALAR_SCHEMA, _CONDITION_SCHEMA]},
            "description": "Conditions on metadata fields, all of which must hold, applied "
            "before the top k: a bare value is equality; an object takes eq, in (a list), "
            "gt, gte, lt, lte (numbers, or ISO 8601 dates against date strings). Example: "
            '{"year": {"gte": 2010}, "source": {"in": ["a", "b"]}, "lang": "en"}.',
        }
    ),
]


class _Strict(BaseModel):
    # A typo'd option is an error, not ignored; JSON types as declared (`k: true` is no int).
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="after")
    def _utf8_only(self) -> _Strict:
        """Lone UTF-16 surrogates are valid JSON but not text: refused here (422), at any
        depth, before anything tokenizes, stores or echoes them."""
        where = not_utf8(self.model_dump())
        if where is not None:
            raise ValueError(f"{where}: not valid UTF-8 text (a lone surrogate?)")
        return self


class SearchOptionsIn(_Strict):
    k: Integer = Field(
        10, ge=1, le=MAX_K, description="Hits to return (1..RR_MAX_K, default limit 1000)."
    )
    expert: str = Field(
        "auto", pattern=EXPERT_OR_MODE, description='"auto" (route), "base", or an expert name.'
    )
    index: str | None = Field(
        None, pattern=NAME_PATTERN, description="Pin the index searched (default: the expert's)."
    )
    top_experts: Integer = Field(
        1, ge=1, le=8, description="Search the n best routed experts, fused."
    )
    include_text: bool = True
    mode: Literal["hybrid", "dense", "lexical"] = Field(
        "hybrid",
        description='"hybrid" (default): dense and BM25 lists fused; "dense": embeddings only; '
        '"lexical": BM25 only (no expert pass).',
    )
    truncate: bool = Field(
        True,
        description="Queries longer than the model's token limit (RR_MAX_SEQ_LENGTH, 256) "
        "are cut there (the default); false: refused with 422 instead.",
    )
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description='How hybrid fuses its two lists: "convex" (min-max normalised scores, '
        'weighted by the expert\'s learned dense weight) or "rrf" (reciprocal rank).',
    )
    filter: MetadataFilterIn | None = None

    def where(self) -> MetadataFilter | None:
        """The filter, parsed (validated already: this cannot fail)."""
        return None if not self.filter else MetadataFilter.parse(self.filter)


class SearchRequest(SearchOptionsIn):
    query: QueryText


class BatchSearchRequest(SearchOptionsIn):
    queries: list[QueryText] = Field(min_length=1, max_length=MAX_BATCH)


class HitOut(BaseModel):
    id: str
    score: float
    expert: str = Field(
        description="Expert whose encoder embedded the query for this hit (the base "
        "encoder's vectors where that expert's use_adapter is false)."
    )
    index: str = Field(description="Index (collection) that holds the document.")
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    dense_score: float | None = Field(
        None, description="Cosine of the dense leg (absent: not in the dense candidates)."
    )
    lexical_score: float | None = Field(
        None, description="BM25 of the lexical leg (absent: not in the lexical candidates)."
    )


class RoutingOut(BaseModel):
    expert: str
    scores: dict[str, float]
    fallback: bool
    threshold: float | None = Field(
        None, description="The best expert's fallback threshold: below it, the base encoder."
    )
    passed_over: list[str] | None = Field(
        None,
        description="Experts that scored higher but were not chosen because their index "
        "holds no documents (absent: none).",
    )
    note: str | None = Field(
        None, description="What routing did about empty indexes, in words (absent: nothing)."
    )


class IndexingOut(BaseModel):
    indexed: int = Field(description="Documents of the corpus indexed so far.")
    total: int


class SearchResponse(BaseModel):
    hits: list[HitOut]
    routing: RoutingOut
    timing_ms: dict[str, float]
    indexing: dict[str, IndexingOut] | None = Field(
        None,
        description="Present while first-start indexing still fills an index this search "
        "read: hits from it may be missing. Keyed by index.",
    )


class RouteRequest(_Strict):
    query: QueryText


# ECMA-safe (the OpenAPI schema's dialect): "-" outside a class may not be escaped there.
MODEL_PATTERN = rf"^(auto|base|[a-z0-9][a-z0-9_-]{{0,63}}|{BASE_MODEL_NAME.replace('-', '[-]')})$"
TOKEN_IDS_REFUSED = (
    "input must be text: token-id arrays are not accepted (this server tokenizes with its own "
    "model's tokenizer). Send the strings; with LangChain, set "
    "OpenAIEmbeddings(check_embedding_ctx_length=False)"
)


def _is_token_ids(value: Any) -> bool:
    """OpenAI's pre-tokenized input: a list of ints, or a list of such lists."""
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return True
    return all(isinstance(v, list) and v and _is_token_ids(v) for v in value)


class EmbeddingsRequest(_Strict):
    input: QueryText | Annotated[list[QueryText], Field(min_length=1, max_length=MAX_BATCH)]
    model: str = Field(
        "auto",
        pattern=MODEL_PATTERN,
        description='"auto" (route each input), "base", an expert (`GET /v1/models` lists '
        f'them), or "{BASE_MODEL_NAME}" (the base model by its id).',
    )
    encoding_format: Literal["float", "base64"] = "float"
    truncate: bool = Field(
        True,
        description="Inputs longer than the model's token limit (RR_MAX_SEQ_LENGTH, 256) are "
        "cut there (the default, as OpenAI-style clients expect); false: refused with 422.",
    )
    dimensions: Integer | None = Field(
        None,
        description=f"Accepted only as {EMBEDDING_DIM}, the model's native size (or omitted): "
        "MiniLM was not trained for shortened vectors.",
        # In the schema as bounds (they apply to the integer); the check below says why.
        json_schema_extra={"minimum": EMBEDDING_DIM, "maximum": EMBEDDING_DIM},
    )
    user: str | None = None  # accepted for OpenAI compatibility; unused

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and _is_token_ids(data.get("input")):
            raise ValueError(TOKEN_IDS_REFUSED)
        return data

    @model_validator(mode="after")
    def _native_dimensions(self) -> EmbeddingsRequest:
        if self.dimensions is not None and self.dimensions != EMBEDDING_DIM:
            raise ValueError(
                f"dimensions: this model's vectors have {EMBEDDING_DIM} dimensions and it was "
                f"not trained for shorter ones (truncated vectors would lose quality): omit "
                f"dimensions or set it to {EMBEDDING_DIM}"
            )
        return self

    @property
    def model_name(self) -> str:
        """`model` with the base model's id read as "base"."""
        return "base" if self.model == BASE_MODEL_NAME else self.model


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    expert: str = Field(description="Expert that embedded this input (base on fallback).")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: Usage


class ModelOut(BaseModel):
    """One entry of `GET /v1/models`, OpenAI's shape."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the expert was created (0: built in).")
    owned_by: str
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ExpertOut(BaseModel):
    name: str
    description: str
    base_model: str
    created: str | None
    pilot_count: int
    adapter_sha256: str | None
    fallback_threshold: float | None
    fusion_weight: float | None = Field(
        None,
        description="Hybrid search's dense weight for queries this expert embeds; null: "
        "chosen per query by the fallback model.",
    )
    use_adapter: bool = Field(
        True,
        description="false: queries routed to this expert are embedded by the base encoder "
        "and search its index (on its held-out queries the adapter did not beat the base "
        'encoder in hybrid search; evidence in extra["gate"]).',
    )
    documents: int
    resident: bool
    resident_bytes: int = Field(
        0,
        description="Memory its adapter holds while resident, over all model workers "
        "(peft's copy and the one-pass tables).",
    )
    one_pass: bool | None = Field(
        None,
        description="Served in one pass with routing (its LoRA changes no layer below the "
        "routing layer); false: a full second pass serves it exactly; null: not resident.",
    )
    state: Literal["ready", "indexing"] = Field(
        "ready", description='"indexing" while first-start indexing fills its index.'
    )
    indexing: IndexingOut | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class FusionWeightIn(_Strict):
    weight: float | None = Field(
        ...,
        ge=0.0,
        le=1.0,
        description="Dense weight in [0, 1] (1: dense only, 0: BM25 only); null: per query.",
    )


class ExpertList(BaseModel):
    experts: list[ExpertOut]


class DocumentIn(_Strict):
    # The schema says what _has_content enforces: a non-blank title or text.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["title"], "properties": {"title": {"pattern": NOT_BLANK}}},
                {"required": ["text"], "properties": {"text": {"pattern": NOT_BLANK}}},
            ]
        }
    )

    id: str = Field(min_length=1, max_length=512)  # DocumentId's bounds
    title: str = Field("", max_length=10_000)
    text: str = Field("", max_length=1_000_000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = Field(
        None,
        min_length=EMBEDDING_DIM,
        max_length=EMBEDDING_DIM,
        description="Optional precomputed base-encoder embedding (all-MiniLM-L6-v2 of "
        "'title text', L2-normalised, within 1% of unit norm): the document is stored "
        "without re-encoding. Omitted or null: the gateway embeds it.",
    )

    @model_validator(mode="after")
    def _has_content(self) -> DocumentIn:
        # Title-only documents are common (BEIR corpora such as CACM): either will do.
        if blank(self.title) and blank(self.text):
            raise ValueError("a document needs a non-empty title or text")
        return self


class DocumentsRequest(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


class DocumentsResponse(BaseModel):
    inserted: int
    updated: int
