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

from tests.processes import (  # noqa: F401  (re-exported)
    TOKEN,
    Gateway,
    RedisServer,
    adapter_files,
    free_port,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@cache
def make_adapter(
    seed: int,
    root: str,
    targets: tuple[str, ...] = ("query", "value"),
    layers: tuple[int, ...] | None = None,
    identity: bool = False,
    rank: int = 8,
) -> Path:
    """A real peft LoRA over the real base model with random (non-identity) weights, or
    with `identity` peft's default init (B = 0: the adapter changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from app.encoder.base_model import load_base_model

    suffix = "" if layers is None else "-layers-" + "-".join(map(str, layers))
    suffix += "-identity" if identity else ""
    suffix += "" if rank == 8 else f"-r{rank}"
    out = Path(root) / f"adapter-{seed}-{'-'.join(targets)}{suffix}"
    if not (out / "adapter_model.safetensors").exists():
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank,
            lora_alpha=32,
            target_modules=list(targets),
            layers_to_transform=list(layers) if layers else None,
            init_lora_weights=identity,
        )
        get_peft_model(load_base_model("cpu"), config).save_pretrained(str(out))
    return out


def write_lora(
    seed: int,
    root: str | Path,
    targets: tuple[str, ...] = ("query", "value"),
    layers: tuple[int, ...] = tuple(range(6)),
    identity: bool = False,
    rank: int = 4,
) -> Path:
    """A LoRA adapter in peft's file format written with numpy alone (no torch): for the
    fast tier, whose fake encoder reads real adapter files."""
    import json

    from safetensors.numpy import save_file

    from app.encoder.fake import minilm_module_shapes

    out = Path(root) / f"lora-{seed}-{'-'.join(targets)}-{len(layers)}{'-id' if identity else ''}"
    if (out / "adapter_model.safetensors").exists():
        return out
    rng = np.random.default_rng(seed)
    tensors = {}
    for module, (fan_in, fan_out) in minilm_module_shapes().items():
        parts = module.split(".")
        if parts[-1] not in targets or not (parts[0] == "encoder" and int(parts[2]) in layers):
            continue
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = rng.normal(size=(rank, fan_in)).astype(np.float32)
        b = np.zeros((fan_out, rank)) if identity else rng.normal(size=(fan_out, rank)) * 0.1
        tensors[f"{key}.lora_B.weight"] = b.astype(np.float32)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": sorted(targets),
        "layers_to_transform": list(layers),
        "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def register(client: Any, name: str, adapter: Path, queries: list[str]) -> Any:
    """POST /admin/experts with an adapter directory's files and example pilot queries."""
    import json

    return client.post(
        "/admin/experts",
        headers=AUTH,
        data={"name": name, "description": f"{name} expert", "pilot_queries": json.dumps(queries)},
        files=adapter_files(adapter),
    )


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
