"""The playground page at `/`: static files shipped in the package (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND = Path(__file__).parent / "static" / "playground"


def install_playground(app: FastAPI) -> None:
    app.mount("/playground", StaticFiles(directory=PLAYGROUND), name="playground")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        """Search with routing shown, the experts and their indexing, an admin view."""
        return FileResponse(PLAYGROUND / "index.html")
