"""End to end: ``gunicorn -k proxyproto_mw.gunicorn.SyncWorker|ThreadWorker``, and gunicorn's own.

Every server here is gunicorn in a subprocess, started from the command line a user types
(:func:`tests.gunicorn_server.gunicorn_argv`): two workers, ``--proxy-protocol auto``,
``--proxy-allow-from 127.0.0.1,127.0.0.5`` (HAProxy connects from 127.0.0.1; the raw
sockets and curl that play the balancer connect from 127.0.0.5), serving
:mod:`tests.wsgi_apps` (the JSON of the environ). ``sync`` runs with one thread, as it
must: gunicorn replaces any ``...SyncWorker`` with its own gthread worker when
``--threads`` is more than 1 (:func:`test_sync_worker_with_threads_is_gunicorns_gthread`);
``gthread`` runs four. Each test runs for both kinds, and the side-by-side class runs
gunicorn 27's own worker of the same kind on the same input.

gunicorn's sync worker closes every connection after one response (``Connection: close``);
gthread keeps connections alive, so only gthread serves many requests per connection.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
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
    client_address,
    exchange,
    local_address,
    open_from,
    request,
    send_and_assert_closed_silently,
    times_until_closed,
    v2_tlvs,
)
from tests.gunicorn_server import (
    WSGI_APP,
    WSGI_FORWARDING_APP,
    Gunicorn,
    WsgiGunicorn,
    gunicorn_argv,
    run_gunicorn_to_exit,
)
from tests.haproxy import (
    STATS_SOCKET,
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_defaults,
    haproxy_proxied_pair,
    haproxy_stats,
    wait_until_healthy,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for workers"),
]

KINDS = ("sync", "gthread")
OURS = {
    "sync": "proxyproto_mw.gunicorn.SyncWorker",
    "gthread": "proxyproto_mw.gunicorn.ThreadWorker",
}
THREADS = {"sync": 1, "gthread": 4}
BALANCER = "127.0.0.5"
"""Raw sockets that send headers connect from here (trusted)."""
UNTRUSTED = "127.0.0.6"
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""Each client of HAProxy connects from its own address."""
HEADERS = {
    1: encode_v1(CLIENT, DESTINATION),
    2: encode_v2(CLIENT, DESTINATION, checksum=True),
}


def httpx_client_noting_address(source: str) -> httpx.Client:
    """An httpx client connecting from ``source``; each response's
    ``extensions["local_address"]`` is the address its connection had (read before a
    server that closes after the response has closed it)."""

    def note_address(response: httpx.Response) -> None:
        response.extensions["local_address"] = client_address(response)

    return httpx.Client(
        transport=httpx.HTTPTransport(local_address=source),
        trust_env=False,
        timeout=5,
        event_hooks={"response": [note_address]},
    )


def no_errors(server: Gunicorn) -> None:
    """Nothing went wrong in gunicorn: no traceback, no ERROR line."""
    assert server.errors() == [], server.output()


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The kind of gunicorn worker: ``sync`` or ``gthread``."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def ours(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsgiGunicorn]:
    """This package's worker of that kind, with a 3 s header timeout."""
    workdir = tmp_path_factory.mktemp(f"ours-{kind}")
    env = {"PROXYPROTO_TIMEOUT": "3"}
    with WsgiGunicorn(workdir, OURS[kind], threads=THREADS[kind], env=env) as server:
        yield server
    no_errors(server)


@pytest.fixture(scope="module")
def theirs(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsgiGunicorn]:
    """gunicorn's own worker of that kind, with the same settings."""
    with WsgiGunicorn(tmp_path_factory.mktemp(f"theirs-{kind}"), kind, threads=THREADS[kind]) as s:
        yield s


def assert_served_as_client(environ: JSON, *, client: Address = CLIENT) -> None:
    """The environ of a request whose connection carried the test header."""
    assert environ["remote_addr"] == client[0]
    assert environ["remote_port"] == str(client[1])
    assert environ["server_name"] == DESTINATION[0]
    assert environ["server_port"] == str(DESTINATION[1])


def assert_served_from(environ: JSON, local: Address, server: Gunicorn) -> None:
    """The environ of a request served with the socket's own addresses."""
    assert environ["remote_addr"] == local[0]
    assert environ["remote_port"] == str(local[1])
    assert environ["server_name"] == server.host
    assert environ["server_port"] == str(server.port)


def test_start_up_says_what_the_policy_does(ours: WsgiGunicorn) -> None:
    """One INFO line from the master, in gunicorn's error log, before the workers boot."""
    lines = [line for line in ours.output().splitlines() if "PROXY protocol" in line]
    assert len(lines) == 1, lines
    assert re.search(
        r"\[INFO\] PROXY protocol on \(mode require, v1 and v2\): headers "
        r"believed from 127\.0\.0\.1, 127\.0\.0\.5 and UNIX-socket peers "
        r"\(--proxy-allow-from\) within 3 s;",
        lines[0],
    ), lines[0]


# --- 1. what the environ says -----------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_environ_has_the_header_addresses(ours: WsgiGunicorn, version: int) -> None:
    response, local = exchange(ours.address, BALANCER, HEADERS[version] + request("/addresses"))
    assert response.status == 200
    environ = response.json()
    assert_served_as_client(environ)
    assert environ["scheme"] == "http"
    info = environ["proxy_protocol"]
    assert info["version"] == version
    assert info["command"] == "PROXY"
    assert info["client"] == list(CLIENT)
    assert info["server"] == list(DESTINATION)
    assert info["peer"] == list(local)


def test_v2_tlvs_and_the_ssl_tlv_make_https(ours: WsgiGunicorn) -> None:
    header = encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    response, local = exchange(ours.address, BALANCER, header + request("/tlvs"))
    environ = response.json()
    assert_served_as_client(environ)
    assert environ["scheme"] == "https"  # the client reached the balancer over TLS
    assert_v2_extension(environ["proxy_protocol"], local)


def test_ipv6_client_of_a_v1_header(ours: WsgiGunicorn) -> None:
    response, _ = exchange(
        ours.address, BALANCER, encode_v1(CLIENT6, DESTINATION6) + request("/v6")
    )
    environ = response.json()
    assert environ["remote_addr"] == CLIENT6[0]
    assert environ["remote_port"] == str(CLIENT6[1])
    assert environ["server_name"] == DESTINATION6[0]
    assert environ["server_port"] == str(DESTINATION6[1])


@pytest.mark.parametrize(
    "header, version, command", UNKNOWN_AND_LOCAL.values(), ids=UNKNOWN_AND_LOCAL.keys()
)
def test_unknown_and_local_use_the_socket_addresses(
    ours: WsgiGunicorn, header: bytes, version: int, command: str
) -> None:
    response, local = exchange(ours.address, BALANCER, header + request("/local"))
    assert response.status == 200
    environ = response.json()
    assert_served_from(environ, local, ours)
    info = environ["proxy_protocol"]
    assert (info["version"], info["command"]) == (version, command)
    assert info["client"] is None
    assert info["peer"] == list(local)


def test_access_log_shows_the_header_client(ours: WsgiGunicorn) -> None:
    access = ours.access_mark()
    exchange(ours.address, BALANCER, HEADERS[2] + request("/logged"))
    (line,) = access.wait_for('"GET /logged ')
    assert line.startswith(f"{CLIENT[0]} - - [")


# --- 2. every request of a connection -------------------------------------------------------


def test_every_request_of_a_connection_sees_the_header(ours: WsgiGunicorn, kind: str) -> None:
    """gthread serves 20 requests, one of them with a body and two pipelined, over one
    connection, each with the header's client; sync answers one and closes, as gunicorn's
    sync worker always does."""
    body = bytes(range(256)) * 64
    with open_from(BALANCER, ours.address) as sock:
        reader = HttpReader(sock)
        sock.sendall(HEADERS[1] + request("/r0"))
        first = reader.response()
        assert_served_as_client(first.json())
        if kind == "sync":
            assert first.headers["connection"] == "close"
            assert_closed_silently(sock)
            return
        assert first.headers["connection"] == "keep-alive"
        for number in range(1, 17):
            sock.sendall(request(f"/r{number}"))
            environ = reader.response().json()
            assert_served_as_client(environ)
            assert environ["path"] == f"/r{number}"
        sock.sendall(request("/post", method="POST", body=body))
        environ = reader.response().json()
        assert_served_as_client(environ)
        assert environ["body_length"] == len(body)
        sock.sendall(request("/p1") + request("/p2") + request("/p3"))  # pipelined
        for path in ("/p1", "/p2", "/p3"):
            environ = reader.response().json()
            assert environ["path"] == path
            assert_served_as_client(environ)


def test_second_header_is_application_data(ours: WsgiGunicorn) -> None:
    """Only the first header counts: a second one is the start of the request (a bad one)."""
    payload = HEADERS[1] + encode_v1(("192.0.2.1", 1), ("192.0.2.2", 2)) + request("/second")
    response, _ = exchange(ours.address, BALANCER, payload)
    assert response.status == 400


def test_header_in_pieces(ours: WsgiGunicorn) -> None:
    payload = HEADERS[2] + request("/pieces")
    with open_from(BALANCER, ours.address) as sock:
        for offset in range(0, 40, 3):
            sock.sendall(payload[offset : offset + 3])
            time.sleep(0.01)
        sock.sendall(payload[40:])
        environ = HttpReader(sock).response().json()
    assert_served_as_client(environ)


# --- 3. bad input: closed without a byte, one WARNING line ------------------------------------


@pytest.mark.parametrize("payload, reason", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_closes_without_a_byte(ours: WsgiGunicorn, payload: bytes, reason: str) -> None:
    mark = ours.mark()
    peer = send_and_assert_closed_silently(ours.address, "127.0.0.1", payload)
    line = assert_one_warning(mark, peer, reason)
    assert re.search(r"\[\d+\] \[WARNING\] ", line), line  # in gunicorn's error log


def test_header_timeout(ours: WsgiGunicorn) -> None:
    """PROXYPROTO_TIMEOUT=3: a peer that sends nothing, or half a header, is closed after 3 s.
    Two such peers at once: a sync worker holds one connection at a time, and two run."""
    partial = {"nothing": b"", "v2": HEADERS[2][:20]}
    mark = ours.mark()
    closed_after, peers = times_until_closed(ours.address, partial)
    assert set(closed_after) == set(partial)
    for name, seconds in closed_after.items():
        assert 3.0 <= seconds < 5.5, f"{name}: closed after {seconds:.2f} s"
    time.sleep(0.1)
    lines = mark.lines(WARNING)
    assert len(lines) == len(partial), lines
    for name, peer in peers.items():
        pattern = (
            rf"{WARNING} 127\.0\.0\.1:{peer[1]}: no complete PROXY header within 3 s "
            rf"\({len(partial[name])} bytes received\)"
        )
        assert [line for line in lines if re.search(pattern, line)], (pattern, lines)


def test_refused_connections_free_their_place(tmp_path: Path) -> None:
    """gthread refuses bad headers in the worker's main thread: each refused connection gives
    its place back (``--worker-connections 8``, one worker), so that 40 refusals in a row
    leave the worker accepting."""
    with WsgiGunicorn(
        tmp_path,
        OURS["gthread"],
        threads=2,
        workers=1,
        extra=["--worker-connections", "8"],
    ) as server:
        payload, _ = BAD_INPUT["v1-leading-zero"]
        for _ in range(40):
            send_and_assert_closed_silently(server.address, BALANCER, payload)
        response, _ = exchange(server.address, BALANCER, HEADERS[1] + request("/after"))
        assert_served_as_client(response.json())
    no_errors(server)


def test_a_late_header_holds_up_no_one_else(ours: WsgiGunicorn, kind: str) -> None:
    """Peers that have not sent their header yet hold one thread each (gthread: in the pool,
    not the thread that accepts; sync: the worker, and the other one serves)."""
    mark = ours.mark()
    late = [open_from("127.0.0.1", ours.address) for _ in range(3 if kind == "gthread" else 1)]
    try:
        late[0].sendall(HEADERS[2][:20])
        time.sleep(0.2)  # every late connection is taken by a worker
        for number in range(6):
            started = time.monotonic()
            response, _ = exchange(
                ours.address, BALANCER, HEADERS[1] + request(f"/meanwhile{number}")
            )
            assert_served_as_client(response.json())
            assert time.monotonic() - started < 1.0
    finally:
        for sock in late:
            sock.close()  # before the header timeout: no log line, the peer went away
    time.sleep(0.2)
    assert mark.lines(WARNING) == []


@pytest.mark.parametrize("version", [1, 2])
def test_header_from_an_untrusted_peer_is_refused(ours: WsgiGunicorn, version: int) -> None:
    mark = ours.mark()
    peer = send_and_assert_closed_silently(
        ours.address, UNTRUSTED, HEADERS[version] + request("/untrusted")
    )
    line = assert_one_warning(mark, peer, "not trusted")
    assert f"add {UNTRUSTED} to --proxy-allow-from" in line


def test_untrusted_peer_without_header_is_served_with_its_address(ours: WsgiGunicorn) -> None:
    mark = ours.mark()
    response, local = exchange(ours.address, UNTRUSTED, request("/plain"))
    assert local[0] == UNTRUSTED
    environ = response.json()
    assert_served_from(environ, local, ours)
    assert environ["proxy_protocol"] is None
    assert mark.lines(WARNING) == []


def test_forwarded_proto_from_the_client_is_not_believed(ours: WsgiGunicorn) -> None:
    """--forwarded-allow-ips (default 127.0.0.1,::1) is checked against the header's client,
    who wrote the request's headers, not against the balancer that relayed them."""
    forged = request("/forged", headers="X-Forwarded-Proto: https\r\n")
    response, _ = exchange(ours.address, "127.0.0.1", HEADERS[1] + forged)
    assert response.json()["scheme"] == "http"


# --- 4. behind HAProxy, with health checks ---------------------------------------------------

BACKENDS = ("gunicorn_v1", "gunicorn_v2")
HAPROXY_SOURCE = {1: "127.0.0.1", 2: "127.0.0.5"}


class Balanced:
    """gunicorn behind HAProxy: a v1 frontend and a v2 frontend, health checks on."""

    def __init__(self, server: WsgiGunicorn, frontends: dict[int, Address], stats: Path) -> None:
        self.server = server
        self.frontends = frontends
        self.stats_socket = stats

    def health(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of the gunicorn server in each backend."""
        stats = haproxy_stats(self.stats_socket)
        return {name: stats[(name, "app")] for name in BACKENDS}

    def wait_healthy(self, timeout: float = 10.0) -> None:
        """Wait until both backends' health checks pass."""
        wait_until_healthy(self.stats_socket, BACKENDS, timeout)


@pytest.fixture(scope="class")
def balanced(ours: WsgiGunicorn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balanced]:
    """Our worker behind HAProxy (started for this class only: its checks keep coming)."""
    if not haproxy_available():
        pytest.skip("haproxy is not installed (apt-get install haproxy); CI installs it")
    workdir = tmp_path_factory.mktemp("haproxy")
    v1_port, v2_port = free_port(), free_port()
    config = haproxy_defaults(workdir) + haproxy_proxied_pair(
        "gunicorn", (v1_port, v2_port), ours.port, v2_source=HAPROXY_SOURCE[2]
    )
    with HAProxy(config, workdir):
        frontends = {1: ("127.0.0.1", v1_port), 2: ("127.0.0.1", v2_port)}
        balanced = Balanced(ours, frontends, workdir / STATS_SOCKET)
        balanced.wait_healthy()
        yield balanced


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
class TestBehindHAProxy:
    @pytest.mark.parametrize("version", [1, 2])
    def test_each_client_sees_its_own_address(
        self, balanced: Balanced, kind: str, version: int
    ) -> None:
        """Three httpx clients, from 127.0.0.2, .3 and .4, three requests each: gthread keeps
        each client's connection alive, sync closes it after each response."""
        frontend = balanced.frontends[version]
        clients = {source: httpx_client_noting_address(source) for source in SOURCES}
        connections: dict[str, set[Address]] = {source: set() for source in SOURCES}
        try:
            for round_number in range(3):
                for source, client in clients.items():
                    response = client.get(f"http://127.0.0.1:{frontend[1]}/r{round_number}")
                    assert response.status_code == 200
                    environ = response.json()
                    local = response.extensions["local_address"]
                    connections[source].add(local)
                    assert local[0] == source
                    assert environ["remote_addr"] == source  # not HAProxy's address
                    assert environ["remote_port"] == str(local[1])
                    assert environ["server_name"] == frontend[0]
                    assert environ["server_port"] == str(frontend[1])
                    info = environ["proxy_protocol"]
                    assert info["version"] == version
                    assert info["peer"][0] == HAPROXY_SOURCE[version]
                    if version == 2:
                        assert info["unique_id"]
        finally:
            for client in clients.values():
                client.close()
        per_client = 1 if kind == "gthread" else 3
        assert all(len(used) == per_client for used in connections.values()), connections

    def test_health_checks_keep_the_server_up(self, balanced: Balanced) -> None:
        """The v1 checks carry HAProxy's own addresses, the v2 checks are LOCAL: both are
        served with the address the check came from."""
        mark = balanced.server.mark()
        before = balanced.health()
        access = balanced.server.access_mark()
        time.sleep(1.6)  # three more checks of each backend
        after = balanced.health()
        for name, row in after.items():
            assert row["status"] == "UP", row
            assert row["check_status"] == "L7OK", row
            assert row["chkfail"] == "0", row
            assert int(row["lastchg"]) > int(before[name]["lastchg"]), row
        for version, path in ((1, "/check-v1"), (2, "/check-v2")):
            source = re.escape(HAPROXY_SOURCE[version])
            access.wait_for(rf'^{source} - - \[.*"GET {path} ', count=2)
        assert mark.lines(WARNING) == []


# --- 5. --keyfile / --certfile: TLS after the header, on the same port -----------------------


def _tls_server(
    worker: str, kind: str, workdir: Path, certificate: tuple[Path, Path]
) -> WsgiGunicorn:
    key, cert = certificate
    extra = ["--keyfile", str(key), "--certfile", str(cert)]
    return WsgiGunicorn(workdir, worker, threads=THREADS[kind], extra=extra)


@pytest.fixture(scope="module")
def ours_tls(
    kind: str, tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[WsgiGunicorn]:
    """This package's worker serving TLS with a self-signed certificate."""
    workdir = tmp_path_factory.mktemp(f"ours-tls-{kind}")
    with _tls_server(OURS[kind], kind, workdir, certificate) as server:
        yield server
    no_errors(server)


@pytest.fixture(scope="module")
def theirs_tls(
    kind: str, tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[WsgiGunicorn]:
    """gunicorn's own worker serving TLS with the same certificate."""
    workdir = tmp_path_factory.mktemp(f"theirs-tls-{kind}")
    with _tls_server(kind, kind, workdir, certificate) as server:
        yield server


def curl_haproxy_protocol(server: Gunicorn, path: str) -> subprocess.CompletedProcess[str]:
    """``curl -k --haproxy-protocol --interface 127.0.0.5 https://...``: a v1 header in clear
    with curl's own socket addresses, then TLS on the same connection."""
    return subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "5", "--noproxy", "*",
            "--insecure", "--haproxy-protocol", "--interface", BALANCER,
            "--write-out", "\n%{local_port}", f"https://127.0.0.1:{server.port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_haproxy_protocol_over_tls(ours_tls: WsgiGunicorn) -> None:
    completed = curl_haproxy_protocol(ours_tls, "/tls")
    assert completed.returncode == 0, completed.stderr
    body, _, local_port = completed.stdout.rpartition("\n")
    environ = json.loads(body)
    assert environ["remote_addr"] == BALANCER
    assert environ["remote_port"] == local_port
    assert environ["server_name"] == "127.0.0.1"
    assert environ["server_port"] == str(ours_tls.port)
    assert environ["scheme"] == "https"
    assert environ["proxy_protocol"]["version"] == 1
    assert environ["proxy_protocol"]["peer"] == [BALANCER, int(local_port)]


def test_v2_header_then_tls_keep_alive(ours_tls: WsgiGunicorn, kind: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with open_from(BALANCER, ours_tls.address) as raw:
        raw.sendall(HEADERS[2])
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            reader = HttpReader(sock)
            for number in range(3 if kind == "gthread" else 1):
                sock.sendall(request(f"/tls{number}"))
                environ = reader.response().json()
                assert_served_as_client(environ)
                assert environ["scheme"] == "https"
                assert environ["path"] == f"/tls{number}"


def test_missing_header_on_the_tls_port_is_refused(ours_tls: WsgiGunicorn) -> None:
    """A ClientHello where the header should be: closed before any TLS answer."""
    mark = ours_tls.mark()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with open_from("127.0.0.1", ours_tls.address) as raw:
        peer = local_address(raw)
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(raw, server_hostname="localhost")
    assert_one_warning(mark, peer, "no PROXY header from trusted peer")


# --- 5b. -b unix: a client without an IP address ----------------------------------------------


@pytest.fixture(scope="module")
def unix_optional(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsgiGunicorn]:
    """This package's worker also bound to a UNIX socket (whose peers are trusted), mode
    optional, serving an app behind the WSGI middleware (X-Real-IP, X-Forwarded-For append)."""
    workdir = tmp_path_factory.mktemp(f"unix-{kind}")
    with WsgiGunicorn(
        workdir,
        OURS[kind],
        threads=THREADS[kind],
        env={"PROXYPROTO_MODE": "optional", "PROXYPROTO_TIMEOUT": "3"},
        unix_socket=workdir / "app.sock",
        app=WSGI_FORWARDING_APP,
    ) as server:
        yield server
    no_errors(server)


def unix_exchange(path: Path, pieces: Sequence[bytes], delay: float = 0.0) -> JSON:
    """Send ``pieces`` over a UNIX socket, ``delay`` seconds apart; the JSON answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        for index, piece in enumerate(pieces):
            if index and delay:
                time.sleep(delay)
            sock.sendall(piece)
        return HttpReader(sock).response().json()


FORGED = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"


@pytest.mark.parametrize(
    "header",
    [
        encode_v2(unix=(b"/run/client.sock", b"/run/app.sock")),
        encode_v2(command=Command.LOCAL),
        b"",
    ],
    ids=["v2-unix", "v2-local", "no-header"],
)
def test_unix_socket_client_is_forwarded_as_unix(
    unix_optional: WsgiGunicorn, header: bytes
) -> None:
    """Nobody on the connection has an IP address: X-Forwarded-For ends with ``unix:`` (as
    nginx writes it), never with what the client wrote, and its X-Real-IP is removed."""
    assert unix_optional.unix_socket is not None
    seen = unix_exchange(unix_optional.unix_socket, [header + request(headers=FORGED)])
    assert seen == {
        "REMOTE_ADDR": "",
        "HTTP_X_REAL_IP": None,
        "HTTP_X_FORWARDED_FOR": "6.6.6.6, unix:",
    }


@pytest.mark.parametrize("version", [1, 2])
def test_unix_socket_signature_in_pieces_in_optional_mode(
    unix_optional: WsgiGunicorn, version: int
) -> None:
    """Until the signature is whole, the first bytes could be a request's and stay on the
    socket; a UNIX socket cannot be told to wake only for more, so gthread finishes such a
    header in a pool thread. Either way the header is read and its client served."""
    assert unix_optional.unix_socket is not None
    header = HEADERS[version]
    cut = 4 if version == 1 else 8
    pieces = [header[:cut], header[cut:] + request(headers=FORGED)]
    seen = unix_exchange(unix_optional.unix_socket, pieces, delay=0.3)
    assert seen == {
        "REMOTE_ADDR": CLIENT[0],
        "HTTP_X_REAL_IP": CLIENT[0],
        "HTTP_X_FORWARDED_FOR": f"6.6.6.6, {CLIENT[0]}",
    }


# --- 6. settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("worker", OURS.values(), ids=OURS.keys())
def test_bad_environment_stops_gunicorn(worker: str) -> None:
    argv = gunicorn_argv([f"127.0.0.1:{free_port()}"], worker=worker, app=WSGI_APP)
    completed = run_gunicorn_to_exit(argv, env={"PROXYPROTO_TIMEOUT": "1"})
    assert completed.returncode != 0, completed.stderr
    assert "PROXYPROTO_TIMEOUT" in completed.stderr
    assert "Booting worker" not in completed.stderr


def test_sync_worker_with_threads_is_gunicorns_gthread(tmp_path: Path) -> None:
    """gunicorn runs its own gthread worker for any ``-k ...SyncWorker`` with ``--threads``
    above 1 (``Config.worker_class``): none of this package's code runs, and gunicorn's own
    PROXY parsing answers (here with its LOCAL fault)."""
    with WsgiGunicorn(tmp_path, OURS["sync"], threads=4) as server:
        assert "Using worker: gthread" in server.output()
        response, _ = exchange(
            server.address, BALANCER, encode_v2(command=Command.LOCAL) + request()
        )
    assert response.json()["remote_addr"] is None


# --- 7. side by side: gunicorn 27.0.1's own workers on the same input -------------------------


class TestGunicornsOwnWorker:
    """Each fault of gunicorn 27's own PROXY support, shown by its worker, and not by ours."""

    def test_keep_alive_keeps_the_address(
        self, theirs: WsgiGunicorn, ours: WsgiGunicorn, kind: str
    ) -> None:
        """gthread: gunicorn's own worker forgets the header after the first request of a
        connection. sync: no second request, gunicorn's sync worker closes after one."""
        for server, expected in ((theirs, BALANCER), (ours, CLIENT[0])):
            with open_from(BALANCER, server.address) as sock:
                reader = HttpReader(sock)
                sock.sendall(HEADERS[1] + request("/first"))
                first = reader.response()
                assert first.json()["remote_addr"] == CLIENT[0]
                if kind == "sync":
                    assert first.headers["connection"] == "close"
                    continue
                sock.sendall(request("/second"))
                assert reader.response().json()["remote_addr"] == expected

    @pytest.mark.parametrize("case", ["v2-version-3", "v2-bad-crc32c"])
    def test_malformed_v2_header(self, theirs: WsgiGunicorn, ours: WsgiGunicorn, case: str) -> None:
        """gunicorn answers a v2 header of version 3 with 500 (and a traceback in its log),
        and believes a header whose CRC32C does not match; ours closes both, silently."""
        payload, reason = BAD_INPUT[case]
        response, _ = exchange(theirs.address, BALANCER, payload)
        if case == "v2-version-3":
            assert response.status == 500
            assert "InvalidProxyHeader: Invalid PROXY header: unsupported version 3" in (
                theirs.output()
            )
        else:
            assert response.status == 200
            assert response.json()["remote_addr"] == CLIENT[0]
        mark = ours.mark()
        peer = send_and_assert_closed_silently(ours.address, BALANCER, payload)
        assert_one_warning(mark, peer, reason)

    def test_v1_unknown(self, theirs: WsgiGunicorn, ours: WsgiGunicorn) -> None:
        """gunicorn answers ``PROXY UNKNOWN`` with 400; ours serves it with the socket's
        address."""
        payload = b"PROXY UNKNOWN\r\n" + request("/unknown")
        assert exchange(theirs.address, BALANCER, payload)[0].status == 400
        response, local = exchange(ours.address, BALANCER, payload)
        assert response.status == 200
        assert_served_from(response.json(), local, ours)

    def test_v2_local(self, theirs: WsgiGunicorn, ours: WsgiGunicorn) -> None:
        """gunicorn puts None into REMOTE_ADDR for a LOCAL header (a v2 health check); ours
        the socket's address."""
        payload = encode_v2(command=Command.LOCAL) + request("/local")
        environ = exchange(theirs.address, BALANCER, payload)[0].json()
        assert environ["remote_addr"] is None
        assert environ["remote_port"] == "None"
        response, local = exchange(ours.address, BALANCER, payload)
        assert_served_from(response.json(), local, ours)

    @pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
    def test_header_before_tls(self, theirs_tls: WsgiGunicorn, ours_tls: WsgiGunicorn) -> None:
        """gunicorn starts TLS before it looks for the header, so a header in clear before
        the handshake breaks it; ours reads the header, then starts TLS."""
        failed = curl_haproxy_protocol(theirs_tls, "/theirs")
        assert failed.returncode != 0, failed.stdout
        served = curl_haproxy_protocol(ours_tls, "/ours")
        assert served.returncode == 0, served.stderr
        assert json.loads(served.stdout.rpartition("\n")[0])["scheme"] == "https"
