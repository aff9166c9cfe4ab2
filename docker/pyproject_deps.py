"""Print the runtime dependencies of pyproject.toml, one per line, for `pip install -r`.

Used by the Dockerfiles so the dependency layer is built from pyproject.toml alone and stays
cached until that file changes:

    python docker/pyproject_deps.py pyproject.toml --exclude torch > /tmp/requirements.txt

`--exclude NAME` drops a requirement the image installs its own way (CPU or CUDA torch;
faiss-cpu in the GPU image, which installs a GPU faiss instead). Excluding a name that
pyproject.toml does not list is an error, so a renamed dependency breaks the build instead
of being installed twice.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a project name from requirement {requirement!r}")
    return canonical(match.group(1))


def dependencies(pyproject: Path, exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`[project].dependencies` of `pyproject` minus the excluded project names."""
    with pyproject.open("rb") as handle:
        requirements = tomllib.load(handle)["project"]["dependencies"]
    names = {requirement_name(r) for r in requirements}
    wanted_out = {canonical(n) for n in exclude}
    unknown = sorted(wanted_out - names)
    if unknown:
        raise SystemExit(f"--exclude names not in {pyproject}: {', '.join(unknown)}")
    return [r for r in requirements if requirement_name(r) not in wanted_out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path, nargs="?", default=Path("pyproject.toml"))
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{r}\n" for r in dependencies(args.pyproject, args.exclude)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
