"""The package as a user installs it: the sdist and the wheel built from the checkout, the
wheel installed into a clean virtualenv without any extra, and served from there.

``pip install dist/proxyproto_mw-*.whl gunicorn flask`` must be enough for
``gunicorn -k proxyproto_mw.gunicorn.SyncWorker``: the WSGI workers need no uvicorn. The
wheel carries the compiled C accelerator, ``py.typed`` and the stub of the accelerator.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from proxyproto_mw import __version__
from proxyproto_mw.encoder import encode_v1
from tests.clients import HttpReader, open_from, request
from tests.haproxy import ServerProcess, free_port
from tests.servers import REPOSITORY

SLOW = pytest.mark.slow
LONG = pytest.mark.timeout(300)

CLIENT = ("198.51.100.7", 41234)
"""The client the header names (only ever written into a header, never connected to)."""
BALANCER = "127.0.0.3"

FLASK_APP = """
from flask import Flask, request

app = Flask(__name__)


@app.get("/")
def index():
    return {"remote_addr": request.remote_addr, "remote_port": request.environ["REMOTE_PORT"]}
"""


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; its output is in the failure message."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built as ``python -m build`` builds them (the wheel from the
    sdist, so a file missing from the sdist breaks the wheel)."""
    outdir = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(outdir), str(REPOSITORY)])
    return outdir


def the_one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"{pattern} in {directory}: {found}"
    return found[0]


@SLOW
@LONG
def test_the_sdist_has_the_sources_the_wheel_is_built_from(dist: Path) -> None:
    sdist = the_one(dist, f"proxyproto_mw-{__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "proxyproto_mw/_speedups.c",
        "proxyproto_mw/_speedups.pyi",
        "proxyproto_mw/py.typed",
        "proxyproto_mw/gunicorn.py",
    ):
        assert name in names, f"{name} is missing from {sdist.name}"


@SLOW
@LONG
def test_the_wheel_has_the_accelerator_the_types_and_the_declared_requirements(
    dist: Path,
) -> None:
    wheel = the_one(dist, f"proxyproto_mw-{__version__}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        wheel_metadata = archive.read(f"proxyproto_mw-{__version__}.dist-info/METADATA").decode()
        entry_points = archive.read(f"proxyproto_mw-{__version__}.dist-info/entry_points.txt")
    assert any(re.fullmatch(r"proxyproto_mw/_speedups\..*\.so", name) for name in names), names
    assert {"proxyproto_mw/py.typed", "proxyproto_mw/_speedups.pyi"} <= names
    # Every module of the checkout's package, subpackages included.
    sources = {
        path.relative_to(REPOSITORY).as_posix()
        for path in (REPOSITORY / "proxyproto_mw").rglob("*.py")
    }
    assert sources <= names, sorted(sources - names)
    assert not any(name.startswith("tests/") for name in names)
    assert b"proxyproto-mw = proxyproto_mw.cli:main" in entry_points
    # The same requirements and extras as the checkout's own (editable) install declares.
    declared = metadata.metadata("proxyproto-mw")
    assert sorted(re.findall(r"^Requires-Dist: (.*)$", wheel_metadata, re.MULTILINE)) == sorted(
        declared.get_all("Requires-Dist") or []
    )
    extras = re.findall(r"^Provides-Extra: (.*)$", wheel_metadata, re.MULTILINE)
    assert sorted(extras) == sorted(declared.get_all("Provides-Extra") or [])
    assert {"uvicorn", "gunicorn", "werkzeug", "websockets", "aws"} <= set(extras)


@pytest.fixture(scope="module")
def clean_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel, gunicorn and flask: no extra, so no uvicorn."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    wheel = the_one(dist, f"proxyproto_mw-{__version__}-*.whl")
    run([str(python), "-m", "pip", "install", "-q", str(wheel), "gunicorn", "flask"])
    return venv


@SLOW
@LONG
def test_the_installed_wheel_is_accelerated_and_typed(clean_venv: Path) -> None:
    probe = textwrap.dedent(
        """
        import importlib.util, json, pathlib
        import proxyproto_mw, proxyproto_mw.decoder
        package = pathlib.Path(proxyproto_mw.__file__).parent
        print(json.dumps({
            "location": str(package),
            "accelerated": proxyproto_mw.decoder.ACCELERATED,
            "py.typed": (package / "py.typed").is_file(),
            "uvicorn": importlib.util.find_spec("uvicorn") is not None,
        }))
        """
    )
    done = run([str(clean_venv / "bin" / "python"), "-c", probe], cwd=clean_venv)
    found = json.loads(done.stdout)
    assert found["location"].startswith(str(clean_venv)), found  # not the checkout's
    assert found == {
        "location": found["location"],
        "accelerated": True,
        "py.typed": True,
        "uvicorn": False,
    }


@pytest.fixture
def sync_worker(clean_venv: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """``gunicorn -k proxyproto_mw.gunicorn.SyncWorker`` from the clean virtualenv."""
    (tmp_path / "flask_app.py").write_text(FLASK_APP)
    port = free_port()
    argv = [
        str(clean_venv / "bin" / "gunicorn"),
        "-k",
        "proxyproto_mw.gunicorn.SyncWorker",
        "--proxy-protocol",
        "v1",
        "--proxy-allow-from",
        "127.0.0.0/8",
        "-b",
        f"127.0.0.1:{port}",
        "flask_app:app",
    ]
    server = ServerProcess(argv, tmp_path, [("127.0.0.1", port)], name="gunicorn", cwd=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@SLOW
@LONG
def test_sync_worker_serves_from_the_wheel_without_uvicorn(sync_worker: ServerProcess) -> None:
    """``pip install proxyproto-mw gunicorn flask`` then ``-k ...SyncWorker``: the app sees
    the header's client."""
    with open_from(BALANCER, sync_worker.addresses[0]) as sock:
        sock.sendall(encode_v1(CLIENT, ("127.0.0.1", 8080)) + request("/"))
        response = HttpReader(sock).response()
    assert response.json() == {"remote_addr": CLIENT[0], "remote_port": str(CLIENT[1])}


INSTALL_LINES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "examples").rglob("*.sh"))]


def pip_install_arguments() -> list[tuple[str, str]]:
    """``(file, argument)`` for every package argument of a ``pip install`` line."""
    found = []
    for path in INSTALL_LINES:
        for line in path.read_text().splitlines():
            # The arguments run to a comment, the end of a command or of inline code.
            # examples/setup.sh's install_example "MODULES" PIP_ARGS... runs pip install too.
            match = re.search(r'(?:pip install|^install_example "[^"]*") ([^#`&;|]*)', line)
            if match is None:
                continue
            words = shlex.split(match.group(1).replace("$(echo ", "").replace(")[", "["))
            found += [(path.name, word) for word in words if not word.startswith("-")]
    return found


def test_every_pip_install_line_installs_from_the_checkout_or_a_built_wheel() -> None:
    """Until the package is on an index, README's and the examples' ``pip install`` lines name
    the checkout (``.[extra]``) or a wheel of this version in ``dist/``, with extras that exist."""
    extras = set(metadata.metadata("proxyproto-mw").get_all("Provides-Extra") or [])
    arguments = pip_install_arguments()
    assert ("README.md", ".[uvicorn]") in arguments, arguments
    for source, argument in arguments:
        assert not argument.startswith("proxyproto-mw"), (
            f"{source}: pip install {argument}: the package is not on any index yet"
        )
        target, _, named = argument.partition("[")
        if target.startswith("dist/"):
            assert re.fullmatch(rf"dist/proxyproto_mw-{re.escape(__version__)}-\*\.whl", target), (
                f"{source}: {argument} is not this version's wheel"
            )
        elif target != ".":
            continue  # another package (flask, starlette, ...)
        unknown = {name.strip() for name in named.rstrip("]").split(",") if name} - extras
        assert not unknown, f"{source}: pip install {argument}: no extra {unknown}"
