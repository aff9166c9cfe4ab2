"""`rr`: the service's command line."""

# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

from pathlib import Path

import typer

from app.evaluation.commands import register as register_evaluation
from app.training.commands import register as register_training

app = typer.Typer(
    help="RouterRetriever gateway: serve, train experts, evaluate.", no_args_is_help=True
)


@app.callback()
def main() -> None:
    """RouterRetriever gateway: serve, train experts, evaluate."""


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="TCP port."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    http: str = typer.Option(
        "auto", help="HTTP parser: auto (httptools where installed), httptools, h11."
    ),
    loop: str = typer.Option("auto", help="Event loop: auto (uvloop where installed), asyncio."),
) -> None:
    """Run the HTTP gateway (settings come from RR_* environment variables)."""
    import uvicorn

    from app.api.app import create_app
    from app.logs import configure_logging

    configure_logging(log_level)
    uvicorn.run(
        create_app(),
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        http=http,  # uvicorn validates the name
        loop=loop,
    )


@app.command()
def ingest(
    expert: str = typer.Argument(..., help="The expert whose index receives the documents."),
    corpus: Path = typer.Argument(..., exists=True, dir_okay=False, help="BEIR corpus.jsonl."),
    embeddings: Path = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Precomputed base-encoder vectors: .npy (n, 384) in corpus order, unit rows.",
    ),
    url: str = typer.Option("http://127.0.0.1:8000", help="The gateway."),
    token: str = typer.Option(..., envvar="RR_ADMIN_TOKEN", help="Admin token."),
    batch_size: int = typer.Option(1000, min=1, max=10_000, help="Documents per request."),
) -> None:
    """Load a corpus into an expert's index through the admin API (idempotent by id)."""
    import httpx

    from app.ingest import IngestError, ingest

    headers = {"Authorization": f"Bearer {token}"}
    # A batch waits behind searches for the encoder (minutes on a busy CPU host).
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        try:
            result = ingest(client, expert, corpus, embeddings, batch_size)
        except IngestError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    rate = result.documents / max(result.seconds, 1e-9)
    typer.echo(
        f"{result.documents} documents ({result.inserted} new, {result.updated} replaced) "
        f"in {result.seconds:.1f} s: {rate:.0f} documents/s"
    )


register_training(app)
register_evaluation(app)

if __name__ == "__main__":
    app()
