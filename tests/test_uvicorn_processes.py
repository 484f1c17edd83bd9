"""uvicorn started every way a user starts it: worker and reload processes, start-up checks,
logging, TLS after the header, and an installation without httptools.

Each test runs uvicorn (or gunicorn's ASGI worker) in a subprocess: the ``uvicorn``
command, or ``uvicorn.run(...)`` in a script. The clients are raw sockets bound to their
own loopback address, so the address the app reports can only have come from the header.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as websocket_connect

from proxyproto_mw import encode_v1, encode_v2
from tests.clients import (
    CLIENT,
    DESTINATION,
    WARNING,
    HttpReader,
    drain,
    exchange,
    open_from,
    request,
    send_and_assert_closed_silently,
)
from tests.gunicorn_server import WORKER_PID, Gunicorn
from tests.haproxy import free_port
from tests.servers import (
    REPOSITORY,
    Uvicorn,
    run_in_session,
    run_to_exit,
    uvicorn_argv,
)

pytestmark = pytest.mark.timeout(90)

TRUSTED = {"PROXYPROTO_TRUSTED": "127.0.0.0/8"}
PROXIED_REQUEST = encode_v1(CLIENT, DESTINATION) + request()


def _no_traceback(server: Uvicorn | Gunicorn) -> None:
    output = server.stderr() + server.stdout()
    assert "Traceback" not in output, output


# --- an app that shows every scope extension ----------------------------------------------------


async def extensions_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers HTTP with, and sends on a WebSocket, the sorted keys of the scope's
    extensions and the proxy_protocol client."""
    if scope["type"] == "lifespan":
        return
    extensions = scope.get("extensions") or {}
    described = json.dumps(
        {
            "keys": sorted(extensions),
            "client": (extensions.get("proxy_protocol") or {}).get("client"),
            "scheme": scope["scheme"],
        }
    ).encode()
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": described.decode()})
        await send({"type": "websocket.close"})
        return
    await receive()
    headers = [(b"content-length", str(len(described)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": described})


@pytest.mark.parametrize("ws", ["websockets", "websockets-sansio", "wsproto"])
def test_server_extensions_are_kept_beside_ours(tmp_path: Path, ws: str) -> None:
    """uvicorn's WebSocket scope carries its own extension; ours is added, not swapped in."""
    port = free_port()
    argv = uvicorn_argv(port, ws=ws, loop="uvloop")
    argv[argv.index("tests.apps:app")] = "tests.test_uvicorn_processes:extensions_app"
    with (
        Uvicorn(tmp_path, port=port, argv=argv, env=TRUSTED) as server,
        open_from("127.0.0.2", server.address) as sock,
    ):
        sock.sendall(encode_v2(CLIENT, DESTINATION))
        with websocket_connect(f"ws://127.0.0.1:{port}/", sock=sock) as websocket:
            described = json.loads(websocket.recv(timeout=5))
    assert described["keys"] == ["proxy_protocol", "websocket.http.response"]
    assert described["client"] == list(CLIENT)
    assert described["scheme"] == "ws"
    _no_traceback(server)


# --- with_policy classes in worker and reload processes ------------------------------------------


SCRIPT = """\
import uvicorn

from proxyproto_mw import TrustPolicy
from proxyproto_mw.uvicorn import {http}, TLSSettings

if __name__ == "__main__":
    uvicorn.run(
        "tests.gunicorn_server:app",
        app_dir={repository!r},
        host="127.0.0.1",
        port={port},
        http={http}.with_policy(TrustPolicy(trusted="127.0.0.0/8", timeout=5), tls={tls}),
        {options}
    )
"""


def _script(tmp_path: Path, port: int, *, http: str, options: str, tls: str = "None") -> Path:
    script = tmp_path / "serve.py"
    script.write_text(
        SCRIPT.format(http=http, repository=str(REPOSITORY), port=port, options=options, tls=tls)
    )
    return script


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.parametrize("http", ["HttpToolsProtocol", "H11Protocol"])
def test_with_policy_class_serves_from_two_worker_processes(tmp_path: Path, http: str) -> None:
    """uvicorn.run(..., workers=2) pickles the class into each worker (a PicklingError
    before)."""
    port = free_port()
    script = _script(tmp_path, port, http=http, options="workers=2,")
    argv = [sys.executable, str(script)]
    with Uvicorn(tmp_path, port=port, argv=argv, name="workers") as server:
        pids: set[str] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
                response, local = exchange(
                    server.address, source, encode_v1(CLIENT, DESTINATION) + request()
                )
                scope = response.json()
                assert scope["client"] == list(CLIENT)
                assert scope["proxy_protocol"]["peer"] == list(local)
                pids.add(response.headers[WORKER_PID])
        assert len(pids) == 2, pids  # both workers served with the header's address
        assert len(re.findall(r"INFO: +PROXY protocol on \(mode require", server.stderr())) == 2
    _no_traceback(server)


def test_with_policy_class_serves_under_reload(tmp_path: Path) -> None:
    port = free_port()
    watched = tmp_path / "watched"
    watched.mkdir()
    options = f"reload=True, reload_dirs=[{str(watched)!r}],"
    script = _script(tmp_path, port, http="HttpToolsProtocol", options=options)
    with Uvicorn(tmp_path, port=port, argv=[sys.executable, str(script)], name="reload") as server:
        response, _ = exchange(
            server.address, "127.0.0.2", encode_v1(CLIENT, DESTINATION) + request()
        )
        assert response.json()["client"] == list(CLIENT)
    _no_traceback(server)


PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def encrypted_key(certificate: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test certificate's key, encrypted with :data:`PASSWORD`."""
    key, _ = certificate
    encrypted = tmp_path_factory.mktemp("encrypted") / "key.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", f"pass:{PASSWORD}",
         "-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return encrypted


def _tls_exchange(port: int, source: str, cert: Path) -> tuple[dict[str, Any], tuple[str, int]]:
    """A v1 header in clear, then TLS, then one request: the scope and our address."""
    context = ssl.create_default_context(cafile=str(cert))
    with open_from(source, ("127.0.0.1", port)) as raw:
        local = raw.getsockname()[:2]
        raw.sendall(encode_v1(CLIENT, DESTINATION))
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request("/tls"))
            return HttpReader(tls).response().json(), local


def test_tls_settings_reach_worker_processes_without_the_environment(
    tmp_path: Path, certificate: tuple[Path, Path], encrypted_key: Path
) -> None:
    """with_policy(tls=TLSSettings(...)): each worker serves TLS after the header with the
    key's password, which no process's environment holds."""
    _, cert = certificate
    port = free_port()
    tls = (
        f"TLSSettings(certfile={str(cert)!r}, keyfile={str(encrypted_key)!r}, "
        f"password={PASSWORD!r})"
    )
    script = _script(tmp_path, port, http="HttpToolsProtocol", options="workers=2,", tls=tls)
    with Uvicorn(tmp_path, port=port, argv=[sys.executable, str(script)], name="tls") as server:
        scope, local = _tls_exchange(port, "127.0.0.2", cert)
        assert scope["scheme"] == "https"
        assert scope["client"] == list(CLIENT)
        assert scope["proxy_protocol"]["peer"] == list(local)
        assert scope["proxy_protocol"]["tls"] is True
        for pid in {server.pid, *_children(server.pid)}:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
            assert PASSWORD.encode() not in environment
            assert b"PROXYPROTO_" not in environment
    _no_traceback(server)


# --- start-up: one INFO line, one line per configuration error ---------------------------------


def test_start_up_says_proxy_handling_is_on(tmp_path: Path) -> None:
    with Uvicorn(tmp_path, env=TRUSTED) as server:
        lines = server.stderr().splitlines()
    (announced,) = [line for line in lines if "PROXY protocol on" in line]
    assert re.fullmatch(
        r"INFO: +PROXY protocol on \(mode require, v1 and v2\): headers believed from "
        r"127\.0\.0\.0/8 \(PROXYPROTO_TRUSTED\) within 10 s; other peers are served with their "
        r"own address",
        announced,
    )
    running = next(index for index, line in enumerate(lines) if "Uvicorn running" in line)
    assert lines.index(announced) < running


@pytest.mark.parametrize("http", ["HttpToolsProtocol", "H11Protocol"])
def test_bad_variable_is_one_line(http: str) -> None:
    completed = run_to_exit(uvicorn_argv(free_port(), http=http), {"PROXYPROTO_MODE": "bogus"})
    assert completed.returncode == 3, completed.stderr
    assert "Traceback" not in completed.stderr
    (line,) = [line for line in completed.stderr.splitlines() if "PROXYPROTO_MODE" in line]
    assert line.startswith("ERROR:")
    assert "'bogus' is not one of require, optional, off" in line


def test_bad_variable_under_workers_is_one_line_per_worker() -> None:
    """uvicorn's supervisor never loads the class: each worker checks and says it in one
    line. (Recent uvicorn then stops; older releases start new workers, which say it again.)"""
    argv = uvicorn_argv(free_port(), extra=["--workers", "2"])
    # Older uvicorn keeps starting new workers: the session is killed after 10 s then.
    stderr = run_in_session(argv, {"PROXYPROTO_MODE": "bogus"}, timeout=10).stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "PROXYPROTO_MODE" in line]
    assert len(lines) >= 2, stderr  # one per worker
    assert all(line.startswith("ERROR:") and "'bogus'" in line for line in lines), lines


def test_uvicorn_tls_is_one_line(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    extra = ["--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]
    completed = run_to_exit(uvicorn_argv(free_port(), extra=extra))
    assert completed.returncode == 3, completed.stderr
    assert "Traceback" not in completed.stderr
    (line,) = [line for line in completed.stderr.splitlines() if "proxyproto-mw serve" in line]
    assert line.startswith("ERROR:")


# --- rejections go through uvicorn's logging ------------------------------------------------------


def test_rejection_is_a_warning_in_uvicorns_format(tmp_path: Path) -> None:
    with Uvicorn(tmp_path, env={"PROXYPROTO_TRUSTED": "127.0.0.1"}) as server:
        mark = server.mark()
        peer = send_and_assert_closed_silently(server.address, "127.0.0.1", request())
        (line,) = mark.wait_for(WARNING)
    assert line.startswith(f"WARNING:  {WARNING} 127.0.0.1:{peer[1]}: no PROXY header"), line


def test_log_level_critical_silences_rejections(tmp_path: Path) -> None:
    with Uvicorn(
        tmp_path, env={"PROXYPROTO_TRUSTED": "127.0.0.1"}, extra=["--log-level", "critical"]
    ) as server:
        send_and_assert_closed_silently(server.address, "127.0.0.1", request())
        response, _ = exchange(
            server.address, "127.0.0.1", encode_v1(CLIENT, DESTINATION) + request()
        )
        assert response.json()["client"] == list(CLIENT)  # served after the rejection
        time.sleep(0.2)
        assert WARNING not in server.stderr()
        assert "PROXY protocol on" not in server.stderr()


# --- without httptools --------------------------------------------------------------------------


BLOCK_HTTPTOOLS = """\
import sys


class _NoHttptools:
    \"\"\"As if httptools were not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "httptools" or name.startswith("httptools."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoHttptools())
"""


@pytest.fixture(scope="module")
def without_httptools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose Python processes cannot import httptools (a sitecustomize)."""
    directory = tmp_path_factory.mktemp("no-httptools")
    (directory / "sitecustomize.py").write_text(BLOCK_HTTPTOOLS)
    env = {"PYTHONPATH": os.pathsep.join([str(directory), str(REPOSITORY)])}
    check = run_to_exit([sys.executable, "-c", "import httptools"], env)
    assert check.returncode != 0 and "httptools" in check.stderr
    return env


def test_httptools_protocol_without_httptools_says_so(without_httptools: dict[str, str]) -> None:
    completed = run_to_exit(uvicorn_argv(free_port()), without_httptools)
    assert completed.returncode == 3, completed.stderr
    assert "Traceback" not in completed.stderr
    (line,) = [line for line in completed.stderr.splitlines() if "httptools" in line]
    assert "pip install httptools" in line
    assert line.startswith("ERROR:")


def test_h11_protocol_without_httptools(tmp_path: Path, without_httptools: dict[str, str]) -> None:
    with Uvicorn(tmp_path, http="H11Protocol", env={**without_httptools, **TRUSTED}) as server:
        response, _ = exchange(
            server.address, "127.0.0.2", encode_v1(CLIENT, DESTINATION) + request()
        )
        assert response.json()["client"] == list(CLIENT)
    _no_traceback(server)


@pytest.mark.parametrize("worker", ["UvicornWorker", "UvicornH11Worker"])
def test_gunicorn_workers_without_httptools(
    tmp_path: Path, without_httptools: dict[str, str], worker: str
) -> None:
    """UvicornWorker falls back to h11, as the README says."""
    with Gunicorn(
        tmp_path,
        worker=worker,
        workers=1,
        allow_from="127.0.0.1",
        proxy_protocol=("--proxy-protocol", "v1"),
        env=without_httptools,
    ) as server:
        response, _ = exchange(server.address, "127.0.0.1", PROXIED_REQUEST)
        assert response.json()["client"] == list(CLIENT)
        # the worker says, in gunicorn's error log, that PROXY handling is on
        announced = (
            r"\[INFO\] PROXY protocol on \(mode require, v1\): headers believed from "
            r"127\.0\.0\.1 and UNIX-socket peers \(--proxy-allow-from\)"
        )
        assert re.search(announced, server.stderr()), server.stderr()
    _no_traceback(server)


# --- shutdown -----------------------------------------------------------------------------------


def test_a_header_completing_as_shutdown_begins_is_served(tmp_path: Path) -> None:
    """A request whose header completes just after uvicorn began to shut down (on its way
    as the server stops) is served, without keep-alive, before the server exits."""
    env = {"PROXYPROTO_TRUSTED": "127.0.0.1", "PROXYPROTO_TIMEOUT": "30"}
    header = encode_v1(CLIENT, DESTINATION)
    with Uvicorn(tmp_path, env=env) as server:
        with open_from("127.0.0.1", server.address) as sock:
            sock.sendall(header[:10])
            time.sleep(0.2)
            os.kill(server.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while "Shutting down" not in server.stderr():  # shutdown() has been called
                assert time.monotonic() < deadline, server.stderr()
                time.sleep(0.01)
            sock.sendall(header[10:] + request("/late"))
            response = HttpReader(sock).response()
            assert response.status == 200
            assert response.json()["client"] == list(CLIENT)
            assert response.json()["path"] == "/late"
            assert response.headers.get("connection") == "close"
            assert drain(sock, timeout=5) in ((b"", "eof"), (b"", "reset"))
        deadline = time.monotonic() + 5
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running
    _no_traceback(server)


def test_shutdown_is_not_held_up_by_a_connection_waiting_for_its_header(tmp_path: Path) -> None:
    """uvicorn's shutdown closes a connection still waiting for its header (as it closes
    an idle one): the server exits at once, the connection closed without a byte, not left
    to its 30 s header timeout (on Python 3.12+ asyncio's wait_closed, which uvicorn's
    shutdown awaits, waits for every open connection)."""
    env = {"PROXYPROTO_TRUSTED": "127.0.0.1", "PROXYPROTO_TIMEOUT": "30"}
    with Uvicorn(tmp_path, env=env) as server:
        with open_from("127.0.0.1", server.address) as sock:
            sock.sendall(encode_v1(CLIENT, DESTINATION)[:10])
            time.sleep(0.2)
            started = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            received, end = drain(sock, timeout=5)
            assert (received, end) in ((b"", "eof"), (b"", "reset"))
            assert time.monotonic() - started < 2
        deadline = time.monotonic() + 5
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running
        assert "Waiting for connections to close" not in server.stderr()
    _no_traceback(server)
