"""Print pip constraints pinning each declared lower bound of the package's runtime
requirements (its dependencies and the server extras) to exactly that release.

tests/run.sh installs the minimums virtualenv with them, so that the contract and
end-to-end tests run on the oldest releases pyproject.toml claims to support.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

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


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    for name, version in sorted(minimums(root / "pyproject.toml").items()):
        print(f"{name}=={version}")
