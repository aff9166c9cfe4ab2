"""`rr`: the service's command line."""

from __future__ import annotations

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


register_training(app)
register_evaluation(app)

if __name__ == "__main__":
    app()
