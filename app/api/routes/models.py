"""`GET /v1/models`: what `model` may name on `/v1/embeddings`, in OpenAI's shape."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends

from app.api.deps import CatalogDep, require_search_key
from app.api.errors import ERROR_RESPONSES
from app.api.schemas import ModelList, ModelOut
from app.core.names import AUTO, BASE_EXPERT
from app.encoder.base_model import BASE_MODEL_NAME

router = APIRouter(
    prefix="/v1",
    tags=["search"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_search_key)],
)
OWNER = "routerretriever"


def _unix(created: str | None) -> int:
    try:
        return int(datetime.fromisoformat(created).timestamp()) if created else 0
    except ValueError:
        return 0


@router.get("/models", response_model=ModelList)
async def list_models(catalog: CatalogDep) -> ModelList:
    """The models `/v1/embeddings` accepts: "auto" (each input routed), "base" (also by its
    id, sentence-transformers/all-MiniLM-L6-v2) and every registered expert."""
    built_in = [
        ModelOut(id=AUTO, created=0, owned_by=OWNER, description="routed: each input's expert"),
        ModelOut(id=BASE_EXPERT, created=0, owned_by=OWNER, description=BASE_MODEL_NAME),
        ModelOut(
            id=BASE_MODEL_NAME, created=0, owned_by="sentence-transformers", description="= base"
        ),
    ]
    experts = [
        ModelOut(
            id=info.spec.name,
            created=_unix(info.spec.created),
            owned_by=OWNER,
            description=info.spec.description,
        )
        for info in catalog.list()
    ]
    return ModelList(data=built_in + experts)
