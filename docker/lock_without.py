"""Print a hashed lock file without some of its packages, for `pip install --require-hashes`.

The GPU image installs GPU faiss in place of the lock's faiss-cpu (both provide the `faiss`
module, so never both):

    python docker/lock_without.py requirements/service.lock faiss-cpu > /tmp/requirements.txt

An entry is its `name==version` line with the hash and comment lines under it. Naming a
package the lock does not hold is an error, so a renamed dependency breaks the image build
instead of being installed twice.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def without(lock: str, names: list[str] | tuple[str, ...]) -> str:
    """`lock`'s text minus the entries of `names`."""
    dropped = {canonical(n) for n in names}
    found: set[str] = set()
    kept: list[str] = []
    skipping = False
    for line in lock.splitlines(keepends=True):
        if match := _PIN.match(line):
            name = canonical(match.group(1))
            skipping = name in dropped
            if skipping:
                found.add(name)
        elif not line.startswith((" ", "\t")):  # a top-level comment ends an entry
            skipping = False
        if not skipping:
            kept.append(line)
    unknown = sorted(dropped - found)
    if unknown:
        raise SystemExit(f"not in the lock: {', '.join(unknown)}")
    return "".join(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    sys.stdout.write(without(args.lock.read_text(), args.names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
