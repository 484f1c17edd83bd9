"""The ``websockets`` library's servers behind a PROXY header, both of them, end to end.

Each server is ``tests/websockets_server.py``, a script calling
``proxyproto_mw.websockets.serve`` (asyncio) or ``proxyproto_mw.websockets.sync.serve``
(threads) as a user's script does, started in a subprocess with ``PROXYPROTO_*`` in its
environment. HAProxy stands in front with ``send-proxy`` and ``send-proxy-v2`` and HTTP
health checks; the clients are the ``websockets`` client on sockets bound to their own
loopback addresses, so an address the handler reports can only have come from the header.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.server
import websockets.sync.server
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import InvalidMessage, InvalidStatus

import proxyproto_mw.websockets
import proxyproto_mw.websockets.sync
from proxyproto_mw import TrustPolicy, encode_v1, encode_v2
from tests.clients import (
    BAD_INPUT,
    CLIENT,
    CLIENT6,
    DESTINATION,
    DESTINATION6,
    UNKNOWN_AND_LOCAL,
    WARNING,
    assert_one_warning,
    assert_v2_extension,
    drain,
    local_address,
    open_from,
    send_and_assert_closed_silently,
    times_until_closed,
    v2_tlvs,
)
from tests.haproxy import (
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_defaults,
    haproxy_proxied_pair,
    wait_until_healthy,
)
from tests.servers import AppServer, run_to_exit

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX servers")

SERVERS = ("asyncio", "sync")
TIMEOUT = 3
"""The header timeout the servers run with (PROXYPROTO_TIMEOUT), the shortest allowed."""
ENV = {"PROXYPROTO_TRUSTED": "127.0.0.1", "PROXYPROTO_TIMEOUT": str(TIMEOUT)}

JSON = dict[str, Any]


class WebSocketServer(AppServer):
    """``python -m tests.websockets_server <server> --port N [TLS] [--library-serve]``."""

    def __init__(
        self,
        workdir: Path,
        server: str,
        *,
        env: dict[str, str] | None = None,
        certificate: tuple[Path, Path] | None = None,
        library_serve: bool = False,
    ) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "tests.websockets_server", server, "--port", str(port)]
        if certificate is not None:
            argv += ["--keyfile", str(certificate[0]), "--certfile", str(certificate[1])]
        if library_serve:
            argv.append("--library-serve")
        tls = "-tls" if certificate else ""
        library = "-library" if library_serve else ""
        super().__init__(
            argv,
            workdir,
            host="127.0.0.1",
            port=port,
            name=f"websockets-{server}{tls}{library}-{port}",
            env=ENV if env is None else env,
        )
        self.tls = certificate is not None


@dataclass
class Servers:
    """One kind of server (``asyncio`` or ``sync``), in clear and with TLS, behind HAProxy."""

    kind: str
    plain: WebSocketServer
    tls: WebSocketServer
    haproxy: HAProxy | None
    fronts: dict[str, int]
    """HAProxy's frontend ports by name: ``v1``, ``v2``, ``tls-v1``, ``tls-v2``."""


@pytest.fixture(scope="module", params=SERVERS)
def servers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certificate: tuple[Path, Path],
) -> Iterator[Servers]:
    """Both servers of one kind, and HAProxy in front of them when it is installed."""
    kind: str = request.param
    workdir = tmp_path_factory.mktemp(f"websockets-{kind}")
    plain = WebSocketServer(workdir, kind)
    tls = WebSocketServer(workdir, kind, certificate=certificate)
    with plain, tls:
        if not haproxy_available():
            yield Servers(kind, plain, tls, None, {})
            return
        fronts = {name: free_port() for name in ("v1", "v2", "tls-v1", "tls-v2")}
        tls_pair = haproxy_proxied_pair("tls", (fronts["tls-v1"], fronts["tls-v2"]), tls.port)
        config = (
            haproxy_defaults(workdir)
            + haproxy_proxied_pair("ws", (fronts["v1"], fronts["v2"]), plain.port)
            # Health checks over TLS after the header, as the clients connect.
            + tls_pair.replace(" check inter", " check check-ssl verify none inter")
        )
        with HAProxy(config, workdir) as haproxy:
            wait_until_healthy(
                workdir / "stats.sock", ["ws_v1", "ws_v2", "tls_v1", "tls_v2"], timeout=15
            )
            yield Servers(kind, plain, tls, haproxy, fronts)
    for server in (plain, tls):
        assert "Traceback" not in server.stderr(), server.stderr()


@dataclass
class Session:
    """What the handler told a client, the handshake response's header, the echo."""

    greeting: JSON
    remote_header: object
    echo: str
    local: tuple[str, int]


def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts the test certificate."""
    return ssl.create_default_context(cafile=str(certificate[1]))


def session(
    address: tuple[str, int],
    source: str,
    header: bytes = b"",
    *,
    tls: ssl.SSLContext | None = None,
    pieces: int = 1,
    path: str = "/room",
    headers: dict[str, str] | None = None,
) -> Session:
    """A WebSocket session from ``source`` that sends ``header`` first (in ``pieces``,
    20 ms apart), with TLS after it when ``tls`` is given."""
    sock = open_from(source, address)
    local = local_address(sock)
    step = max(1, -(-len(header) // pieces)) if header else 1
    for start in range(0, len(header), step):
        sock.sendall(header[start : start + step])
        time.sleep(0.02)
    scheme = "wss" if tls else "ws"

    async def run() -> Session:
        async with websocket_connect(
            f"{scheme}://{address[0]}:{address[1]}{path}",
            sock=sock,
            ssl=tls,
            server_hostname="localhost" if tls else None,
            additional_headers=headers,
            proxy=None,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
        ) as websocket:
            greeting = json.loads(await websocket.recv())
            await websocket.send("hello through the proxy")
            echo = await websocket.recv()
            assert websocket.response is not None
            remote = json.loads(websocket.response.headers["X-Remote-Address"])
        assert isinstance(echo, str)
        return Session(greeting, remote, echo, local)

    try:
        return asyncio.run(asyncio.wait_for(run(), 15))
    finally:
        sock.close()


def assert_seen_everywhere(result: Session, address: list[object]) -> None:
    """``process_request``, ``process_response`` and the handler all saw ``address``."""
    assert result.greeting["remote"] == address
    assert result.greeting["process_request"] == address
    assert result.greeting["process_response"] == address
    assert result.remote_header == address
    assert result.echo == "hello through the proxy"


# --- through HAProxy ---------------------------------------------------------------------


@pytest.mark.parametrize("front", ["v1", "v2", "tls-v1", "tls-v2"])
def test_through_haproxy_each_client_is_seen_with_its_own_address(
    servers: Servers, front: str, certificate: tuple[Path, Path]
) -> None:
    if servers.haproxy is None:
        pytest.skip("haproxy is not installed; CI installs it")
    address = ("127.0.0.1", servers.fronts[front])
    tls = client_tls(certificate) if front.startswith("tls") else None
    server = servers.tls if tls else servers.plain
    mark = server.mark()
    for source in ("127.0.0.2", "127.0.0.3"):
        result = session(address, source, tls=tls)
        assert_seen_everywhere(result, list(result.local))
        assert result.local[0] == source
        # The header's destination: the address the client reached, HAProxy's frontend.
        assert result.greeting["local"] == list(address)
        info = result.greeting["proxy_protocol"]
        assert info["version"] == (1 if front.endswith("v1") else 2)
        assert info["client"] == list(result.local)
        assert info["tls"] is (tls is not None)
        assert info["peer"][0] == "127.0.0.1"  # HAProxy itself
        # websockets' own log line names the client, not HAProxy.
        host, port = result.local
        mark.wait_for(rf"connection open \[remote \('{host}', {port}\)\]")
    assert mark.lines(WARNING) == []


# --- headers straight from a client ------------------------------------------------------


HEADERS = {
    "v1-whole": (encode_v1(CLIENT, DESTINATION), 1),
    "v1-byte-by-byte": (encode_v1(CLIENT, DESTINATION), 100),
    "v2-tlvs-in-3-reads": (encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True), 3),
    "v2-ipv6-whole": (encode_v2(CLIENT6, DESTINATION6), 1),
}
"""Headers by name: (header, the number of writes it is sent in, 20 ms apart)."""


@pytest.mark.parametrize("tls_on", [False, True], ids=["clear", "tls"])
@pytest.mark.parametrize("name", list(HEADERS))
def test_header_whole_or_split_gives_the_client_address(
    servers: Servers, certificate: tuple[Path, Path], name: str, tls_on: bool
) -> None:
    header, pieces = HEADERS[name]
    server = servers.tls if tls_on else servers.plain
    tls = client_tls(certificate) if tls_on else None
    result = session(server.address, "127.0.0.1", header, tls=tls, pieces=pieces)
    client, destination = (CLIENT6, DESTINATION6) if "ipv6" in name else (CLIENT, DESTINATION)
    assert_seen_everywhere(result, list(client))
    assert result.greeting["local"] == list(destination)
    info = result.greeting["proxy_protocol"]
    assert info["tls"] is tls_on or info["ssl"] is not None
    if "tlvs" in name:
        assert_v2_extension(info, result.local)


@pytest.mark.parametrize("name", list(UNKNOWN_AND_LOCAL))
def test_unknown_and_local_keep_the_socket_addresses(servers: Servers, name: str) -> None:
    header, version, command = UNKNOWN_AND_LOCAL[name]
    result = session(servers.plain.address, "127.0.0.1", header)
    assert_seen_everywhere(result, list(result.local))
    assert result.greeting["local"] == list(servers.plain.address)
    info = result.greeting["proxy_protocol"]
    assert (info["version"], info["command"], info["client"]) == (version, command, None)


def test_untrusted_client_without_header_is_served_with_its_own_address(
    servers: Servers,
) -> None:
    result = session(servers.plain.address, "127.0.0.2")
    assert_seen_everywhere(result, list(result.local))
    assert result.greeting["proxy_protocol"] is None


def test_forwarding_headers_in_the_handshake_cannot_replace_the_address(
    servers: Servers,
) -> None:
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
    }
    result = session(
        servers.plain.address, "127.0.0.1", encode_v1(CLIENT, DESTINATION), headers=forged
    )
    assert_seen_everywhere(result, list(CLIENT))


@pytest.mark.parametrize("second", ["v1", "v2"])
def test_a_second_header_is_application_data(servers: Servers, second: str) -> None:
    """The second header reaches websockets as the start of the HTTP request, which it
    refuses: no WebSocket opens, and its address appears nowhere."""
    forged = ("6.6.6.6", 6666)
    second_header = (
        encode_v1(forged, DESTINATION) if second == "v1" else encode_v2(forged, DESTINATION)
    )
    mark = servers.plain.mark()
    sock = open_from("127.0.0.1", servers.plain.address)
    sock.sendall(encode_v1(CLIENT, DESTINATION) + second_header)

    async def handshake() -> None:
        async with websocket_connect(
            f"ws://127.0.0.1:{servers.plain.port}/", sock=sock, proxy=None, open_timeout=5
        ):
            pass

    try:
        with pytest.raises((InvalidMessage, InvalidStatus, EOFError, OSError)):
            asyncio.run(asyncio.wait_for(handshake(), 10))
    finally:
        sock.close()
    time.sleep(0.2)
    assert "6.6.6.6" not in mark.text()
    assert mark.lines("connection open") == []


# --- refused connections -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_closes_without_a_byte_and_one_warning(servers: Servers, name: str) -> None:
    payload, reason = BAD_INPUT[name]
    mark = servers.plain.mark()
    peer = send_and_assert_closed_silently(servers.plain.address, "127.0.0.1", payload)
    assert_one_warning(mark, peer, reason)


def test_header_from_an_untrusted_peer_is_refused(servers: Servers) -> None:
    mark = servers.plain.mark()
    peer = send_and_assert_closed_silently(
        servers.plain.address, "127.0.0.2", encode_v2(CLIENT, DESTINATION) + b"GET / HTTP/1.1"
    )
    assert_one_warning(mark, peer, r"PROXY header from 127\.0\.0\.2, which is not trusted")


def test_bad_input_before_tls_is_refused_the_same_way(servers: Servers) -> None:
    payload, reason = BAD_INPUT["v1-leading-zero"]
    mark = servers.tls.mark()
    peer = send_and_assert_closed_silently(servers.tls.address, "127.0.0.1", payload)
    assert_one_warning(mark, peer, reason)


def test_a_failed_tls_handshake_after_the_header_closes_and_is_logged(servers: Servers) -> None:
    mark = servers.tls.mark()
    header = encode_v1(CLIENT, DESTINATION)
    peer = send_and_assert_closed_silently(
        servers.tls.address, "127.0.0.1", header + b"GET / HTTP/1.1\r\n\r\n"
    )
    assert_one_warning(mark, peer, "TLS handshake after the PROXY header failed")


def test_an_incomplete_header_times_out(servers: Servers) -> None:
    mark = servers.plain.mark()
    partial = {
        "v1": encode_v1(CLIENT, DESTINATION)[:20],
        "v2": encode_v2(CLIENT, DESTINATION)[:20],
    }
    closed_after, peers = times_until_closed(servers.plain.address, partial)
    for name, seconds in closed_after.items():
        assert TIMEOUT <= seconds < TIMEOUT + 3, (name, seconds)
        host, port = peers[name]
        mark.wait_for(rf"{WARNING} {host}:{port}: no complete PROXY header within {TIMEOUT} s")
    assert len(mark.lines(WARNING)) == 2


def test_a_peer_that_leaves_mid_header_is_not_logged(servers: Servers) -> None:
    mark = servers.plain.mark()
    for server in (servers.plain, servers.tls):
        with open_from("127.0.0.1", server.address) as sock:
            sock.sendall(encode_v1(CLIENT, DESTINATION)[:10])
            time.sleep(0.1)
            sock.shutdown(socket.SHUT_WR)
            received, end = drain(sock, timeout=5)
        assert (received, end) == (b"", "eof")
    time.sleep(0.3)
    assert mark.lines(WARNING) == []


# --- the library's own serve with create_connection= ---------------------------------------


@pytest.fixture(scope="module", params=SERVERS)
def library_serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebSocketServer]:
    """The library's ``serve(..., create_connection=ProxyProtocolConnection)``."""
    workdir = tmp_path_factory.mktemp("websockets-library")
    with WebSocketServer(workdir, request.param, library_serve=True) as server:
        yield server


def test_the_library_serve_with_create_connection(library_serve: WebSocketServer) -> None:
    result = session(library_serve.address, "127.0.0.1", encode_v2(CLIENT, DESTINATION), pieces=2)
    assert_seen_everywhere(result, list(CLIENT))
    mark = library_serve.mark()
    payload, reason = BAD_INPUT["missing-header"]
    peer = send_and_assert_closed_silently(library_serve.address, "127.0.0.1", payload)
    assert_one_warning(mark, peer, reason)


@pytest.mark.parametrize("server", SERVERS)
def test_a_bad_setting_stops_the_server_at_start_naming_it(server: str) -> None:
    port = str(free_port())
    argv = [sys.executable, "-m", "tests.websockets_server", server, "--port", port]
    for env, named in (
        ({"PROXYPROTO_MODE": "sometimes"}, "PROXYPROTO_MODE"),
        ({"PROXYPROTO_TRUSTED": "127.0.0.300"}, "PROXYPROTO_TRUSTED"),
    ):
        finished = run_to_exit(argv, env)
        assert finished.returncode != 0
        assert named in finished.stderr


# --- your own connection class, in process -------------------------------------------------

LOOPBACK_POLICY = TrustPolicy("127.0.0.1")


class TaggedAsyncioConnection(websockets.asyncio.server.ServerConnection):
    """A user's own connection class, with an attribute of its own."""

    tag = "asyncio-mine"


class TaggedSyncConnection(websockets.sync.server.ServerConnection):
    """A user's own connection class, with an attribute of its own."""

    tag = "sync-mine"


async def _tagged_handler(connection: websockets.asyncio.server.ServerConnection) -> None:
    tagged = isinstance(connection, TaggedAsyncioConnection)
    await connection.send(json.dumps([tagged, getattr(connection, "tag", None)]))
    await connection.send(json.dumps(connection.remote_address))


async def _first_messages(port: int, count: int) -> list[object]:
    sock = open_from("127.0.0.1", ("127.0.0.1", port))
    sock.sendall(encode_v1(CLIENT, DESTINATION))
    async with websocket_connect(
        f"ws://127.0.0.1:{port}/", sock=sock, proxy=None, open_timeout=5, ping_interval=None
    ) as websocket:
        return [json.loads(await websocket.recv()) for _ in range(count)]


def test_your_own_asyncio_connection_class_reads_the_header_too() -> None:
    async def run() -> list[object]:
        async with proxyproto_mw.websockets.serve(
            _tagged_handler,
            "127.0.0.1",
            0,
            policy=LOOPBACK_POLICY,
            create_connection=TaggedAsyncioConnection,
        ) as server:
            return await _first_messages(server.sockets[0].getsockname()[1], 2)

    tagged, remote = asyncio.run(asyncio.wait_for(run(), 15))
    assert tagged == [True, "asyncio-mine"]
    assert remote == list(CLIENT)


def test_your_own_sync_connection_class_reads_the_header_too() -> None:
    def handler(connection: websockets.sync.server.ServerConnection) -> None:
        tagged = isinstance(connection, TaggedSyncConnection)
        connection.send(json.dumps([tagged, getattr(connection, "tag", None)]))
        connection.send(json.dumps(connection.remote_address))

    with proxyproto_mw.websockets.sync.serve(
        handler,
        "127.0.0.1",
        0,
        policy=LOOPBACK_POLICY,
        create_connection=TaggedSyncConnection,
    ) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            tagged, remote = asyncio.run(asyncio.wait_for(_first_messages(port, 2), 15))
        finally:
            server.shutdown()
            thread.join(10)
    assert tagged == [True, "sync-mine"]
    assert remote == list(CLIENT)


@pytest.mark.parametrize(
    "serve", [proxyproto_mw.websockets.serve, proxyproto_mw.websockets.sync.serve]
)
def test_create_connection_must_be_a_server_connection(serve: Any) -> None:
    with pytest.raises(TypeError, match="must be a subclass of websockets"):
        serve(_tagged_handler, "127.0.0.1", 0, policy=LOOPBACK_POLICY, create_connection=dict)


def _abandoned_header(
    policy: TrustPolicy, open_timeout: float, partial: bytes
) -> tuple[tuple[str, int], bytes, str, float]:
    """The asyncio server with ``policy`` and ``open_timeout`` sent ``partial`` (part of a
    header) and nothing more: our address, what came back, how it ended, after how long."""

    async def run() -> tuple[tuple[str, int], bytes, str, float]:
        async with proxyproto_mw.websockets.serve(
            _tagged_handler, "127.0.0.1", 0, policy=policy, open_timeout=open_timeout
        ) as server:
            port = server.sockets[0].getsockname()[1]
            sock = open_from("127.0.0.1", ("127.0.0.1", port))
            sock.sendall(partial)
            started = time.monotonic()
            received, end = await asyncio.to_thread(drain, sock, 10)
            seconds = time.monotonic() - started
            peer = local_address(sock)
            sock.close()
            return peer, received, end, seconds

    return asyncio.run(asyncio.wait_for(run(), 20))


def test_an_open_timeout_shorter_than_the_header_timeout_is_logged_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The asyncio server's handshake (under ``open_timeout``) starts with the connection,
    as without a header: when it runs out first, the header timeout's line says so."""

    with caplog.at_level("WARNING", logger="proxyproto_mw"):
        peer, received, end, seconds = _abandoned_header(
            TrustPolicy("127.0.0.1", timeout=30), 1, encode_v1(CLIENT, DESTINATION)[:12]
        )
    assert (received, end) == (b"", "eof")
    assert 1 <= seconds < 5
    (line,) = [r.getMessage() for r in caplog.records if r.name == "proxyproto_mw"]
    found = re.fullmatch(
        rf"closing connection from {re.escape(peer[0])}:{peer[1]}: no complete PROXY header "
        r"within websockets' open_timeout \(([0-9.]+) s\)",
        line,
    )
    assert found is not None, line
    assert 1 <= float(found.group(1)) < 5


def test_an_open_timeout_equal_to_the_header_timeout_ends_the_header_as_in_other_adapters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no timer of the adapter's own (the library's open_timeout is no longer than the
    header timeout), a header that never completes is logged with the usual line."""

    with caplog.at_level("WARNING", logger="proxyproto_mw"):
        peer, received, end, seconds = _abandoned_header(
            TrustPolicy("127.0.0.1", timeout=3), 3, encode_v2(CLIENT, DESTINATION)[:20]
        )
    assert (received, end) == (b"", "eof")
    assert 2.9 <= seconds < 6
    lines = [r.getMessage() for r in caplog.records if r.name == "proxyproto_mw"]
    assert lines == [
        f"closing connection from {peer[0]}:{peer[1]}: no complete PROXY header within 3 s "
        "(20 bytes received)"
    ]
