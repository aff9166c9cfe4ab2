"""The app factory: the lifespan builds the heavy objects and keeps them on app.state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api.errors import install_error_handlers
from app.api.metrics import Metrics, RequestMetrics
from app.api.middleware import BodySizeLimit, RequestId
from app.api.playground import install_playground
from app.api.routes import admin, experts, health, models, search
from app.service.admin import AdminService
from app.service.applier import ChangeApplier
from app.service.bootstrap import index_expert_corpora
from app.service.catalog import CatalogService
from app.service.context import ServiceContext
from app.service.crash_point import CrashPoint
from app.service.indexing_progress import IndexingProgress
from app.service.readiness import ReadinessService
from app.service.replication import Replication, start_replication
from app.service.retrieval import RetrievalService
from app.service.stats import StatsService
from app.settings import Settings

log = logging.getLogger(__name__)


async def _bootstrap(
    admin: AdminService, replication: Replication, settings: Settings, progress: IndexingProgress
) -> None:
    while not replication.ready:  # decide what is missing only after replaying the log
        await asyncio.sleep(0.2)
    try:
        await index_expert_corpora(admin, settings.datasets_dir, settings.cache_dir, progress)
    except Exception:  # the service still serves what it has
        log.exception("indexing the benchmark corpora failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The composition root: each service gets the parts it uses, and routes reach
        # services only (app/api/deps.py), never these parts.
        ctx = await asyncio.to_thread(ServiceContext.start, settings)
        applier = ChangeApplier(
            ctx.registry, ctx.indexes, ctx.encoder, ctx.encoder_batcher, ctx.cache
        )
        replication = await start_replication(settings, ctx.registry, applier, ctx.encoder.dim)
        bootstrap: asyncio.Task | None = None
        progress = IndexingProgress()
        app.state.ctx = ctx  # white-box tests inspect it; routes never do (deps.py)
        app.state.retrieval = RetrievalService(
            settings,
            ctx.encoder,
            ctx.registry,
            ctx.indexes,
            ctx.encoder_batcher,
            ctx.search_batcher,
            ctx.cache,
            replication.shared_cache,
            progress,
            ctx.lexical_batcher,
            ctx.documents_batcher,
        )
        admin = AdminService(
            ctx.registry,
            ctx.indexes,
            ctx.encoder,
            ctx.encoder_batcher,
            replication.sink,
            replication.replicated,
            CrashPoint(settings.test_crash_after_writes),
        )
        app.state.admin = admin
        app.state.catalog = CatalogService(ctx.registry, ctx.indexes, ctx.encoder, progress)
        app.state.readiness = ReadinessService(
            ctx.registry,
            ctx.indexes,
            ctx.encoder.shortcuts,
            caught_up=lambda: replication.ready,
            indexing=lambda: bootstrap is not None and not bootstrap.done(),
            progress=progress,
            precisions=ctx.encoder.precisions,
        )
        app.state.stats = StatsService(
            ctx.encoder,
            ctx.indexes,
            [ctx.encoder_batcher, ctx.search_batcher, ctx.lexical_batcher, ctx.documents_batcher],
            ctx.cache,
            replication.shared_cache,
            replication.follower,
        )
        if settings.index_corpora_on_start:
            bootstrap = asyncio.create_task(_bootstrap(admin, replication, settings, progress))
        try:
            yield
        finally:
            if bootstrap is not None:
                bootstrap.cancel()
            await replication.stop()
            ctx.close()

    # Swagger UI and ReDoc from the fastapi-offline wheel, not a CDN: machines without
    # internet get working /docs and /redoc too.
    app = FastAPIOffline(
        title="RouterRetriever gateway",
        version=__version__,
        description="Routes each query to a LoRA domain expert, embeds it, searches its index.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    metrics = Metrics()
    metrics.watch(lambda: getattr(app.state, "stats", None))
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestId)
    if settings.cors_origin_list:
        # Outermost, so preflights are answered before the body limit, metrics or routing
        # (an OPTIONS to /v1/search has no route of its own).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        )
    for module in (search, models, experts, admin, health):
        app.include_router(module.router)
    install_playground(app)
    _optional_search_key(app)
    return app


def _optional_search_key(app: FastAPI) -> None:
    """The search key is needed only where RR_API_KEYS is set: in the schema, each /v1
    operation may go with it or without (`security: [{}, {SearchKey: []}]`)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    security = operation.get("security")
                    if security == [{"SearchKey": []}]:
                        operation["security"] = [{}, {"SearchKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
