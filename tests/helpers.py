"""Test helpers: real LoRA adapters made on the spot, app clients, a live server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.cluster import TOKEN, Gateway, RedisServer, free_port  # noqa: F401  (re-exported)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@cache
def make_adapter(
    seed: int,
    root: str,
    targets: tuple[str, ...] = ("query", "value"),
    layers: tuple[int, ...] | None = None,
    identity: bool = False,
) -> Path:
    """A real peft LoRA over the real base model with random (non-identity) weights, or
    with `identity` peft's default init (B = 0: the adapter changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from app.encoder.base_model import load_base_model

    suffix = "" if layers is None else "-layers-" + "-".join(map(str, layers))
    suffix += "-identity" if identity else ""
    out = Path(root) / f"adapter-{seed}-{'-'.join(targets)}{suffix}"
    if not (out / "adapter_model.safetensors").exists():
        torch.manual_seed(seed)
        config = LoraConfig(
            r=8,
            lora_alpha=32,
            target_modules=list(targets),
            layers_to_transform=list(layers) if layers else None,
            init_lora_weights=identity,
        )
        get_peft_model(load_base_model("cpu"), config).save_pretrained(str(out))
    return out


def adapter_files(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {
        "adapter_config": (
            "adapter_config.json",
            (path / "adapter_config.json").read_bytes(),
            "application/json",
        ),
        "adapter_model": (
            "adapter_model.safetensors",
            (path / "adapter_model.safetensors").read_bytes(),
            "application/octet-stream",
        ),
    }


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@contextmanager
def live_server(settings) -> Iterator[tuple[str, Any]]:
    """Run the real app under uvicorn on 127.0.0.1 in a thread; yields (base URL, app)."""
    import uvicorn

    from app.api.app import create_app

    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
