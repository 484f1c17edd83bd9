"""End to end: ``gunicorn -k proxyproto_mw.gunicorn.UvicornWorker`` with gunicorn's own settings.

Every server here is gunicorn in a subprocess, started from the command line a user types
(:mod:`gunicorn_server`), with two workers unless said otherwise, serving :mod:`apps` (the
JSON of the scope, plus the pid of the worker that answered). The senders are HAProxy
(``send-proxy`` and ``send-proxy-v2``, health checks on), curl, raw sockets, httpx and the
``websockets`` client, each bound to its own loopback address. Each gunicorn setting is
checked for what it is documented to do, in every worker: ``--proxy-protocol`` (off, v1,
v2, auto, and a value gunicorn refuses), ``--proxy-allow-from`` (with a UNIX socket, whose
peers are trusted), ``PROXYPROTO_MODE``, ``PROXYPROTO_TIMEOUT``, ``--keyfile`` /
``--certfile``, ``--max-requests``, a graceful reload (``SIGHUP``) and a killed worker.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as websocket_connect

from proxyproto_mw import encode_v1, encode_v2
from tests.clients import (
    CLIENT,
    DESTINATION,
    JSON,
    WARNING,
    Address,
    HttpReader,
    Response,
    assert_closed_silently,
    assert_one_warning,
    assert_websocket_echoes,
    client_address,
    drain,
    exchange,
    httpx_client,
    local_address,
    open_from,
    request,
    send_and_assert_closed_silently,
    websocket_session,
)
from tests.gunicorn_server import WORKER_PID, Gunicorn, gunicorn_argv, run_gunicorn_to_exit
from tests.haproxy import (
    STATS_SOCKET,
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_defaults,
    haproxy_proxied_pair,
    haproxy_stats,
    ipv6_available,
    wait_until_healthy,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for workers"),
]

WORKER_CLASSES = ("UvicornWorker", "UvicornH11Worker")
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""Each client of HAProxy connects from its own address."""
MAX_ATTEMPTS = 200
"""Connections tried until every worker has taken one. The kernel hands each connection to
one of the workers waiting on the shared socket; the same one may win ten times in a row."""


# --- clients ----------------------------------------------------------------------------


def worker_of(response: Response) -> int:
    """The pid of the worker that answered."""
    return int(response.headers[WORKER_PID])


def on_every_worker(server: Gunicorn, attempt: Callable[[], int]) -> dict[int, int]:
    """Repeat ``attempt`` (which returns the pid of the worker it reached) until every
    worker has been reached; how many attempts each took."""
    workers = server.worker_pids()
    reached: dict[int, int] = {}
    for _ in range(MAX_ATTEMPTS):
        pid = attempt()
        reached[pid] = reached.get(pid, 0) + 1
        if set(reached) == workers:
            return reached
    raise AssertionError(f"{MAX_ATTEMPTS} connections reached workers {reached}, not {workers}")


def assert_served_from(response: Response, local: Address, server: Gunicorn) -> None:
    """A plain connection's response: the socket's own addresses, no header."""
    assert response.status == 200
    scope = response.json()
    assert scope["client"] == list(local)
    assert scope["server"] == list(server.address)
    assert scope["proxy_protocol"] is None


def assert_served_as_client(response: Response, version: int) -> None:
    """A response to a connection with the test header: the header's addresses."""
    assert response.status == 200
    scope = response.json()
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["proxy_protocol"]["version"] == version


def rejected(server: Gunicorn, source: str, payload: bytes, reason: str) -> int:
    """The connection is closed without a byte and a WARNING names ``reason``; the pid of
    the worker that wrote it."""
    mark = server.mark()
    peer = send_and_assert_closed_silently(server.address, source, payload)
    (line,) = mark.wait_for(rf"{WARNING} {re.escape(peer[0])}:{peer[1]}: .*{reason}")
    found = re.search(r"\[(\d+)\] \[WARNING\] ", line)
    assert found, line
    return int(found.group(1))


def rejected_by_every_worker(
    server: Gunicorn, source: str, payload: bytes, reason: str
) -> list[str]:
    """:func:`rejected` until every worker has refused a connection, with one WARNING line
    per connection; the lines."""
    mark = server.mark()
    reached = on_every_worker(server, lambda: rejected(server, source, payload, reason))
    time.sleep(0.1)  # a second line for one connection would be written by now
    lines = mark.lines(WARNING)
    assert len(lines) == sum(reached.values()), lines
    return lines


def no_errors(server: Gunicorn) -> None:
    """Nothing went wrong in gunicorn: no traceback, no ERROR line."""
    assert server.errors() == [], server.output()


HEADERS = {
    1: encode_v1(CLIENT, DESTINATION),
    2: encode_v2(CLIENT, DESTINATION, checksum=True),
}


# --- 1. behind HAProxy: keep-alive, WebSocket, graceful reload, a killed worker ------------

BACKENDS = ("gunicorn_v1", "gunicorn_v2")


@dataclass
class Balanced:
    """gunicorn behind HAProxy: a v1 frontend and a v2 frontend."""

    server: Gunicorn
    haproxy: HAProxy
    frontends: dict[int, Address]
    stats_socket: Path

    def health(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of the gunicorn server in each backend."""
        stats = haproxy_stats(self.stats_socket)
        return {name: stats[(name, "app")] for name in BACKENDS}

    def wait_healthy(self, timeout: float = 10.0) -> None:
        """Wait until both backends' health checks pass."""
        wait_until_healthy(self.stats_socket, BACKENDS, timeout)

    def assert_still_healthy(self) -> None:
        """Both backends are up and never went down."""
        for name, row in self.health().items():
            assert row["status"] == "UP", (name, row)
            assert row["chkdown"] == "0", (name, row)


@pytest.fixture(scope="class", params=WORKER_CLASSES)
def balanced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Balanced]:
    """Two workers trusting HAProxy at 127.0.0.1, behind HAProxy with health checks on."""
    if not haproxy_available():
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI installs it")
    workdir = tmp_path_factory.mktemp("gunicorn-haproxy")
    server = Gunicorn(workdir, worker=request.param, allow_from="127.0.0.1")
    v1_port, v2_port = free_port(), free_port()
    config = haproxy_defaults(workdir) + haproxy_proxied_pair(
        "gunicorn", (v1_port, v2_port), server.port, v2_options=False
    )
    with server, HAProxy(config, workdir) as haproxy:
        frontends = {1: ("127.0.0.1", v1_port), 2: ("127.0.0.1", v2_port)}
        balanced = Balanced(server, haproxy, frontends, workdir / STATS_SOCKET)
        balanced.wait_healthy()
        yield balanced
    assert WARNING not in server.output()
    no_errors(server)


def each_source_sees_itself(frontend: Address, version: int) -> set[int]:
    """Three keep-alive HTTP clients and three WebSocket clients, from 127.0.0.2, .3 and
    .4, each see their own address; the workers that answered over HTTP."""
    clients = {source: httpx_client(source) for source in SOURCES}
    connections: dict[str, set[Address]] = {source: set() for source in SOURCES}
    workers = set()
    try:
        for round_number in range(3):
            for source, client in clients.items():
                response = client.get(f"http://127.0.0.1:{frontend[1]}/r{round_number}")
                assert response.status_code == 200
                scope = response.json()
                local = client_address(response)
                connections[source].add(local)
                assert local[0] == source
                assert scope["client"] == list(local)  # not HAProxy's 127.0.0.1
                assert scope["server"] == list(frontend)
                assert scope["path"] == f"/r{round_number}"
                assert scope["proxy_protocol"]["version"] == version
                assert scope["proxy_protocol"]["peer"][0] == "127.0.0.1"
                workers.add(int(response.headers[WORKER_PID]))
    finally:
        for client in clients.values():
            client.close()
    # keep-alive: each client sent its three requests over one connection
    assert all(len(addresses) == 1 for addresses in connections.values()), connections
    for source in SOURCES:
        result = websocket_session(frontend, source)
        assert result.local[0] == source
        assert result.scope["type"] == "websocket"
        assert result.scope["client"] == list(result.local)
        assert result.scope["server"] == list(frontend)
        assert result.scope["proxy_protocol"]["version"] == version
        assert_websocket_echoes(result)
    return workers


def reach_every_worker_through(balanced: Balanced, version: int) -> None:
    """New connections through HAProxy until each worker has answered one, each with
    its client's address."""
    port = balanced.frontends[version][1]

    def attempt() -> int:
        with httpx_client("127.0.0.3") as client:
            response = client.get(f"http://127.0.0.1:{port}/which-worker")
            assert response.json()["client"] == list(client_address(response))
        return int(response.headers[WORKER_PID])

    on_every_worker(balanced.server, attempt)


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
class TestBehindHAProxy:
    @pytest.mark.parametrize("version", [1, 2])
    def test_each_client_sees_its_own_address(self, balanced: Balanced, version: int) -> None:
        workers = balanced.server.worker_pids()
        assert each_source_sees_itself(balanced.frontends[version], version) <= workers
        reach_every_worker_through(balanced, version)

    def test_graceful_reload(self, balanced: Balanced) -> None:
        server = balanced.server
        old = server.worker_pids()
        new = server.reload()
        assert not new & old
        for version in (1, 2):
            assert each_source_sees_itself(balanced.frontends[version], version) <= new
            reach_every_worker_through(balanced, version)
        assert server.worker_pids() == new
        balanced.assert_still_healthy()

    def test_killed_worker_is_replaced(self, balanced: Balanced) -> None:
        server = balanced.server
        before = server.worker_pids()
        victim = min(before)
        after = server.kill_worker(victim)
        assert after & before == before - {victim}
        (replacement,) = after - before
        for version in (1, 2):
            assert each_source_sees_itself(balanced.frontends[version], version) <= after
            reach_every_worker_through(balanced, version)  # the replacement among them
        assert replacement in server.worker_pids()
        balanced.assert_still_healthy()


# --- 2. --max-requests: workers restart under load ------------------------------------------


def test_max_requests_restarts_workers_and_every_request_is_served(tmp_path: Path) -> None:
    """Requests keep coming while workers reach --max-requests 5 and are replaced, until
    six workers have served: none is lost, each sees its header's client."""
    with Gunicorn(
        tmp_path, proxy_protocol=("--proxy-protocol", "v2"), extra=["--max-requests", "5"]
    ) as server:
        workers: dict[int, int] = {}
        deadline = time.monotonic() + 30
        number = 0
        while len(workers) < 6:
            assert time.monotonic() < deadline, f"workers seen in 30 s: {workers}"
            client = (CLIENT[0], 20000 + number)
            header = encode_v2(client, DESTINATION, checksum=True)
            response, _ = exchange(server.address, "127.0.0.1", header + request(f"/{number}"))
            assert response.status == 200
            scope = response.json()
            assert scope["client"] == list(client)
            assert scope["path"] == f"/{number}"
            pid = worker_of(response)
            workers[pid] = workers.get(pid, 0) + 1
            number += 1
            time.sleep(0.01)  # uvicorn checks its request count every 0.1 s
        assert server.output().count("Maximum request limit of 5 exceeded") >= 4
        assert WARNING not in server.output()
    no_errors(server)


# --- 3. --proxy-protocol: which versions are read, in every worker ---------------------------


@pytest.fixture(
    scope="module",
    params=[
        ("UvicornWorker", ("--proxy-protocol", "v1"), {1}),
        ("UvicornWorker", ("--proxy-protocol", "v2"), {2}),
        ("UvicornH11Worker", ("--proxy-protocol", "v2"), {2}),
        ("UvicornWorker", ("--proxy-protocol", "auto"), {1, 2}),
        ("UvicornH11Worker", ("--proxy-protocol",), {1, 2}),  # a bare flag means auto
    ],
    ids=["v1", "v2", "v2-h11", "auto", "bare-flag-h11"],
)
def versioned(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gunicorn, set[int]]]:
    """gunicorn with a ``--proxy-protocol`` choice and the default ``--proxy-allow-from``;
    the versions it should accept."""
    worker, setting, versions = request.param
    server = Gunicorn(tmp_path_factory.mktemp("versioned"), worker=worker, proxy_protocol=setting)
    with server:
        yield server, versions
    no_errors(server)


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_protocol_version(versioned: tuple[Gunicorn, set[int]], version: int) -> None:
    server, accepted = versioned
    payload = HEADERS[version] + request("/versioned")
    if version not in accepted:
        (other,) = accepted
        reason = f"v{version} PROXY header, but only v{other} accepted"
        rejected_by_every_worker(server, "127.0.0.1", payload, reason)
        return

    def attempt() -> int:
        response, _ = exchange(server.address, "127.0.0.1", payload)
        assert_served_as_client(response, version)
        return worker_of(response)

    on_every_worker(server, attempt)


def test_header_required_from_the_balancer(versioned: tuple[Gunicorn, set[int]]) -> None:
    """A trusted peer's connection without a header is closed (PROXYPROTO_MODE=require)."""
    server, _ = versioned
    reason = r"no PROXY header from trusted peer 127\.0\.0\.1"
    rejected_by_every_worker(server, "127.0.0.1", request("/plain"), reason)


def test_untrusted_peer_is_served_with_its_own_address(
    versioned: tuple[Gunicorn, set[int]],
) -> None:
    """The default --proxy-allow-from is 127.0.0.1 and ::1: 127.0.0.9 talks plain HTTP."""
    server, _ = versioned
    response, local = exchange(server.address, "127.0.0.9", request("/plain"))
    assert_served_from(response, local, server)


@pytest.mark.parametrize(
    "worker, setting",
    [("UvicornWorker", ("--proxy-protocol", "off")), ("UvicornH11Worker", ())],
    ids=["off", "default-h11"],
)
def test_proxy_protocol_off_reads_no_header(
    tmp_path: Path, worker: str, setting: tuple[str, ...]
) -> None:
    """off (gunicorn's default): connections start with HTTP; a header is a bad request,
    whatever PROXYPROTO_MODE says."""
    env = {"PROXYPROTO_MODE": "require"}
    with Gunicorn(tmp_path, worker=worker, proxy_protocol=setting, env=env) as server:
        for source in ("127.0.0.1", "127.0.0.9"):
            response, local = exchange(server.address, source, request("/plain"))
            assert_served_from(response, local, server)
        for header in HEADERS.values():
            with open_from("127.0.0.1", server.address) as sock:
                sock.sendall(header + request())
                received, _ = drain(sock, timeout=5)
            assert CLIENT[0].encode() not in received
            assert HttpReader(None, received).response().status == 400
        assert WARNING not in server.output()
    no_errors(server)


# --- 4. --proxy-allow-from, and UNIX sockets ----------------------------------------------------


@pytest.fixture(scope="module")
def allow_from(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """``--proxy-allow-from 127.0.0.2``, also bound to a UNIX socket; ``X-Forwarded-For``
    believed from every peer (``--forwarded-allow-ips '*'``)."""
    workdir = tmp_path_factory.mktemp("allow-from")
    server = Gunicorn(
        workdir,
        allow_from="127.0.0.2",
        unix_socket=workdir / "gunicorn.sock",
        extra=["--forwarded-allow-ips", "*"],
    )
    with server:
        yield server
    no_errors(server)


def test_allowed_peer_header_is_believed_in_every_worker(allow_from: Gunicorn) -> None:
    def attempt() -> int:
        response, local = exchange(allow_from.address, "127.0.0.2", HEADERS[1] + request())
        assert_served_as_client(response, 1)
        assert response.json()["proxy_protocol"]["peer"] == list(local)
        return worker_of(response)

    on_every_worker(allow_from, attempt)


@pytest.mark.parametrize("source", ["127.0.0.3", "127.0.0.1"])
def test_header_from_a_peer_not_allowed_is_refused(allow_from: Gunicorn, source: str) -> None:
    """127.0.0.1 is trusted by default, not once --proxy-allow-from names others."""

    reason = rf"not trusted: it is not believed \(add {re.escape(source)} to --proxy-allow-from "
    rejected_by_every_worker(allow_from, source, HEADERS[2] + request(), reason)


def test_peer_not_allowed_is_served_plain(allow_from: Gunicorn) -> None:
    response, local = exchange(allow_from.address, "127.0.0.3", request("/plain"))
    assert_served_from(response, local, allow_from)


def test_forwarded_for_cannot_replace_the_header_address(allow_from: Gunicorn) -> None:
    """--forwarded-allow-ips '*' believes X-Forwarded-For, except over a PROXY header."""
    forged = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
    response, _ = exchange(
        allow_from.address, "127.0.0.2", HEADERS[1] + request("/xff", headers=forged)
    )
    assert_served_as_client(response, 1)
    assert response.json()["scheme"] == "http"
    # without a header, gunicorn's setting applies as documented
    plain, _ = exchange(allow_from.address, "127.0.0.3", request("/xff", headers=forged))
    assert plain.json()["client"][0] == "6.6.6.6"


def test_unix_socket_peers_are_trusted(allow_from: Gunicorn) -> None:
    """gunicorn documents that --proxy-allow-from does not apply to UNIX sockets."""
    assert allow_from.unix_socket is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(allow_from.unix_socket))
        sock.sendall(HEADERS[2] + request("/unix"))
        response = HttpReader(sock).response()
    assert_served_as_client(response, 2)
    assert response.json()["proxy_protocol"]["peer"] is None


# --- 5. PROXYPROTO_MODE and PROXYPROTO_TIMEOUT ----------------------------------------------


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """``PROXYPROTO_MODE=optional PROXYPROTO_TIMEOUT=3``, ``--proxy-protocol v1``."""
    server = Gunicorn(
        tmp_path_factory.mktemp("optional"),
        proxy_protocol=("--proxy-protocol", "v1"),
        allow_from="127.0.0.1",
        env={"PROXYPROTO_MODE": "optional", "PROXYPROTO_TIMEOUT": "3"},
    )
    with server:
        yield server
    no_errors(server)


def test_optional_mode_serves_a_trusted_peer_without_header(optional: Gunicorn) -> None:
    mark = optional.mark()

    def attempt() -> int:
        response, local = exchange(optional.address, "127.0.0.1", request("/plain"))
        assert_served_from(response, local, optional)
        return worker_of(response)

    on_every_worker(optional, attempt)
    proxied, _ = exchange(optional.address, "127.0.0.1", HEADERS[1] + request("/proxied"))
    assert_served_as_client(proxied, 1)
    result = websocket_session(optional.address, "127.0.0.1")
    assert result.scope["client"] == list(result.local)
    assert_websocket_echoes(result)
    assert mark.lines(WARNING) == []


def test_optional_mode_still_refuses_untrusted_headers(optional: Gunicorn) -> None:
    rejected(optional, "127.0.0.9", HEADERS[1] + request(), "--proxy-allow-from")


def test_header_timeout(optional: Gunicorn) -> None:
    """PROXYPROTO_TIMEOUT=3: a header still incomplete after 3 s closes the connection."""
    mark = optional.mark()
    started = time.monotonic()
    with open_from("127.0.0.1", optional.address) as sock:
        peer = local_address(sock)
        sock.sendall(b"PROXY TCP4 1.2")
        assert_closed_silently(sock, timeout=10)
    assert 3.0 <= time.monotonic() - started < 6.0
    assert_one_warning(mark, peer, r"no complete PROXY header within 3 s \(14 bytes received\)")


# --- 6. settings refused at start-up --------------------------------------------------------

STARTUP_ERRORS = {
    "timeout-bogus": (("--proxy-protocol", "v1"), {"PROXYPROTO_TIMEOUT": "bogus"}),
    "timeout-1": (("--proxy-protocol", "v1"), {"PROXYPROTO_TIMEOUT": "1"}),
    "timeout-1-off": (("--proxy-protocol", "off"), {"PROXYPROTO_TIMEOUT": "1"}),
    "mode-bogus": (("--proxy-protocol", "v2"), {"PROXYPROTO_MODE": "bogus"}),
    # gunicorn's own -e/--env sets the variable for the master and its workers
    "timeout-bogus-by-gunicorn-env": (
        ("--proxy-protocol", "v1", "-e", "PROXYPROTO_TIMEOUT=bogus"),
        {},
    ),
}


@pytest.mark.parametrize("worker", WORKER_CLASSES)
@pytest.mark.parametrize("setting, env", STARTUP_ERRORS.values(), ids=STARTUP_ERRORS.keys())
def test_bad_environment_stops_gunicorn(
    worker: str, setting: tuple[str, ...], env: dict[str, str]
) -> None:
    argv = gunicorn_argv([f"127.0.0.1:{free_port()}"], worker=worker, proxy_protocol=setting)
    started = time.monotonic()
    completed = run_gunicorn_to_exit(argv, env)
    assert completed.returncode != 0, completed.stderr
    assert time.monotonic() - started < 10
    variable = next(iter(env)) if env else "PROXYPROTO_TIMEOUT"
    assert re.search(rf"\[ERROR\] Error: {variable}\b", completed.stderr), completed.stderr
    assert "Booting worker" not in completed.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--proxy-protocol", "v3"), "proxy_protocol must be: off, v1, v2, or auto"),
        (("--proxy-protocol", "v1", "--proxy-allow-from", "not-an-ip"), "'not-an-ip'"),
    ],
    ids=["proxy-protocol-v3", "allow-from-not-an-ip"],
)
def test_gunicorn_refuses_a_bad_setting(arguments: tuple[str, ...], message: str) -> None:
    argv = gunicorn_argv([f"127.0.0.1:{free_port()}"], proxy_protocol=arguments)
    completed = run_gunicorn_to_exit(argv)
    assert completed.returncode != 0, completed.stderr
    assert message in completed.stderr
    assert "Booting worker" not in completed.stderr


# --- 7. --keyfile / --certfile: TLS after the header, on the same port ------------------------


@pytest.fixture(scope="module", params=WORKER_CLASSES)
def tls_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certificate: tuple[Path, Path],
) -> Iterator[Gunicorn]:
    """gunicorn with a self-signed certificate, trusting every loopback address."""
    key, cert = certificate
    server = Gunicorn(
        tmp_path_factory.mktemp("tls"),
        worker=request.param,
        proxy_protocol=("--proxy-protocol", "auto"),
        allow_from="127.0.0.0/8",
        extra=["--keyfile", str(key), "--certfile", str(cert)],
    )
    with server:
        yield server
    no_errors(server)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_haproxy_protocol_over_tls(tls_server: Gunicorn) -> None:
    completed = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "5", "--noproxy", "*",
            "--insecure", "--haproxy-protocol", "--interface", "127.0.0.5",
            f"https://127.0.0.1:{tls_server.port}/tls",
        ],
        capture_output=True,
        timeout=10,
        check=True,
    )  # fmt: skip
    scope = json.loads(completed.stdout)
    assert scope["client"][0] == "127.0.0.5"
    assert scope["server"] == list(tls_server.address)
    assert scope["scheme"] == "https"
    assert scope["path"] == "/tls"
    assert scope["proxy_protocol"]["version"] == 1
    assert scope["proxy_protocol"]["peer"] == scope["client"]


def test_websocket_over_tls_after_a_v2_header(tls_server: Gunicorn) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def session(sock: socket.socket) -> tuple[JSON, str | bytes]:
        uri = f"wss://127.0.0.1:{tls_server.port}/wss"
        async with websocket_connect(
            uri,
            sock=sock,
            ssl=context,
            server_hostname="localhost",
            proxy=None,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
        ) as websocket:
            greeting = json.loads(await websocket.recv())
            await websocket.send("over TLS")
            return greeting, await websocket.recv()

    with open_from("127.0.0.6", tls_server.address) as sock:
        sock.sendall(HEADERS[2])
        scope, echo = asyncio.run(asyncio.wait_for(session(sock), 15))
    assert scope["type"] == "websocket"
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["scheme"] == "wss"
    assert echo == "over TLS"


def test_plain_http_on_the_tls_port_is_not_served(tls_server: Gunicorn) -> None:
    with open_from("127.0.0.6", tls_server.address) as sock:
        sock.sendall(HEADERS[1] + request("/not-tls"))
        received, end = drain(sock, timeout=8)
    assert b"HTTP/1.1 200" not in received
    assert end in ("eof", "reset")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_tls_without_proxy_protocol(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    with Gunicorn(
        tmp_path, proxy_protocol=(), extra=["--keyfile", str(key), "--certfile", str(cert)]
    ) as server:
        completed = subprocess.run(
            [
                "curl", "--silent", "--show-error", "--max-time", "30", "--noproxy", "*",
                "--insecure", "--interface", "127.0.0.5", f"https://127.0.0.1:{server.port}/",
            ],
            capture_output=True,
            timeout=40,  # a TLS handshake on a CI machine under load can take seconds
            check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        scope = json.loads(completed.stdout)
        assert scope["client"][0] == "127.0.0.5"
        assert scope["scheme"] == "https"


# --- 8. IPv6 ----------------------------------------------------------------------------------


def test_ipv6_listener(tmp_path: Path) -> None:
    """-b [::1]:PORT, the default --proxy-allow-from (127.0.0.1,::1): ::1's header is believed."""
    if not ipv6_available():
        pytest.skip("no IPv6 loopback address")
    with Gunicorn(tmp_path, host="::1") as server:
        response, local = exchange(server.address, "::1", HEADERS[2] + request("/v6"))
        assert_served_as_client(response, 2)
        assert response.json()["proxy_protocol"]["peer"] == list(local)
        result = websocket_session(server.address, "::1", HEADERS[1])
        assert result.scope["client"] == list(CLIENT)
        assert_websocket_echoes(result)
    no_errors(server)
