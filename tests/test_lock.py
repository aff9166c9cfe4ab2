"""The lock matches pyproject.toml: `make install` and the images get what CI tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
# One entry: `name==version \` then its hash lines (comment lines may follow).
_ENTRY = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:[ \t]+--hash=sha256:\w+.*\n)+)", re.M
)
_PIN_LINE = re.compile(r"^[A-Za-z0-9]", re.M)


def locked(name: str) -> dict[str, str]:
    text = (LOCKS / name).read_text()
    entries = _ENTRY.findall(text)
    assert len(entries) == len(_PIN_LINE.findall(text)), f"{name}: an entry without hashes"
    return {canonicalize_name(n): version for n, version, _ in entries}


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return [Requirement(r) for r in requirements]


@pytest.mark.parametrize(("lock", "extras"), [("dev.lock", ("train", "dev")), ("service.lock", ())])
def test_every_direct_dependency_is_locked_within_its_range(lock: str, extras) -> None:
    pins = locked(lock)
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        if name == "torch":  # installed before the lock: CPU here, CUDA on GPU hosts
            assert name not in pins
            continue
        assert name in pins, f"{name} is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside {requirement}: run `make lock`"
        )


def test_service_lock_is_the_dev_lock_without_the_extras() -> None:
    dev, service = locked("dev.lock"), locked("service.lock")
    assert service.keys() <= dev.keys()
    assert {n: v for n, v in service.items() if dev[n] != v} == {}
    assert {"pytest", "ranx", "uv"}.isdisjoint(service)  # dev and train tools stay out
