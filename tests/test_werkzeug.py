"""End to end: werkzeug's development server with ``proxyproto_mw.werkzeug`` behind real senders.

Every server here is a subprocess started the way a user starts it: a short script calling
``proxyproto_mw.werkzeug.run_simple`` (or ``werkzeug.serving.run_simple`` with our request
handler) on :mod:`tests.wsgi_apps`, which answers with JSON of what its environ says. The
senders are raw sockets and HAProxy, each client bound to its own loopback address so that
the address the app sees can only have come from the header.

werkzeug 3 ends every connection after one response (``Connection: close``, then it discards
what the client sent next: pallets/werkzeug#2399). The keep-alive tests run a handler
subclass that undoes both, as werkzeug behaved before 2.1.2, to show that every request of
a connection keeps the connection's address.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyproto_mw import Command, encode_v1, encode_v2
from tests.clients import (
    BAD_INPUT,
    CLIENT,
    CLIENT6,
    DESTINATION,
    DESTINATION6,
    JSON,
    UNKNOWN_AND_LOCAL,
    WARNING,
    Address,
    HttpReader,
    assert_closed_silently,
    assert_one_warning,
    assert_v2_extension,
    drain,
    exchange,
    local_address,
    open_from,
    request,
    send_and_assert_closed_silently,
    times_until_closed,
    v2_tlvs,
)
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
from tests.servers import AppServer, clean_environment, run_to_exit

pytestmark = pytest.mark.timeout(60)

SERVE = """\
from proxyproto_mw.werkzeug import run_simple
from tests.wsgi_apps import app

run_simple({host!r}, {port}, app{extra})
"""
"""How a user serves an app: our ``run_simple``, threaded, policy from ``PROXYPROTO_*``
(``extra``: more keyword arguments)."""

SERVE_FLASK = """\
from proxyproto_mw import TrustPolicy
from proxyproto_mw.werkzeug import run_simple
from tests.wsgi_apps import flask_app

run_simple({host!r}, {port}, flask_app, policy=TrustPolicy(trusted="127.0.0.0/8", timeout=5))
"""
"""A Flask app with the policy given in code (no ``PROXYPROTO_*`` variable is set)."""

SERVE_KEEP_ALIVE = """\
import io

import werkzeug.serving

from proxyproto_mw.werkzeug import ProxyProtocolRequestHandler
from tests.wsgi_apps import app


class KeepAlive(ProxyProtocolRequestHandler):
    # werkzeug 3 ends every connection after one response: it sends "Connection: close",
    # then discards whatever the client sent next. Without both, HTTP/1.1 connections
    # stay open for the next request, as in werkzeug before 2.1.2.
    def send_header(self, keyword, value):
        if keyword.lower() != "connection" or value.lower() != "close":
            super().send_header(keyword, value)

    def make_environ(self):
        environ = super().make_environ()
        self.connection_rfile, self.rfile = self.rfile, io.BytesIO()  # what werkzeug discards
        return environ

    def run_wsgi(self):
        try:
            super().run_wsgi()
        finally:
            self.rfile = getattr(self, "connection_rfile", self.rfile)


werkzeug.serving.run_simple({host!r}, {port}, app, threaded=True, request_handler=KeepAlive)
"""
"""werkzeug's own ``run_simple`` with a subclass of our handler (policy from the environment)."""


class Werkzeug(AppServer):
    """A werkzeug development server running ``script`` from the repository root."""

    def __init__(
        self,
        workdir: Path,
        script: str = SERVE,
        *,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        name: str = "werkzeug",
    ) -> None:
        port = free_port(host)
        super().__init__(
            [sys.executable, "-c", script.format(host=host, port=port, extra="")],
            workdir,
            host=host,
            port=port,
            name=f"{name}-{port}",
            env=env,
        )


def _no_errors(server: Werkzeug) -> None:
    output = server.stderr()
    assert "Traceback" not in output, output
    assert "Error on request" not in output, output


@pytest.fixture(scope="module")
def lan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Werkzeug]:
    """Trusts 127.0.0.0/8, header required."""
    with Werkzeug(tmp_path_factory.mktemp("lan"), env={"PROXYPROTO_TRUSTED": "127.0.0.0/8"}) as s:
        yield s
    _no_errors(s)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Werkzeug]:
    """Trusts 127.0.0.1 only, requires the header, allows it 3 s."""
    env = {"PROXYPROTO_TRUSTED": "127.0.0.1", "PROXYPROTO_TIMEOUT": "3"}
    with Werkzeug(tmp_path_factory.mktemp("strict"), env=env) as server:
        yield server
    _no_errors(server)


@pytest.fixture(scope="module")
def keep_alive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Werkzeug]:
    """werkzeug's run_simple with a keep-alive subclass of the handler, trusting 127.0.0.0/8."""
    server = Werkzeug(
        tmp_path_factory.mktemp("keep-alive"),
        SERVE_KEEP_ALIVE,
        env={"PROXYPROTO_TRUSTED": "127.0.0.0/8"},
        name="keep-alive",
    )
    with server:
        yield server
    _no_errors(server)


# --- 1. what the environ says -----------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_environ_has_the_header_addresses(lan_server: Werkzeug, version: int) -> None:
    header = (encode_v1 if version == 1 else encode_v2)(CLIENT, DESTINATION)
    mark = lan_server.mark()
    response, local = exchange(lan_server.address, "127.0.0.2", header + request(f"/v{version}"))
    assert response.status == 200
    assert response.headers["connection"] == "close"  # werkzeug 3: one request per connection
    environ = response.json()
    assert environ["remote_addr"] == CLIENT[0]
    assert environ["remote_port"] == CLIENT[1]
    assert environ["server_name"] == DESTINATION[0]
    assert environ["server_port"] == str(DESTINATION[1])
    assert environ["scheme"] == "http"
    assert environ["protocol"] == "HTTP/1.1"
    assert environ["path"] == f"/v{version}"
    extension = environ["proxy_protocol"]
    assert extension["version"] == version
    assert extension["command"] == "PROXY"
    assert extension["client"] == list(CLIENT)
    assert extension["server"] == list(DESTINATION)
    assert extension["peer"] == list(local)
    assert extension["ssl"] is None
    # werkzeug's access log names the header's client too
    mark.wait_for(rf'^198\.51\.100\.22 - - \[.*\] "GET /v{version} HTTP/1\.1" 200')


def test_ssl_tlv_makes_the_scheme_https(lan_server: Werkzeug) -> None:
    header = encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    response, local = exchange(lan_server.address, "127.0.0.3", header + request("/tls"))
    environ = response.json()
    assert environ["scheme"] == "https"
    assert environ["remote_addr"] == CLIENT[0]
    assert_v2_extension(environ["proxy_protocol"], local)


@pytest.mark.parametrize("version", [1, 2])
def test_ipv6_header_client(lan_server: Werkzeug, version: int) -> None:
    header = (encode_v1 if version == 1 else encode_v2)(CLIENT6, DESTINATION6)
    response, _ = exchange(lan_server.address, "127.0.0.2", header + request())
    environ = response.json()
    assert environ["remote_addr"] == CLIENT6[0]
    assert environ["remote_port"] == CLIENT6[1]
    assert environ["server_name"] == DESTINATION6[0]
    assert environ["server_port"] == str(DESTINATION6[1])


@pytest.mark.parametrize(
    "header, version, command", UNKNOWN_AND_LOCAL.values(), ids=UNKNOWN_AND_LOCAL.keys()
)
def test_unknown_and_local_use_the_socket_address(
    lan_server: Werkzeug, header: bytes, version: int, command: str
) -> None:
    response, local = exchange(lan_server.address, "127.0.0.2", header + request("/local"))
    environ = response.json()
    assert local[0] == "127.0.0.2"
    assert environ["remote_addr"] == local[0]
    assert environ["remote_port"] == local[1]
    assert environ["server_name"] == lan_server.host
    assert environ["server_port"] == str(lan_server.port)
    extension = environ["proxy_protocol"]
    assert extension["version"] == version
    assert extension["command"] == command
    assert extension["client"] is None
    assert extension["peer"] == list(local)


def test_unix_family_header_has_no_client_address(lan_server: Werkzeug) -> None:
    header = encode_v2(unix=(b"/run/client.sock", b"/run/app.sock"))
    response, _ = exchange(lan_server.address, "127.0.0.2", header + request())
    environ = response.json()
    assert environ["remote_addr"] == "<local>"  # as werkzeug says of its own UNIX sockets
    assert environ["proxy_protocol"]["client"] is None


def test_header_in_pieces_then_a_large_body(lan_server: Werkzeug) -> None:
    header = encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    body = hashlib.sha256(b"seed").digest() * 8192 + b"\r\n\r\nPROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"
    with open_from("127.0.0.2", lan_server.address) as sock:
        for offset in range(0, len(header), 7):
            sock.sendall(header[offset : offset + 7])
            time.sleep(0.005)
        sock.sendall(request("/pieces", method="POST", body=body))
        environ = HttpReader(sock).response().json()
    assert environ["remote_addr"] == CLIENT[0]
    assert environ["body_length"] == len(body)
    assert environ["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_second_header_is_application_data(lan_server: Werkzeug) -> None:
    second = encode_v1(("192.0.2.66", 6666), DESTINATION)
    with open_from("127.0.0.2", lan_server.address) as sock:
        sock.sendall(encode_v1(CLIENT, DESTINATION) + second + request())
        received, _ = drain(sock, timeout=5)
    assert b"192.0.2.66" not in received
    # http.server answers a request line it cannot parse with an error page (and, taking
    # it for HTTP/0.9, no status line).
    assert b"Error code: 400" in received


# --- 2. keep-alive: every request of a connection --------------------------------------


SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""Each client connects from its own address."""
REQUESTS_PER_CONNECTION = 20


def test_keep_alive_requests_keep_their_connections_address(keep_alive_server: Werkzeug) -> None:
    """Three connections from three sources, each with its own header, 20 requests each,
    interleaved: every response names its own connection's client."""
    clients = {source: (f"198.51.100.{source[-1]}", 40000 + int(source[-1])) for source in SOURCES}
    sockets = {source: open_from(source, keep_alive_server.address) for source in SOURCES}
    try:
        readers = {source: HttpReader(sock) for source, sock in sockets.items()}
        for source, sock in sockets.items():
            header = (encode_v1 if source.endswith("3") else encode_v2)(
                clients[source], DESTINATION
            )
            sock.sendall(header)
        for number, source in itertools.product(range(REQUESTS_PER_CONNECTION), SOURCES):
            sockets[source].sendall(request(f"/{source}/{number}"))
            response = readers[source].response()
            assert "connection" not in response.headers
            environ = response.json()
            assert environ["path"] == f"/{source}/{number}"
            assert (environ["remote_addr"], environ["remote_port"]) == clients[source]
            assert environ["proxy_protocol"]["peer"] == list(local_address(sockets[source]))
    finally:
        for sock in sockets.values():
            sock.close()


# --- 3. HAProxy in front -----------------------------------------------------------------

BALANCER = {1: "127.0.0.1", 2: "127.0.0.7"}
"""The address HAProxy connects from, per PROXY version: the two trusted balancers."""
KINDS = ("stock", "keepalive")


@dataclass
class Balanced:
    """Two werkzeug servers (stock and keep-alive) behind HAProxy, v1 and v2 frontends each."""

    servers: dict[str, Werkzeug]
    frontends: dict[tuple[str, int], Address]
    stats_socket: Path

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's ``show stat``."""
        return haproxy_stats(self.stats_socket)


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balanced]:
    """The servers trust only HAProxy's addresses; health checks are on."""
    if not haproxy_available():
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI installs it")
    workdir = tmp_path_factory.mktemp("haproxy")
    env = {"PROXYPROTO_TRUSTED": ",".join(BALANCER.values())}
    servers = {
        "stock": Werkzeug(workdir, env=env, name="stock"),
        "keepalive": Werkzeug(workdir, SERVE_KEEP_ALIVE, env=env, name="keepalive"),
    }
    frontends = {
        (kind, version): ("127.0.0.1", free_port()) for kind in KINDS for version in (1, 2)
    }
    config = haproxy_defaults(workdir) + "".join(
        haproxy_proxied_pair(
            kind,
            (frontends[(kind, 1)][1], frontends[(kind, 2)][1]),
            servers[kind].port,
            check=f"/check-{kind}",
            v2_source=BALANCER[2],
        )
        for kind in KINDS
    )
    with servers["stock"], servers["keepalive"], HAProxy(config, workdir):
        balanced = Balanced(servers, frontends, workdir / STATS_SOCKET)
        backends = [f"{kind}_v{version}" for kind in KINDS for version in (1, 2)]
        wait_until_healthy(balanced.stats_socket, backends)
        yield balanced
    for server in servers.values():
        _no_errors(server)


def _assert_through_haproxy(environ: JSON, local: Address, version: int, path: str) -> None:
    assert local[0] in SOURCES
    assert environ["path"] == path
    assert environ["remote_addr"] == local[0]  # not HAProxy's 127.0.0.1
    assert environ["remote_port"] == local[1]
    extension = environ["proxy_protocol"]
    assert extension["version"] == version
    assert extension["peer"][0] == BALANCER[version]
    if version == 2:
        assert "3" in extension["tlvs"]  # crc32c, checked by the decoder
        assert extension["unique_id"]


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
class TestHAProxy:
    @pytest.mark.parametrize("version", [1, 2])
    def test_keep_alive_clients_see_their_own_address(
        self, balanced: Balanced, version: int
    ) -> None:
        frontend = balanced.frontends[("keepalive", version)]
        sockets = {source: open_from(source, frontend) for source in SOURCES}
        try:
            readers = {source: HttpReader(sock) for source, sock in sockets.items()}
            for number, source in itertools.product(range(REQUESTS_PER_CONNECTION), SOURCES):
                path = f"/r{number}"
                sockets[source].sendall(request(path))
                environ = readers[source].response().json()
                _assert_through_haproxy(environ, local_address(sockets[source]), version, path)
        finally:
            for sock in sockets.values():
                sock.close()

    @pytest.mark.parametrize("version", [1, 2])
    def test_clients_of_stock_werkzeug_see_their_own_address(
        self, balanced: Balanced, version: int
    ) -> None:
        """Stock werkzeug closes after each response: one connection per request."""
        frontend = balanced.frontends[("stock", version)]
        for number, source in itertools.product(range(REQUESTS_PER_CONNECTION), SOURCES):
            path = f"/r{number}"
            response, local = exchange(frontend, source, request(path))
            assert response.headers["connection"] == "close"
            _assert_through_haproxy(response.json(), local, version, path)

    def test_health_checks_keep_the_servers_up(self, balanced: Balanced) -> None:
        marks = {kind: server.mark() for kind, server in balanced.servers.items()}
        before = balanced.stats()
        time.sleep(1.6)  # three more checks of each backend
        after = balanced.stats()
        for kind, version in itertools.product(KINDS, (1, 2)):
            name = f"{kind}_v{version}"
            row = after[(name, "app")]
            assert row["status"] == "UP", row
            assert row["check_status"] == "L7OK", row
            assert row["chkfail"] == "0", row
            assert row["chkdown"] == "0", row
            assert int(row["lastchg"]) > int(before[(name, "app")]["lastchg"]), row
            # The v1 check carries HAProxy's own addresses, the v2 check is LOCAL: both are
            # logged with the address the check came from.
            balancer = re.escape(BALANCER[version])
            lines = marks[kind].wait_for(rf'"GET /check-{name.replace("_", "-")} HTTP/1\.0" 200')
            assert all(re.match(rf"{balancer} - - ", line) for line in lines), lines
        for server in balanced.servers.values():
            assert WARNING not in server.stderr()


# --- 4. bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("payload, reason", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_closes_without_a_byte(
    strict_server: Werkzeug, payload: bytes, reason: str
) -> None:
    mark = strict_server.mark()
    peer = send_and_assert_closed_silently(strict_server.address, "127.0.0.1", payload)
    assert_one_warning(mark, peer, reason)


def test_header_timeout(strict_server: Werkzeug) -> None:
    """Connections whose header is not complete within PROXYPROTO_TIMEOUT=3 are closed."""
    partial = {"nothing": b"", "v1": b"PROXY TCP4 1.2", "v2": encode_v2(CLIENT, DESTINATION)[:20]}
    mark = strict_server.mark()
    closed_after, peers = times_until_closed(strict_server.address, partial)
    assert set(closed_after) == set(partial)
    for name, seconds in closed_after.items():
        assert 3.0 <= seconds < 6.0, f"{name}: closed after {seconds:.2f} s"
    for name, peer in peers.items():
        received = len(partial[name])
        pattern = (
            rf"{WARNING} 127\.0\.0\.1:{peer[1]}: no complete PROXY header within 3 s "
            rf"\({received} bytes received\)"
        )
        mark.wait_for(pattern)
    assert len(mark.lines(WARNING)) == len(partial)


def test_untrusted_peer_sending_a_header_is_closed(strict_server: Werkzeug) -> None:
    for header in (encode_v1(CLIENT, DESTINATION), encode_v2(CLIENT, DESTINATION)):
        mark = strict_server.mark()
        peer = send_and_assert_closed_silently(
            strict_server.address, "127.0.0.9", header + request()
        )
        line = assert_one_warning(mark, peer, "not trusted")
        assert "add 127.0.0.9 to PROXYPROTO_TRUSTED" in line


def test_untrusted_peer_without_header_is_served_with_its_address(strict_server: Werkzeug) -> None:
    mark = strict_server.mark()
    response, local = exchange(strict_server.address, "127.0.0.9", request("/plain"))
    environ = response.json()
    assert local[0] == "127.0.0.9"
    assert environ["remote_addr"] == local[0]
    assert environ["remote_port"] == local[1]
    assert environ["server_name"] == strict_server.host
    assert environ["proxy_protocol"] is None
    assert mark.lines(WARNING) == []


def test_peer_leaving_mid_header_is_not_logged(strict_server: Werkzeug) -> None:
    """As with uvicorn: a peer that goes away has nothing wrong to report."""
    mark = strict_server.mark()
    with open_from("127.0.0.1", strict_server.address) as sock:
        sock.sendall(encode_v1(CLIENT, DESTINATION)[:12])
        time.sleep(0.05)
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert_closed_silently(sock)
        assert time.monotonic() - started < 1
    time.sleep(0.2)
    assert mark.lines(WARNING) == []


# --- IPv6 listener ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ipv6_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Werkzeug]:
    """Listens on ::1 with the default policy (trusts 127.0.0.1 and ::1, header required)."""
    if not ipv6_available():
        pytest.skip("no IPv6 loopback address")
    with Werkzeug(tmp_path_factory.mktemp("ipv6"), host="::1", name="ipv6") as server:
        yield server
    _no_errors(server)


def test_ipv6_peer(ipv6_server: Werkzeug) -> None:
    response, local = exchange(
        ipv6_server.address, "::1", encode_v1(CLIENT, DESTINATION) + request()
    )
    environ = response.json()
    assert environ["remote_addr"] == CLIENT[0]
    assert environ["proxy_protocol"]["peer"] == list(local)  # (host, port), not werkzeug's 4-tuple
    response, local = exchange(
        ipv6_server.address, "::1", encode_v2(command=Command.LOCAL) + request()
    )
    environ = response.json()
    assert (environ["remote_addr"], environ["remote_port"]) == local
    assert environ["server_name"] == "::1"
    mark = ipv6_server.mark()
    peer = send_and_assert_closed_silently(ipv6_server.address, "::1", request())
    line = assert_one_warning(mark, peer, r"no PROXY header from trusted peer ::1")
    assert f"[::1]:{peer[1]}:" in line


# --- 5. Flask, with the policy given in code -------------------------------------------


@pytest.fixture(scope="module")
def flask_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Werkzeug]:
    server = Werkzeug(tmp_path_factory.mktemp("flask"), SERVE_FLASK, name="flask")
    assert not [name for name in clean_environment() if name.startswith("PROXYPROTO_")]
    with server:
        yield server
    _no_errors(server)


def test_flask_request_remote_addr_is_the_header_client(flask_server: Werkzeug) -> None:
    response, local = exchange(
        flask_server.address, "127.0.0.2", encode_v1(CLIENT, DESTINATION) + request("/who")
    )
    view = response.json()
    assert view["remote_addr"] == CLIENT[0]
    assert view["scheme"] == "http"
    assert view["path"] == "/who"
    assert view["proxy_protocol"]["peer"] == list(local)


def test_flask_sees_https_from_the_ssl_tlv(flask_server: Werkzeug) -> None:
    header = encode_v2(CLIENT6, DESTINATION6, tlvs=v2_tlvs(), checksum=True)
    response, _ = exchange(flask_server.address, "127.0.0.3", header + request("/tls"))
    view = response.json()
    assert view["remote_addr"] == CLIENT6[0]
    assert view["scheme"] == "https"
    assert view["host_url"] == "https://test/"


def test_flask_local_header_keeps_the_socket_address(flask_server: Werkzeug) -> None:
    header = encode_v2(command=Command.LOCAL)
    response, local = exchange(flask_server.address, "127.0.0.4", header + request())
    view = response.json()
    assert view["remote_addr"] == local[0] == "127.0.0.4"
    assert view["proxy_protocol"]["command"] == "LOCAL"


# --- 6. mode off and start-up errors ----------------------------------------------------


def test_mode_off_decodes_no_header(tmp_path: Path) -> None:
    """PROXYPROTO_MODE=off: connections start with HTTP; a header is just a bad request."""
    with Werkzeug(tmp_path, env={"PROXYPROTO_MODE": "off"}) as server:
        response, local = exchange(server.address, "127.0.0.1", request("/plain"))
        assert response.json()["remote_addr"] == local[0]
        assert response.json()["proxy_protocol"] is None
        with open_from("127.0.0.1", server.address) as sock:
            sock.sendall(encode_v1(CLIENT, DESTINATION) + request())
            received, _ = drain(sock, timeout=5)
        assert CLIENT[0].encode() not in received
        assert b"Error code: 400" in received  # an error page for an unparsable request line
        assert WARNING not in server.stderr()
    _no_errors(server)


def test_start_up_says_what_the_policy_does(strict_server: Werkzeug) -> None:
    """One line at start-up, beside werkzeug's own, says that PROXY handling is on and how."""
    lines = [line for line in strict_server.stderr().splitlines() if "PROXY protocol" in line]
    assert lines == [
        "PROXY protocol on (mode require, v1 and v2): headers believed from 127.0.0.1 "
        "(PROXYPROTO_TRUSTED) within 3 s; other peers are served with their own address"
    ]


STARTUP_ERRORS = {
    "mode": ({"PROXYPROTO_MODE": "bogus"}, "", "PROXYPROTO_MODE"),
    "timeout": ({"PROXYPROTO_TIMEOUT": "1"}, "", "PROXYPROTO_TIMEOUT"),
    "trusted": ({"PROXYPROTO_TRUSTED": "not-an-ip"}, "", "PROXYPROTO_TRUSTED"),
    "server-tls": ({}, ", ssl_context='adhoc'", "ssl_context"),
    "handler": ({}, ", request_handler=object", "ProxyProtocolRequestHandler"),
}


@pytest.mark.parametrize("env, extra, expected", STARTUP_ERRORS.values(), ids=STARTUP_ERRORS.keys())
def test_bad_configuration_fails_at_start_up(
    env: dict[str, str], extra: str, expected: str
) -> None:
    port = free_port()
    script = SERVE.format(host="127.0.0.1", port=port, extra=extra)
    started = time.monotonic()
    completed = run_to_exit([sys.executable, "-c", script], env)
    assert completed.returncode != 0, completed.stderr
    assert time.monotonic() - started < 10
    assert "ConfigurationError" in completed.stderr
    assert expected in completed.stderr
    assert "Running on" not in completed.stderr
