"""End to end: ``uvicorn --http proxyproto_mw.uvicorn:...`` behind real PROXY senders.

Every server here is uvicorn in a subprocess, started from the command line a user types
(:mod:`servers`), serving :mod:`apps`, which answers with JSON of what its scope says.
The senders are raw sockets, HAProxy, curl, httpx and the ``websockets`` client, each
bound to its own loopback address so that the address the app sees can only have come
from the header. Servers are started once per module or class and shared by the tests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyproto_mw import Command, encode_v1, encode_v2
from proxyproto_mw.decoder import ACCELERATED
from tests.clients import (
    BAD_INPUT,
    CLIENT,
    CLIENT6,
    DESTINATION,
    DESTINATION6,
    UNKNOWN_AND_LOCAL,
    WARNING,
    Address,
    HttpReader,
    assert_one_warning,
    assert_v2_extension,
    assert_websocket_echoes,
    client_address,
    drain,
    exchange,
    httpx_client,
    local_address,
    open_from,
    request,
    send_and_assert_closed_silently,
    times_until_closed,
    v2_tlvs,
    websocket_session,
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
from tests.servers import REPOSITORY, Uvicorn, clean_environment, run_to_exit, uvicorn_argv

pytestmark = pytest.mark.timeout(60)

# --- servers ----------------------------------------------------------------------------

HTTP_CLASSES = ("HttpToolsProtocol", "H11Protocol")
WS_PROTOCOLS = ("websockets", "websockets-sansio", "wsproto")
LOOPS = ("asyncio", "uvloop")


def _no_errors(server: Uvicorn) -> None:
    for output in (server.stderr(), server.stdout()):
        assert "Traceback" not in output, output
        assert "ERROR" not in output, output


PURE_PYTHON = ("HttpToolsProtocol", "websockets-sansio", "uvloop", "pure-python")
"""The adapter without its C accelerator (``PROXYPROTO_NO_EXTENSIONS=1``): the Python
reference of the header phase and the view serve every connection."""


@pytest.fixture(
    scope="module",
    params=[*itertools.product(HTTP_CLASSES, WS_PROTOCOLS, LOOPS), PURE_PYTHON],
    ids="-".join,
)
def matrix_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Uvicorn]:
    """One uvicorn per --http x --ws x --loop, trusting 127.0.0.0/8 (and one without the C
    accelerator)."""
    http, ws, loop, *pure = request.param
    server = Uvicorn(
        tmp_path_factory.mktemp("matrix"),
        http=http,
        ws=ws,
        loop=loop,
        env={"PROXYPROTO_TRUSTED": "127.0.0.0/8"}
        | ({"PROXYPROTO_NO_EXTENSIONS": "1"} if pure else {}),
    )
    with server:
        loaded = "_speedups" in Path(f"/proc/{server.pid}/maps").read_text()
        assert loaded is (ACCELERATED and not pure), f"C accelerator loaded: {loaded}"
        yield server
    _no_errors(server)


@pytest.fixture(scope="module")
def lan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    """httptools on uvloop, trusting 127.0.0.0/8, header required."""
    server = Uvicorn(
        tmp_path_factory.mktemp("lan"),
        http="HttpToolsProtocol",
        ws="websockets-sansio",
        loop="uvloop",
        env={"PROXYPROTO_TRUSTED": "127.0.0.0/8", "PROXYPROTO_MODE": "require"},
    )
    with server:
        yield server
    _no_errors(server)


@pytest.fixture(
    scope="module",
    params=[("HttpToolsProtocol", "asyncio"), ("H11Protocol", "uvloop")],
    ids=["httptools-asyncio", "h11-uvloop"],
)
def strict_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Uvicorn]:
    """Trusts 127.0.0.1 only, requires the header, allows it 3 s."""
    http, loop = request.param
    server = Uvicorn(
        tmp_path_factory.mktemp("strict"),
        http=http,
        loop=loop,
        env={"PROXYPROTO_TRUSTED": "127.0.0.1", "PROXYPROTO_TIMEOUT": "3"},
    )
    with server:
        yield server
    _no_errors(server)


@pytest.fixture(scope="module")
def optional_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    """Trusts 127.0.0.1 and 127.0.0.2, header optional."""
    server = Uvicorn(
        tmp_path_factory.mktemp("optional"),
        http="H11Protocol",
        ws="wsproto",
        env={"PROXYPROTO_TRUSTED": "127.0.0.1, 127.0.0.2", "PROXYPROTO_MODE": "optional"},
    )
    with server:
        yield server
    _no_errors(server)


# --- 1. every --http x --ws x --loop ------------------------------------------------------


def test_keep_alive_requests_see_the_v1_header_addresses(matrix_server: Uvicorn) -> None:
    with open_from("127.0.0.2", matrix_server.address) as sock:
        reader = HttpReader(sock)
        sock.sendall(encode_v1(CLIENT, DESTINATION) + request("/first"))
        first = reader.response()
        sock.sendall(request("/second?keep=alive"))
        second = reader.response()
        local = local_address(sock)
    for response, path in ((first, "/first"), (second, "/second")):
        assert response.status == 200
        scope = response.json()
        assert scope["client"] == list(CLIENT)
        assert scope["server"] == list(DESTINATION)
        assert scope["scheme"] == "http"
        assert scope["path"] == path
        extension = scope["proxy_protocol"]
        assert extension["version"] == 1
        assert extension["command"] == "PROXY"
        assert extension["client"] == list(CLIENT)
        assert extension["server"] == list(DESTINATION)
        assert extension["peer"] == list(local)
        assert extension["ssl"] is None


def test_websocket_sees_the_v2_header_and_its_tlvs(matrix_server: Uvicorn) -> None:
    header = encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    result = websocket_session(matrix_server.address, "127.0.0.2", header)
    scope = result.scope
    assert scope["type"] == "websocket"
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["scheme"] == "wss"  # the SSL TLV says the client used TLS
    assert_v2_extension(scope["proxy_protocol"], result.local)
    assert_websocket_echoes(result)


def test_http_over_v2_header_is_https(matrix_server: Uvicorn) -> None:
    header = encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    response, local = exchange(matrix_server.address, "127.0.0.3", header + request("/tls"))
    scope = response.json()
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["scheme"] == "https"
    assert_v2_extension(scope["proxy_protocol"], local)


# --- 2. HAProxy in front ------------------------------------------------------------------

BACKENDS = ("uvicorn_v1", "uvicorn_v2")
BALANCER = {1: "127.0.0.1", 2: "127.0.0.7"}
"""The address HAProxy connects to uvicorn from, per backend: two trusted balancers."""
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""Each client of HAProxy connects from its own address."""


@dataclass
class Balanced:
    """uvicorn behind HAProxy: a v1 frontend and a v2 frontend."""

    server: Uvicorn
    haproxy: HAProxy
    v1: Address
    v2: Address
    stats_socket: Path

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's ``show stat``."""
        return haproxy_stats(self.stats_socket)


@pytest.fixture(scope="class")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balanced]:
    """uvicorn trusting only HAProxy's addresses, behind HAProxy with health checks on."""
    if not haproxy_available():
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI installs it")
    workdir = tmp_path_factory.mktemp("haproxy")
    server = Uvicorn(
        workdir,
        http="HttpToolsProtocol",
        ws="websockets",
        loop="uvloop",
        env={"PROXYPROTO_TRUSTED": ",".join(BALANCER.values())},
    )
    v1_port, v2_port = free_port(), free_port()
    config = haproxy_defaults(workdir) + haproxy_proxied_pair(
        "uvicorn", (v1_port, v2_port), server.port, v2_source=BALANCER[2]
    )
    with server, HAProxy(config, workdir) as haproxy:
        balanced = Balanced(
            server, haproxy, ("127.0.0.1", v1_port), ("127.0.0.1", v2_port), workdir / STATS_SOCKET
        )
        wait_until_healthy(balanced.stats_socket, BACKENDS)
        yield balanced
    _no_errors(server)


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
class TestHAProxy:
    @pytest.mark.parametrize("version", [1, 2])
    def test_each_client_sees_its_own_address_over_keep_alive(
        self, balanced: Balanced, version: int
    ) -> None:
        frontend = balanced.v1 if version == 1 else balanced.v2
        clients = {source: httpx_client(source) for source in SOURCES}
        connections: dict[str, set[Address]] = {source: set() for source in SOURCES}
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
                    extension = scope["proxy_protocol"]
                    assert extension["version"] == version
                    assert extension["peer"][0] == BALANCER[version]
                    if version == 2:
                        assert "3" in extension["tlvs"]  # crc32c, checked by the decoder
                        assert "5" in extension["tlvs"]  # unique-id
                        assert extension["unique_id"]
        finally:
            for client in clients.values():
                client.close()
        # keep-alive: each client sent its three requests over one connection
        assert all(len(addresses) == 1 for addresses in connections.values()), connections

    @pytest.mark.parametrize("version", [1, 2])
    def test_websocket_client_sees_its_own_address(self, balanced: Balanced, version: int) -> None:
        frontend = balanced.v1 if version == 1 else balanced.v2
        for source in SOURCES:
            result = websocket_session(frontend, source)
            assert result.local[0] == source
            assert result.scope["type"] == "websocket"
            assert result.scope["client"] == list(result.local)
            assert result.scope["server"] == list(frontend)
            assert result.scope["scheme"] == "ws"
            assert result.scope["proxy_protocol"]["version"] == version
            assert_websocket_echoes(result)

    def test_health_checks_keep_the_server_up(self, balanced: Balanced) -> None:
        access = balanced.server.access_mark()
        before = balanced.stats()
        time.sleep(1.6)  # three more checks of each backend
        after = balanced.stats()
        for name in BACKENDS:
            row = after[(name, "app")]
            assert row["status"] == "UP", row
            assert row["check_status"] == "L7OK", row
            assert row["chkfail"] == "0", row
            assert row["chkdown"] == "0", row
            assert int(row["lastchg"]) > int(before[(name, "app")]["lastchg"]), row
        assert WARNING not in balanced.server.stderr()
        # The v1 check carries HAProxy's own addresses, the v2 check is LOCAL: both are
        # served with the address the check came from.
        for version, path in ((1, "/check-v1"), (2, "/check-v2")):
            lines = access.wait_for(rf'"GET {path} HTTP/1\.0" 200', count=2)
            balancer = re.escape(BALANCER[version])
            assert all(re.search(rf'{balancer}:\d+ - "GET {path} ', line) for line in lines)
        with httpx_client("127.0.0.2") as client:
            response = client.get(f"http://127.0.0.1:{balanced.v2[1]}/after-checks")
        assert response.json()["client"][0] == "127.0.0.2"
        assert response.json()["proxy_protocol"]["peer"][0] == BALANCER[2]


# --- 3. curl --haproxy-protocol -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_haproxy_protocol(lan_server: Uvicorn) -> None:
    completed = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "5",
            "--noproxy",
            "*",
            "--haproxy-protocol",
            "--interface",
            "127.0.0.5",
            f"{lan_server.url}/curl",
        ],
        capture_output=True,
        timeout=10,
        check=True,
    )
    scope = json.loads(completed.stdout)
    assert scope["client"][0] == "127.0.0.5"
    assert scope["server"] == [lan_server.host, lan_server.port]
    assert scope["proxy_protocol"]["version"] == 1
    assert scope["proxy_protocol"]["peer"] == scope["client"]


# --- 4. uvicorn's access log ---------------------------------------------------------------


def test_access_log_shows_the_header_client(lan_server: Uvicorn) -> None:
    access = lan_server.access_mark()
    response, _ = exchange(
        lan_server.address, "127.0.0.2", encode_v1(CLIENT, DESTINATION) + request("/logged")
    )
    assert response.status == 200
    # uvicorn's default logging configuration writes the access log to stdout.
    (line,) = access.wait_for(r'"GET /logged HTTP/1\.1" 200')
    assert '198.51.100.22:35646 - "GET /logged HTTP/1.1" 200' in line


def test_access_log_shows_ipv6_header_client(lan_server: Uvicorn) -> None:
    access = lan_server.access_mark()
    header = encode_v2(CLIENT6, DESTINATION6)
    response, _ = exchange(lan_server.address, "127.0.0.2", header + request("/logged6"))
    scope = response.json()
    assert scope["client"] == list(CLIENT6)
    assert scope["server"] == list(DESTINATION6)
    access.wait_for(r'2001:db8::22:50123 - "GET /logged6 HTTP/1\.1" 200')


# --- 5. bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload, reason", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_closes_without_a_byte(
    strict_server: Uvicorn, payload: bytes, reason: str
) -> None:
    mark = strict_server.mark()
    peer = send_and_assert_closed_silently(strict_server.address, "127.0.0.1", payload)
    assert_one_warning(mark, peer, reason)


def test_header_timeout(strict_server: Uvicorn) -> None:
    """Connections whose header is not complete within PROXYPROTO_TIMEOUT=3 are closed."""
    partial = {"nothing": b"", "v1": b"PROXY TCP4 1.2", "v2": encode_v2(CLIENT, DESTINATION)[:20]}
    mark = strict_server.mark()
    closed_after, peers = times_until_closed(strict_server.address, partial)
    for name, seconds in closed_after.items():
        assert 3.0 <= seconds < 6.0, f"{name}: closed after {seconds:.2f} s"
    assert set(closed_after) == set(partial)
    time.sleep(0.1)
    lines = mark.lines(WARNING)
    assert len(lines) == len(partial), lines
    for name, peer in peers.items():
        received = len(partial[name])
        pattern = (
            rf"{WARNING} 127\.0\.0\.1:{peer[1]}: no complete PROXY header within 3 s "
            rf"\({received} bytes received\)"
        )
        assert [line for line in lines if re.search(pattern, line)], (pattern, lines)


def test_untrusted_peer_sending_a_header_is_closed(strict_server: Uvicorn) -> None:
    for header in (encode_v1(CLIENT, DESTINATION), encode_v2(CLIENT, DESTINATION)):
        mark = strict_server.mark()
        peer = send_and_assert_closed_silently(
            strict_server.address, "127.0.0.9", header + request()
        )
        line = assert_one_warning(mark, peer, "not trusted")
        assert "PROXYPROTO_TRUSTED" in line


def test_untrusted_peer_without_header_is_served_with_its_address(strict_server: Uvicorn) -> None:
    mark = strict_server.mark()
    response, local = exchange(strict_server.address, "127.0.0.9", request("/plain"))
    scope = response.json()
    assert local[0] == "127.0.0.9"
    assert scope["client"] == list(local)
    assert scope["server"] == [strict_server.host, strict_server.port]
    assert scope["proxy_protocol"] is None
    assert mark.lines(WARNING) == []


def test_optional_mode(optional_server: Uvicorn) -> None:
    mark = optional_server.mark()
    plain, local = exchange(optional_server.address, "127.0.0.2", request("/plain"))
    assert plain.json()["client"] == list(local)
    assert plain.json()["proxy_protocol"] is None
    proxied, _ = exchange(
        optional_server.address, "127.0.0.2", encode_v1(CLIENT, DESTINATION) + request("/proxied")
    )
    assert proxied.json()["client"] == list(CLIENT)
    assert proxied.json()["server"] == list(DESTINATION)
    result = websocket_session(optional_server.address, "127.0.0.1")
    assert result.scope["client"] == list(result.local)
    assert_websocket_echoes(result)
    assert mark.lines(WARNING) == []
    # optional applies to trusted peers only: an untrusted one's header still closes
    peer = send_and_assert_closed_silently(
        optional_server.address, "127.0.0.9", encode_v1(CLIENT, DESTINATION) + request()
    )
    assert_one_warning(mark, peer, "PROXYPROTO_TRUSTED")


def test_mode_off_decodes_no_header(tmp_path: Path) -> None:
    """PROXYPROTO_MODE=off: connections start with HTTP; a header is just a bad request."""
    with Uvicorn(tmp_path, env={"PROXYPROTO_MODE": "off"}) as server:
        response, local = exchange(server.address, "127.0.0.1", request("/plain"))
        assert response.json()["client"] == list(local)
        assert response.json()["proxy_protocol"] is None
        with open_from("127.0.0.1", server.address) as sock:
            sock.sendall(encode_v1(CLIENT, DESTINATION) + request())
            received, _ = drain(sock, timeout=5)
        assert CLIENT[0].encode() not in received
        assert HttpReader(None, received).response().status == 400
        assert WARNING not in server.stderr()
    _no_errors(server)


# --- 6. only the first header counts ---------------------------------------------------------


SECOND: Address = ("192.0.2.66", 6666)


@pytest.mark.parametrize("second_version", [1, 2])
@pytest.mark.parametrize("when", ["with-the-first", "after-a-request"])
def test_second_header_is_application_data(
    matrix_server: Uvicorn, second_version: int, when: str
) -> None:
    encode = encode_v1 if second_version == 1 else encode_v2
    second = encode(SECOND, DESTINATION) + request("/after-second-header")
    with open_from("127.0.0.2", matrix_server.address) as sock:
        first = encode_v1(CLIENT, DESTINATION)
        if when == "after-a-request":
            reader = HttpReader(sock)
            sock.sendall(first + request("/first"))
            assert reader.response().json()["client"] == list(CLIENT)
            sock.sendall(second)
            received = bytes(reader.buffer) + drain(sock, timeout=5)[0]
        else:
            sock.sendall(first + second)
            received = drain(sock, timeout=5)[0]
    # uvicorn answers 400 (or closes): the second header is not HTTP, and never an address.
    assert SECOND[0].encode() not in received
    if received:
        response = HttpReader(None, received).response()
        assert response.status == 400, received


# --- 7. bytes after the header ---------------------------------------------------------------


def test_pipelined_requests_after_the_header(matrix_server: Uvicorn) -> None:
    body = bytes(range(256)) * 40 + b"\r\n\r\nPROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"
    first = request("/first", method="POST", body=body)
    second = request("/second", method="POST", body=body[::-1])
    with open_from("127.0.0.2", matrix_server.address) as sock:
        reader = HttpReader(sock)
        sock.sendall(encode_v1(CLIENT, DESTINATION) + first + second[:7])
        time.sleep(0.05)
        sock.sendall(second[7:])
        responses = [reader.response(), reader.response()]
    for response, path, sent in zip(
        responses, ("/first", "/second"), (body, body[::-1]), strict=True
    ):
        scope = response.json()
        assert scope["path"] == path
        assert scope["client"] == list(CLIENT)
        assert scope["body_length"] == len(sent)
        assert scope["body_sha256"] == hashlib.sha256(sent).hexdigest()


def test_large_body_after_the_header(matrix_server: Uvicorn) -> None:
    """Flow control (pause_reading / resume_reading) works through the proxied transport."""
    body = hashlib.sha256(b"seed").digest() * (4 * 1024 * 1024 // 32)
    header = encode_v2(CLIENT, DESTINATION, checksum=True)
    with open_from("127.0.0.2", matrix_server.address, timeout=20) as sock:
        sock.sendall(header + request("/large", method="POST", body=body))
        scope = HttpReader(sock).response().json()
    assert scope["client"] == list(CLIENT)
    assert scope["body_length"] == len(body)
    assert scope["body_sha256"] == hashlib.sha256(body).hexdigest()


WEBSOCKET_UPGRADE = request(
    "/upgraded",
    headers="Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
)


def read_frame(reader: HttpReader) -> tuple[int, bytes]:
    """One unmasked WebSocket frame from the server: (opcode, payload)."""
    first, second = reader.take(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(reader.take(2), "big")
    elif length == 127:
        length = int.from_bytes(reader.take(8), "big")
    assert not second & 0x80, "a server's frames are not masked"
    return first & 0x0F, reader.take(length)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A short, masked, final WebSocket frame from the client."""
    assert len(payload) < 126
    mask = b"\x11\x22\x33\x44"
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def test_upgrade_after_a_keep_alive_request(matrix_server: Uvicorn) -> None:
    """The WebSocket protocol built on a connection's second request keeps the header's
    addresses."""
    with open_from("127.0.0.2", matrix_server.address) as sock:
        reader = HttpReader(sock)
        sock.sendall(encode_v1(CLIENT, DESTINATION) + request("/before-upgrade"))
        assert reader.response().json()["client"] == list(CLIENT)
        sock.sendall(WEBSOCKET_UPGRADE)
        switching = reader.response()
        assert switching.status == 101
        assert switching.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        opcode, payload = read_frame(reader)
        assert opcode == 0x1
        scope = json.loads(payload)
        assert scope["type"] == "websocket"
        assert scope["path"] == "/upgraded"
        assert scope["client"] == list(CLIENT)
        assert scope["server"] == list(DESTINATION)
        sock.sendall(masked_frame(0x1, b"echo me"))
        assert read_frame(reader) == (0x1, b"echo me")
        sock.sendall(masked_frame(0x8, (1000).to_bytes(2, "big")))
        assert read_frame(reader)[0] == 0x8


@pytest.mark.parametrize("version", [1, 2])
def test_header_in_pieces(lan_server: Uvicorn, version: int) -> None:
    header = (
        encode_v1(CLIENT, DESTINATION)
        if version == 1
        else encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    )
    with open_from("127.0.0.2", lan_server.address) as sock:
        for offset in range(0, len(header), 7):
            sock.sendall(header[offset : offset + 7])
            time.sleep(0.005)
        sock.sendall(request("/pieces"))
        scope = HttpReader(sock).response().json()
    assert scope["client"] == list(CLIENT)
    assert scope["proxy_protocol"]["version"] == version


def test_forged_forwarded_for_does_not_replace_the_header_address(lan_server: Uvicorn) -> None:
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default; the header's address
    # is the one that counts.
    header = encode_v1(("127.0.0.1", 40000), DESTINATION)
    forged = "X-Forwarded-For: 192.0.2.99\r\nX-Forwarded-Proto: https\r\n"
    response, _ = exchange(
        lan_server.address, "127.0.0.2", header + request("/xff", headers=forged)
    )
    scope = response.json()
    assert scope["client"] == ["127.0.0.1", 40000]
    assert scope["scheme"] == "http"


# --- 8. v1 UNKNOWN and v2 LOCAL --------------------------------------------------------------


@pytest.mark.parametrize(
    "header, version, command", UNKNOWN_AND_LOCAL.values(), ids=UNKNOWN_AND_LOCAL.keys()
)
def test_unknown_and_local_use_the_socket_addresses(
    lan_server: Uvicorn, header: bytes, version: int, command: str
) -> None:
    response, local = exchange(lan_server.address, "127.0.0.2", header + request("/local"))
    scope = response.json()
    assert local[0] == "127.0.0.2"
    assert scope["client"] == list(local)
    assert scope["server"] == [lan_server.host, lan_server.port]
    extension = scope["proxy_protocol"]
    assert extension["version"] == version
    assert extension["command"] == command
    assert extension["client"] is None
    assert extension["peer"] == list(local)


def test_local_then_websocket(lan_server: Uvicorn) -> None:
    result = websocket_session(lan_server.address, "127.0.0.2", encode_v2(command=Command.LOCAL))
    assert result.scope["client"] == list(result.local)
    assert result.scope["proxy_protocol"]["command"] == "LOCAL"
    assert_websocket_echoes(result)


# --- IPv6 listener -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ipv6_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    """Listens on ::1 with the default policy (trusts 127.0.0.1 and ::1, header required)."""
    if not ipv6_available():
        pytest.skip("no IPv6 loopback address")
    server = Uvicorn(tmp_path_factory.mktemp("ipv6"), host="::1", loop="uvloop")
    with server:
        yield server
    _no_errors(server)


def test_ipv6_peer_with_headers(ipv6_server: Uvicorn) -> None:
    response, local = exchange(
        ipv6_server.address, "::1", encode_v1(CLIENT, DESTINATION) + request()
    )
    scope = response.json()
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["proxy_protocol"]["peer"][:2] == list(local)
    result = websocket_session(ipv6_server.address, "::1", encode_v2(CLIENT6, DESTINATION6))
    assert result.scope["client"] == list(CLIENT6)
    assert result.scope["server"] == list(DESTINATION6)
    assert_websocket_echoes(result)


def test_ipv6_local_uses_the_socket_addresses(ipv6_server: Uvicorn) -> None:
    header = encode_v2(command=Command.LOCAL)
    response, local = exchange(ipv6_server.address, "::1", header + request())
    scope = response.json()
    assert scope["client"] == list(local)
    assert scope["server"] == ["::1", ipv6_server.port]
    assert scope["proxy_protocol"]["command"] == "LOCAL"


def test_ipv6_peer_is_logged_in_brackets(ipv6_server: Uvicorn) -> None:
    mark = ipv6_server.mark()
    peer = send_and_assert_closed_silently(ipv6_server.address, "::1", request())
    line = assert_one_warning(mark, peer, r"no PROXY header from trusted peer ::1")
    assert f"[::1]:{peer[1]}:" in line


@pytest.mark.parametrize("command", [Command.PROXY, Command.LOCAL])
def test_ipv6_extension_peer_is_host_and_port(ipv6_server: Uvicorn, command: Command) -> None:
    header = (
        encode_v2(CLIENT, DESTINATION) if command is Command.PROXY else encode_v2(command=command)
    )
    response, local = exchange(ipv6_server.address, "::1", header + request())
    assert response.json()["proxy_protocol"]["peer"] == list(local)


# --- 9. start-up errors --------------------------------------------------------------------


STARTUP_ERRORS = {
    "mode": ({"PROXYPROTO_MODE": "bogus"}, "PROXYPROTO_MODE"),
    "timeout": ({"PROXYPROTO_TIMEOUT": "1"}, "PROXYPROTO_TIMEOUT"),
    "trusted": ({"PROXYPROTO_TRUSTED": "not-an-ip"}, "PROXYPROTO_TRUSTED"),
}


@pytest.mark.parametrize("http", HTTP_CLASSES)
@pytest.mark.parametrize("env, variable", STARTUP_ERRORS.values(), ids=STARTUP_ERRORS.keys())
def test_bad_environment_fails_at_start_up(http: str, env: dict[str, str], variable: str) -> None:
    started = time.monotonic()
    completed = run_to_exit(uvicorn_argv(free_port(), http=http), env)
    assert completed.returncode != 0, completed.stderr
    assert time.monotonic() - started < 10
    assert variable in completed.stderr
    assert "Uvicorn running" not in completed.stderr


@pytest.mark.parametrize("http", HTTP_CLASSES)
def test_uvicorn_tls_fails_at_start_up(http: str, certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    extra = ["--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]
    started = time.monotonic()
    completed = run_to_exit(uvicorn_argv(free_port(), http=http, extra=extra))
    assert completed.returncode != 0, completed.stderr
    assert time.monotonic() - started < 10
    assert "proxyproto-mw serve" in completed.stderr
    assert "Uvicorn running" not in completed.stderr


# --- 10. from code -----------------------------------------------------------------------


FROM_CODE = """\
import uvicorn

from proxyproto_mw import TrustPolicy
from proxyproto_mw.uvicorn import {http}

uvicorn.run(
    "tests.apps:app",
    app_dir={repository!r},
    host="127.0.0.1",
    port={port},
    http={http}.with_policy(TrustPolicy(trusted="127.0.0.0/8")),
    lifespan="on",
)
"""


@pytest.mark.parametrize("http", HTTP_CLASSES)
def test_policy_from_code(tmp_path: Path, http: str) -> None:
    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(FROM_CODE.format(http=http, repository=str(REPOSITORY), port=port))
    assert not [name for name in clean_environment() if name.startswith("PROXYPROTO_")]
    with Uvicorn(
        tmp_path, port=port, argv=[sys.executable, str(script)], name="from-code"
    ) as server:
        response, local = exchange(
            server.address, "127.0.0.6", encode_v1(CLIENT, DESTINATION) + request()
        )
        scope = response.json()
        assert scope["client"] == list(CLIENT)
        assert scope["proxy_protocol"]["peer"] == list(local)
        result = websocket_session(server.address, "127.0.0.6", encode_v2(CLIENT, DESTINATION))
        assert result.scope["client"] == list(CLIENT)
        assert_websocket_echoes(result)
        assert WARNING not in server.stderr()
    _no_errors(server)
