"""Adapter and pilot checks that run before anything is written."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from app.encoder.base_model import linear_module_shapes, load_base_model
from app.errors import InvalidAdapter, InvalidInput
from app.experts.validation import adapter_is_identity, parse_pilots, validate_adapter


@pytest.fixture(scope="module")
def shapes() -> dict[str, tuple[int, int]]:
    return linear_module_shapes(load_base_model("cpu"))


def _files(path: Path) -> tuple[bytes, bytes]:
    return (path / "adapter_config.json").read_bytes(), (
        path / "adapter_model.safetensors"
    ).read_bytes()


def test_real_adapter_passes(adapter_a: Path, shapes) -> None:
    summary = validate_adapter(*_files(adapter_a), shapes)
    assert summary.rank == 8 and summary.modules == 12  # query+value in 6 layers


def test_pickle_checkpoint_is_refused(adapter_a: Path, shapes) -> None:
    config, _ = _files(adapter_a)
    with pytest.raises(InvalidAdapter, match="pickle"):
        validate_adapter(config, pickle.dumps({"weights": [1, 2, 3]}), shapes)


def test_shape_mismatch_is_refused(adapter_a: Path, shapes) -> None:
    config, model = _files(adapter_a)
    wrong_rank = json.loads(config) | {"r": 4}
    with pytest.raises(InvalidAdapter, match="shape"):
        validate_adapter(json.dumps(wrong_rank).encode(), model, shapes)


def test_unknown_module_is_refused(adapter_a: Path, shapes) -> None:
    from safetensors.numpy import load, save

    config, model = _files(adapter_a)
    tensors = {k.replace("layer.0.", "layer.9."): v for k, v in load(model).items()}
    with pytest.raises(InvalidAdapter, match="lacks"):
        validate_adapter(config, save(tensors), shapes)


def test_non_lora_config_is_refused(adapter_a: Path, shapes) -> None:
    _, model = _files(adapter_a)
    with pytest.raises(InvalidAdapter, match="LORA"):
        validate_adapter(json.dumps({"peft_type": "IA3", "r": 8}).encode(), model, shapes)
    with pytest.raises(InvalidAdapter, match="JSON"):
        validate_adapter(b"{not json", model, shapes)


def test_pilots_are_checked_and_normalised() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.full((2, 384), 3.0))
    pilots = parse_pilots(buffer.getvalue(), 384)
    assert pilots.dtype == np.float32 and np.allclose(np.linalg.norm(pilots, axis=1), 1.0)
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 10)))
    with pytest.raises(InvalidInput, match="shape"):
        parse_pilots(buffer.getvalue(), 384)
    with pytest.raises(InvalidInput):
        parse_pilots(pickle.dumps([1.0] * 384), 384)


def test_identity_adapter_is_recognised(adapter_a: Path, adapters_root: str) -> None:
    from tests.helpers import make_adapter

    untrained = make_adapter(3, adapters_root, identity=True)
    assert adapter_is_identity((untrained / "adapter_model.safetensors").read_bytes())
    assert not adapter_is_identity((adapter_a / "adapter_model.safetensors").read_bytes())
    assert not adapter_is_identity(b"not safetensors")
