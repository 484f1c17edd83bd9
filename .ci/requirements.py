"""The package's requirements, read from pyproject.toml, for tests/run.sh's virtualenvs.

``python .ci/requirements.py minimums``: pip constraints pinning each declared lower bound
of the runtime requirements (the dependencies and the server extras) to exactly that
release, so that the contract and end-to-end tests run on the oldest releases
pyproject.toml claims to support. ``python .ci/requirements.py dev``: every requirement of
the ``dev`` extra, its ``proxyproto-mw[...]`` extras expanded, so that a virtualenv's
dependencies install while the checkout is busy (the package itself installs after).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

EXTRAS = ("uvicorn", "gunicorn", "werkzeug", "websockets")
"""The extras whose lower bounds are tested (aws, testing, bench and dev are not pinned)."""

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def minimums(pyproject: Path) -> dict[str, str]:
    """``{distribution: lowest release}`` of every ``name>=version`` requirement."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement.split(";")[0])
        if match is None:
            continue
        name, version = match.group(1).lower(), match.group(2)
        if name == project["name"]:
            continue
        pins[name] = max(pins.get(name, version), version, key=_release)
    return pins


def dev(pyproject: Path) -> list[str]:
    """The dependencies and the ``dev`` extra, ``proxyproto-mw[...]`` expanded (a marker on
    the extra carried over to each of its requirements)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    own = re.compile(rf"^{re.escape(project['name'])}\[([^\]]*)\]$")
    found: list[str] = list(project["dependencies"])
    pending: list[tuple[str, str]] = [("dev", "")]
    while pending:
        extra, outer = pending.pop()
        for line in extras[extra]:
            requirement, _, marker = (part.strip() for part in line.partition(";"))
            markers = " and ".join(f"({m})" for m in (marker, outer) if m)
            if (match := own.match(requirement)) is not None:
                pending += [(name.strip(), markers) for name in match.group(1).split(",")]
            else:
                found.append(f"{requirement}; {markers}" if markers else requirement)
    return list(dict.fromkeys(found))


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


if __name__ == "__main__":
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if sys.argv[1:] == ["minimums"]:
        for name, version in sorted(minimums(pyproject).items()):
            print(f"{name}=={version}")
    elif sys.argv[1:] == ["dev"]:
        print("\n".join(dev(pyproject)))
    else:
        sys.exit("usage: python .ci/requirements.py minimums|dev")
