"""CLI commands for training and evaluation, registered on the `rr` app."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add the offline commands to `cli` (filled in by the training work)."""
