"""Public retrieval endpoints: search, batch search, route, embeddings."""

from __future__ import annotations

import base64
import time

import numpy as np
from fastapi import APIRouter, Depends, Request

from app.api.deps import RetrievalDep, require_search_key
from app.api.errors import ERROR_RESPONSES
from app.api.schemas import (
    BatchSearchRequest,
    EmbeddingOut,
    EmbeddingsRequest,
    EmbeddingsResponse,
    HitOut,
    IndexingOut,
    RouteRequest,
    RoutingOut,
    SearchOptionsIn,
    SearchRequest,
    SearchResponse,
    Usage,
)
from app.core.planning import SearchOptions
from app.core.router import RoutingDecision
from app.service.retrieval import SearchResult

router = APIRouter(
    prefix="/v1",
    tags=["search"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_search_key)],
)


def _observe(request: Request, results: list[SearchResult], started: float) -> None:
    metrics = request.app.state.metrics
    metrics.observe_routing(r.routing for r in results)
    metrics.observe_search(results, time.perf_counter() - started)


def _options(body: SearchOptionsIn) -> SearchOptions:
    return SearchOptions(
        body.k,
        body.expert,
        body.index,
        body.top_experts,
        body.include_text,
        mode=body.mode,
        fusion=body.fusion,
        truncate=body.truncate,
        where=body.where(),
    )


def _routing(decision: RoutingDecision) -> RoutingOut:
    return RoutingOut(
        expert=decision.expert,
        scores=decision.scores,
        fallback=decision.fallback,
        threshold=decision.threshold,
        passed_over=list(decision.passed_over) or None,
        note=_note(decision),
    )


def _note(decision: RoutingDecision) -> str | None:
    """Never a silent empty answer: say when an empty index changed the route."""
    if not decision.passed_over:
        return None
    empty = ", ".join(decision.passed_over)
    verb = "holds" if len(decision.passed_over) == 1 else "hold"
    if not decision.fallback:
        return f"the index of {empty} {verb} no documents: routed to {decision.expert} instead"
    if len(decision.passed_over) == len(decision.scores):
        return "no expert's index holds documents yet: nothing to search"
    return (
        f"the index of {empty} {verb} no documents: fell back to the base encoder over the "
        "indexes that hold documents"
    )


def _response(result: SearchResult, include_text: bool) -> SearchResponse:
    hits = [
        HitOut(
            id=r.hit.id,
            score=r.score,
            expert=r.expert,
            index=r.hit.index,
            title=r.hit.title if include_text else None,
            text=r.hit.text if include_text else None,
            metadata=r.hit.metadata if include_text else None,
            dense_score=r.dense,
            lexical_score=r.lexical,
        )
        for r in result.hits
    ]
    indexing = {
        name: IndexingOut(indexed=p.indexed, total=p.total) for name, p in result.indexing.items()
    }
    return SearchResponse(
        hits=hits,
        routing=_routing(result.routing),
        timing_ms=result.timing_ms,
        indexing=indexing or None,
    )


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
async def search(body: SearchRequest, service: RetrievalDep, request: Request) -> SearchResponse:
    """Route the query to an expert, embed it with that expert, search, return ranked hits.

    `expert`: "auto" routes; "base" or a name forces the encoder. `index` pins the collection
    searched. `top_experts > 1` searches the n best experts' indexes and fuses the dense lists
    by reciprocal rank (score = sum of 1/(60 + rank)). On fallback (no expert close enough)
    the base encoder searches every index and hits are merged by cosine score.

    `mode` "hybrid" (default) also searches the same indexes by BM25 and fuses the two lists:
    `score = w * dense + (1 - w) * lexical`, each leg min-max normalised over its top 100;
    `w` is the routed expert's learned weight, or on fallback a weight chosen per query from
    its own evidence. Each hit reports its raw `dense_score` and `lexical_score`.
    """
    started = time.perf_counter()
    [result] = await service.search([body.query], _options(body))
    _observe(request, [result], started)
    return _response(result, body.include_text)


@router.post("/search/batch", response_model=list[SearchResponse], response_model_exclude_none=True)
async def search_batch(
    body: BatchSearchRequest, service: RetrievalDep, request: Request
) -> list[SearchResponse]:
    """Several queries, same options; one routing pass and one expert pass for all of them."""
    started = time.perf_counter()
    results = await service.search(body.queries, _options(body))
    _observe(request, results, started)
    return [_response(r, body.include_text) for r in results]


@router.post("/route", response_model=RoutingOut, response_model_exclude_none=True)
async def route(body: RouteRequest, service: RetrievalDep, request: Request) -> RoutingOut:
    """The routing decision alone: chosen expert, every expert's score, fallback flag."""
    [decision] = await service.route([body.query])
    request.app.state.metrics.observe_routing([decision])
    return _routing(decision)


@router.post("/embeddings", response_model=EmbeddingsResponse)
async def embeddings(body: EmbeddingsRequest, service: RetrievalDep) -> EmbeddingsResponse:
    """OpenAI-compatible query embeddings; with model "auto" each input is routed first."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    # validates the inputs first
    embedded = await service.embed(texts, body.model_name, body.truncate)
    tokens = sum(await service.token_counts(texts))
    data = [
        EmbeddingOut(index=i, embedding=_encode(e.vector, body.encoding_format), expert=e.expert)
        for i, e in enumerate(embedded)
    ]
    return EmbeddingsResponse(
        data=data, model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
