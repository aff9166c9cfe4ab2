from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.helpers import TOKEN, make_adapter, write_lora


@pytest.fixture(scope="session")
def adapters_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def adapter_a(adapters_root: str) -> Path:
    return make_adapter(1, adapters_root)


@pytest.fixture(scope="session")
def adapter_b(adapters_root: str) -> Path:
    return make_adapter(2, adapters_root)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        experts_dir=tmp_path / "experts",
        indexes_dir=tmp_path / "indexes",
        datasets_dir=None,
        admin_token=TOKEN,
        max_request_bytes=4 * 1024 * 1024,
        max_query_chars=500,
        precision="fp32",  # exact queries: tests compare served vectors with fp32 references
    )


@pytest.fixture
def client(settings: Settings):
    from app.api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def lora_a(adapters_root: str) -> Path:
    """A numpy-written LoRA (no torch): for the fake encoder of the fast tier."""
    return write_lora(1, adapters_root)


@pytest.fixture(scope="session")
def lora_b(adapters_root: str) -> Path:
    return write_lora(2, adapters_root)


@pytest.fixture
def fake_settings(settings: Settings) -> Settings:
    """The API and service on the fake encoder: no model, no torch (the fast tier)."""
    settings.encoder_backend = "fake"
    return settings


@pytest.fixture
def fake_client(fake_settings: Settings):
    from app.api.app import create_app

    with TestClient(create_app(fake_settings)) as test_client:
        yield test_client
