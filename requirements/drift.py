"""Print how a fresh resolution differs from the lock: `make test-latest` calls it.

    python requirements/drift.py requirements/dev.lock LATEST.txt [--pyproject pyproject.toml]

Lists each package whose version differs (locked -> latest), packages only one side has, and
the direct dependencies whose newest release lies beyond pyproject.toml's upper bound (those
the throwaway venv could not try: raise the bound, then run `make test-latest` again).
Standard library only, so it runs before any venv exists. Always exits 0: it reports.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """`{name: version}` of every `name==version` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        if match := _PIN.match(line):
            found[canonical(match.group(1))] = match.group(2)
    return found


def upper_bounded(pyproject: Path) -> dict[str, str]:
    """`{name: requirement}` of the direct dependencies with a `<` bound."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    bounded = {}
    for requirement in requirements:
        spec = requirement.split(";")[0]
        if "<" in spec and (match := _NAME.match(spec)):
            bounded[canonical(match.group(1))] = spec.strip()
    return bounded


def newest_release(name: str) -> str | None:
    """The newest release on the package index, by pip's own look-up (None if unknown)."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(rf"{re.escape(name)} \(([^)]+)\)", result.stdout.strip(), re.IGNORECASE)
    return match.group(1) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("latest", type=Path)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args(argv)
    locked, latest = pins(args.lock), pins(args.latest)
    changed = sorted(n for n in locked.keys() & latest.keys() if locked[n] != latest[n])
    print(f"Drift: newest versions pyproject.toml allows vs {args.lock}")
    for name in changed:
        print(f"  {name:32} {locked[name]:>14} -> {latest[name]}")
    for name in sorted(latest.keys() - locked.keys()):
        print(f"  {name:32} {'(not locked)':>14} -> {latest[name]}")
    for name in sorted(locked.keys() - latest.keys()):
        print(f"  {name:32} {locked[name]:>14} -> (no longer needed)")
    if not (changed or latest.keys() ^ locked.keys()):
        print("  none: the lock is what a fresh install would get today")
    print(f"  {len(changed)} changed of {len(locked)} locked")
    for name, requirement in sorted(upper_bounded(args.pyproject).items()):
        newest = newest_release(name)
        if newest is not None and newest != latest.get(name):
            print(f"Beyond the bound {requirement!r}: {name} {newest} is out (not tested here)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
