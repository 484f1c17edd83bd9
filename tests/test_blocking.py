"""``receive_header`` on real sockets: exactly the header is taken, every later byte stays.

Each test connects a real client socket (TCP on loopback, bound to its own 127.0.0.x
address, or a UNIX socketpair) to a real server socket and calls
:func:`~proxyproto_mw.blocking.receive_header` on the server side, as a blocking server
does right after ``accept()``. A sender thread writes the client's bytes, whole or in
pieces, so that the reader meets them as a server meets a network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyproto_mw import (
    ChecksumMismatch,
    Command,
    Decoded,
    HeaderTimeout,
    InvalidHeader,
    MissingHeader,
    ProxyHeader,
    ProxyProtocolError,
    TLVType,
    TrustPolicy,
    UntrustedHeader,
    decode,
    encode_v1,
    encode_v2,
    ssl_tlv,
)
from proxyproto_mw.blocking import HeaderReader, finish_header, receive_header, reject
from proxyproto_mw.decoder import NEED_DATA, V1_MAX_LENGTH, V2_MAX_LENGTH
from proxyproto_mw.errors import ConnectionClosed

pytestmark = pytest.mark.timeout(30)

Address = tuple[str, int]

CLIENT: Address = ("198.51.100.22", 35646)
DESTINATION: Address = ("203.0.113.7", 443)
CLIENT6: Address = ("2001:db8::22", 50123)
DESTINATION6: Address = ("2001:db8:0:1::7", 8443)

LOOPBACK = TrustPolicy(trusted="127.0.0.0/8", timeout=3)
"""Trusts every loopback peer; the shortest timeout the specification allows."""
ONLY_127_0_0_1 = TrustPolicy(trusted="127.0.0.1", timeout=3, setting="PROXYPROTO_TRUSTED")

PAYLOAD = (
    b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
    + encode_v1(("192.0.2.66", 6666), DESTINATION)  # a second header is application data
    + hashlib.sha256(b"payload").digest() * 4096
)


def _header_of(data: bytes) -> ProxyHeader:
    decoded = decode(data)
    assert isinstance(decoded, Decoded), data
    return decoded.header


def _tlvs() -> list[tuple[int, bytes]]:
    ssl_record = ssl_tlv(client=0x01, verify=0, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
    return [
        (TLVType.ALPN, b"h2"),
        (TLVType.AUTHORITY, b"app.example.com"),
        (TLVType.UNIQUE_ID, b"\x00\x01request-42" * 10),
        (ssl_record.type, ssl_record.value),
    ]


def _largest_v2() -> bytes:
    """A v2 header of the greatest length there is: 16 + 65535 bytes, NOOP padding."""
    block = 12
    noop = 0xFFFF - block - 3 - 7  # an INET block, the NOOP's own TLV header, the CRC32C TLV
    return encode_v2(CLIENT, DESTINATION, tlvs=[(TLVType.NOOP, bytes(noop))], checksum=True)


HEADERS = {
    "v1": encode_v1(CLIENT, DESTINATION),
    "v1-tcp6": encode_v1(CLIENT6, DESTINATION6),
    "v1-unknown": encode_v1(),
    "v1-longest": b"PROXY UNKNOWN " + b"f" * (V1_MAX_LENGTH - 16) + b"\r\n",
    "v2": encode_v2(CLIENT, DESTINATION),
    "v2-inet6": encode_v2(CLIENT6, DESTINATION6),
    "v2-local": encode_v2(command=Command.LOCAL),
    "v2-local-nlb": b"\r\n\r\n\x00\r\nQUIT\n\x20\x11\x00\x07\x04\x00\x04\x00\x00\x00\x00",
    "v2-unix": encode_v2(unix=(b"/run/client.sock", b"/run/server.sock")),
    "v2-tlvs-crc32c": encode_v2(CLIENT, DESTINATION, tlvs=_tlvs(), checksum=True),
    "v2-largest": _largest_v2(),
}


# --- sockets ----------------------------------------------------------------------------


@contextlib.contextmanager
def tcp_connection(source: str = "127.0.0.2") -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection from ``source``: (server side, client side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(10)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.bind((source, 0))
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


def peer_of(sock: socket.socket) -> Address:
    """The (host, port) of the socket's peer, as a server passes it to receive_header."""
    host, port = sock.getpeername()[:2]
    return host, port


class Sender(threading.Thread):
    """Writes ``pieces`` to ``sock``, ``delay`` seconds apart, then optionally closes it."""

    def __init__(
        self,
        sock: socket.socket,
        pieces: Sequence[bytes],
        delay: float = 0.0,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.pieces = pieces
        self.delay = delay
        self.close = close
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for index, piece in enumerate(self.pieces):
                if index and self.delay:
                    time.sleep(self.delay)
                self.sock.sendall(piece)
            if self.close:
                self.sock.shutdown(socket.SHUT_WR)
        except BaseException as error:  # reported by finish()
            self.error = error

    def finish(self) -> None:
        """Wait for the sender; fail with its error, if it had one."""
        self.join(10)
        assert not self.is_alive(), "the sender did not finish within 10 s"
        if self.error is not None:
            raise self.error


def read_to_end(sock: socket.socket) -> bytes:
    """Every byte until the peer closes its side."""
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[offset : offset + size] for offset in range(0, len(data), size)]


# --- the header is taken, the rest stays ------------------------------------------------


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_header_then_payload_leaves_the_payload_byte_exact(header: bytes) -> None:
    with tcp_connection() as (server, client):
        sender = Sender(client, [header + PAYLOAD], close=True)
        sender.start()
        received = receive_header(server, LOOPBACK, peer_of(server))
        rest = read_to_end(server)
        sender.finish()
    assert received == _header_of(header)
    assert rest == PAYLOAD


@pytest.mark.parametrize(
    "header, size, delay",
    [
        (HEADERS["v1"], 1, 0.002),
        (HEADERS["v1-tcp6"], 7, 0.005),
        (HEADERS["v2"], 1, 0.002),
        (HEADERS["v2-tlvs-crc32c"], 7, 0.005),
        (HEADERS["v2-largest"], 16384, 0.005),
    ],
    ids=["v1-bytes", "v1-tcp6-sevens", "v2-bytes", "v2-tlvs-sevens", "v2-largest-16k"],
)
def test_header_in_pieces_with_delays(header: bytes, size: int, delay: float) -> None:
    with tcp_connection() as (server, client):
        sender = Sender(client, [*pieces_of(header, size), PAYLOAD[:10], PAYLOAD[10:]], delay)
        sender.start()
        started = time.monotonic()
        received = receive_header(server, LOOPBACK, peer_of(server))
        elapsed = time.monotonic() - started
        sender.finish()
        client.shutdown(socket.SHUT_WR)
        rest = read_to_end(server)
    assert received == _header_of(header)
    assert rest == PAYLOAD
    assert elapsed < 2.5, f"the pieces took {elapsed:.2f} s to be read"


class RecordingSocket(socket.socket):
    """A socket that records the size and flags of every ``recv``."""

    calls: list[tuple[int, int]]

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.calls.append((bufsize, flags))
        return super().recv(bufsize, flags)


@pytest.mark.parametrize(
    "name, size, limit",
    [
        ("v1", 20, V1_MAX_LENGTH),
        ("v2", 20, V1_MAX_LENGTH),
        ("v2-tlvs-crc32c", 20, len(HEADERS["v2-tlvs-crc32c"])),
        ("v2-largest", 4096, V2_MAX_LENGTH),
    ],
)
def test_peeks_stay_within_the_header(name: str, size: int, limit: int) -> None:
    """Peeks ask for no more than a whole v1 line, or the v2 header's declared length; the
    reads that take bytes take exactly the header, piece by piece as it arrives."""
    header = HEADERS[name]
    with tcp_connection() as (server, client):
        recording = RecordingSocket(fileno=server.detach())
        recording.calls = []
        with recording:
            sender = Sender(client, [*pieces_of(header, size), PAYLOAD], 0.002, close=True)
            sender.start()
            received = receive_header(recording, LOOPBACK, peer_of(recording))
            calls = list(recording.calls)
            rest = read_to_end(recording)
            sender.finish()
    assert received == _header_of(header)
    assert rest == PAYLOAD
    peeks = [size for size, flags in calls if flags & socket.MSG_PEEK]
    takes = [size for size, flags in calls if not flags & socket.MSG_PEEK]
    assert peeks and max(peeks) <= limit, peeks
    assert sum(takes) == len(header), takes


STALLS = {
    # A trusted peer in mode require: every byte is the header's, taken as it comes.
    "v1-part": (LOOPBACK, "127.0.0.2", HEADERS["v1"][:14]),
    "v2-part": (LOOPBACK, "127.0.0.2", HEADERS["v2"][:20]),
    # Bytes that may yet be the application's stay on the socket, which wakes only for more.
    "optional-signature-part": (
        TrustPolicy(trusted="127.0.0.0/8", mode="optional", timeout=3),
        "127.0.0.2",
        b"PROX",
    ),
    "untrusted-signature-part": (ONLY_127_0_0_1, "127.0.0.3", b"\r\n\r\n\x00"),
}


@pytest.mark.parametrize("policy, source, sent", STALLS.values(), ids=STALLS.keys())
def test_waiting_for_a_stalled_header_reads_nothing_more(
    policy: TrustPolicy, source: str, sent: bytes
) -> None:
    """A peer that sent part of a header and stalls: the reader waits on the socket, and
    reads again only when more arrives (no polling loop), then finishes the header."""
    header = HEADERS["v2"] if sent.startswith(b"\r") else HEADERS["v1"]
    with tcp_connection(source) as (server, client):
        recording = RecordingSocket(fileno=server.detach())
        recording.calls = []
        with recording:
            client.sendall(sent)
            sender = Sender(client, [b"", header[len(sent) :] + PAYLOAD], delay=1.0, close=True)
            sender.start()
            try:
                received = receive_header(recording, policy, peer_of(recording))
            except UntrustedHeader:
                received = None
            calls = list(recording.calls)
            sender.finish()
    if policy is ONLY_127_0_0_1:
        assert received is None  # refused, once the signature was complete
    else:
        assert received == _header_of(header)
    # Before the 1 s stall: a peek, then (when bytes stay) one more to set the threshold;
    # after it: one peek, the take. A polling loop would have peeked about 200 times.
    assert len(calls) <= 6, calls


# --- HeaderReader driven by a selector, as gunicorn's gthread worker drives it -------------


def drive(reader: HeaderReader, timeout: float = 5.0) -> tuple[ProxyHeader | None, int]:
    """Call ``reader.read()`` whenever a selector says its socket is readable, as an event
    loop does; the header and how many times the socket woke the loop."""
    wakes = 0
    with selectors.DefaultSelector() as selector:
        selector.register(reader.sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while True:
            result = reader.read()
            if result is not NEED_DATA:
                return result, wakes
            assert not reader.stalled
            assert selector.select(deadline - time.monotonic()), "no header in time"
            wakes += 1


@pytest.mark.parametrize(
    "name, policy",
    [
        ("v1", LOOPBACK),
        ("v2-tlvs-crc32c", LOOPBACK),
        ("v1", TrustPolicy(trusted="127.0.0.0/8", mode="optional", timeout=3)),
        ("v2", TrustPolicy(trusted="127.0.0.0/8", mode="optional", timeout=3)),
    ],
    ids=["v1-require", "v2-require", "v1-optional", "v2-optional"],
)
def test_reader_in_an_event_loop_wakes_once_per_piece(name: str, policy: TrustPolicy) -> None:
    """A non-blocking socket, a header sent 3 bytes at a time: the loop wakes about once per
    piece (never spins on bytes it has seen), and leaves the payload on the socket."""
    header = HEADERS[name]
    pieces = pieces_of(header, 3)
    with tcp_connection() as (server, client):
        server.setblocking(False)
        reader = HeaderReader.start(server, policy, peer_of(server))
        assert reader is not None
        sender = Sender(client, [*pieces, PAYLOAD], 0.01, close=True)
        sender.start()
        received, wakes = drive(reader)
        server.setblocking(True)
        rest = read_to_end(server)
        sender.finish()
    assert received == _header_of(header)
    assert rest == PAYLOAD
    # One wake per piece, one more per piece while a signature is incomplete (the socket is
    # then told to wake only for more bytes), none for bytes already seen.
    assert wakes <= len(pieces) + 6, (wakes, len(pieces))


def test_reader_on_a_unix_socket_says_when_it_cannot_wait_for_more() -> None:
    """Mode optional on a UNIX socket, half a signature in: the bytes stay on the socket,
    which stays readable, so the reader reports itself stalled; finish_header then ends
    the header once the rest arrives."""
    policy = TrustPolicy(trusted="*", mode="optional", timeout=3)
    server, client = socket.socketpair()
    with server, client:
        server.setblocking(False)
        reader = HeaderReader.start(server, policy, None)
        assert reader is not None
        client.sendall(HEADERS["v1"][:4])
        assert reader.read() is NEED_DATA
        assert not reader.stalled
        assert reader.read() is NEED_DATA  # readable, nothing new
        assert reader.stalled
        sender = Sender(client, [b"", HEADERS["v1"][4:] + PAYLOAD], 0.2, close=True)
        sender.start()
        assert finish_header(reader) == _header_of(HEADERS["v1"])
        server.setblocking(True)
        assert read_to_end(server) == PAYLOAD
        sender.finish()


# --- no header --------------------------------------------------------------------------


def test_untrusted_peer_sending_plain_bytes_keeps_every_byte() -> None:
    with tcp_connection("127.0.0.2") as (server, client):
        client.sendall(PAYLOAD)
        client.shutdown(socket.SHUT_WR)
        assert receive_header(server, ONLY_127_0_0_1, peer_of(server)) is None
        assert read_to_end(server) == PAYLOAD


def test_optional_mode_without_a_header_keeps_every_byte() -> None:
    policy = TrustPolicy(trusted="127.0.0.0/8", mode="optional", timeout=3)
    for payload in (PAYLOAD, b"PUT / HTTP/1.1\r\n", b"\r\n\r\nnot a v2 signature"):
        with tcp_connection() as (server, client):
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            assert receive_header(server, policy, peer_of(server)) is None
            assert read_to_end(server) == payload
    with tcp_connection() as (server, client):
        client.sendall(HEADERS["v2"] + PAYLOAD)
        client.shutdown(socket.SHUT_WR)
        assert receive_header(server, policy, peer_of(server)) == _header_of(HEADERS["v2"])
        assert read_to_end(server) == PAYLOAD


class Untouchable:
    """Fails the test when anything about it is looked at."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the socket was touched: .{name}")


def test_mode_off_touches_nothing() -> None:
    policy = TrustPolicy(mode="off")
    untouchable = cast(socket.socket, Untouchable())
    assert receive_header(untouchable, policy, ("127.0.0.1", 1)) is None
    with tcp_connection("127.0.0.1") as (server, client):
        client.sendall(HEADERS["v1"] + PAYLOAD)
        client.shutdown(socket.SHUT_WR)
        assert receive_header(server, policy, peer_of(server)) is None
        assert read_to_end(server) == HEADERS["v1"] + PAYLOAD


# --- rejections --------------------------------------------------------------------------


def _bad_crc32c() -> bytes:
    header = bytearray(HEADERS["v2-tlvs-crc32c"])
    header[-1] ^= 0xFF
    return bytes(header)


REJECTED: dict[str, tuple[TrustPolicy, str, bytes, type[ProxyProtocolError], str]] = {
    "invalid-v1": (
        LOOPBACK,
        "127.0.0.2",
        b"PROXY TCP4 198.51.100.022 203.0.113.7 35646 443\r\n",
        InvalidHeader,
        "invalid IPv4 address",
    ),
    "v1-too-long": (LOOPBACK, "127.0.0.2", b"PROXY UNKNOWN " + b"f" * 200, InvalidHeader, "107"),
    "bad-crc32c": (LOOPBACK, "127.0.0.2", _bad_crc32c(), ChecksumMismatch, "CRC32C"),
    "missing": (LOOPBACK, "127.0.0.2", PAYLOAD, MissingHeader, "no PROXY header"),
    "untrusted-v1": (
        ONLY_127_0_0_1,
        "127.0.0.2",
        HEADERS["v1"],
        UntrustedHeader,
        "add 127.0.0.2 to PROXYPROTO_TRUSTED",
    ),
    "untrusted-v2": (ONLY_127_0_0_1, "127.0.0.3", HEADERS["v2"], UntrustedHeader, "not trusted"),
    "v1-where-v2-only": (
        TrustPolicy(trusted="127.0.0.0/8", timeout=3, versions=[2]),
        "127.0.0.2",
        HEADERS["v1"],
        InvalidHeader,
        "only v2 accepted",
    ),
}


@pytest.mark.parametrize(
    "policy, source, payload, error, reason", REJECTED.values(), ids=REJECTED.keys()
)
def test_rejections_raise_the_admissions_error(
    policy: TrustPolicy,
    source: str,
    payload: bytes,
    error: type[ProxyProtocolError],
    reason: str,
) -> None:
    with tcp_connection(source) as (server, client):
        server.settimeout(42.0)
        client.sendall(payload + PAYLOAD)
        started = time.monotonic()
        with pytest.raises(error, match=reason):
            receive_header(server, policy, peer_of(server))
        assert time.monotonic() - started < 1
        assert server.gettimeout() == 42.0


def test_timeout_never_blocks_past_the_deadline() -> None:
    """Nothing, part of a header, or a header trickling in byte by byte: each ends after the
    policy's 3 s with HeaderTimeout, and the socket's own timeout is restored."""
    v2 = HEADERS["v2-tlvs-crc32c"]
    cases: dict[str, tuple[TrustPolicy, str, Callable[[socket.socket], None]]] = {
        "nothing": (LOOPBACK, "127.0.0.2", lambda sock: None),
        "v1-part": (LOOPBACK, "127.0.0.2", lambda sock: sock.sendall(b"PROXY TCP4 1.2")),
        "v2-part": (LOOPBACK, "127.0.0.2", lambda sock: sock.sendall(v2[:20])),
        "untrusted-nothing": (ONLY_127_0_0_1, "127.0.0.3", lambda sock: None),
        "trickle": (
            LOOPBACK,
            "127.0.0.4",
            lambda sock: Sender(sock, pieces_of(v2, 1), 0.4).start(),
        ),
    }
    outcomes: dict[str, tuple[BaseException | None, float, float | None, float | None]] = {}

    def run(name: str) -> None:
        policy, source, send = cases[name]
        with tcp_connection(source) as (server, client):
            original = None if name == "nothing" else 42.0
            server.settimeout(original)
            send(client)
            started = time.monotonic()
            error: BaseException | None = None
            try:
                receive_header(server, policy, peer_of(server))
            except BaseException as raised:
                error = raised
            outcomes[name] = (error, time.monotonic() - started, original, server.gettimeout())

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert set(outcomes) == set(cases)
    for name, (error, elapsed, original, restored) in outcomes.items():
        assert isinstance(error, HeaderTimeout), (name, error)
        assert "within 3 s" in str(error), (name, error)
        assert 2.9 <= elapsed < 4.0, f"{name}: {elapsed:.2f} s"
        assert restored == original, name
    assert "no complete request" in str(outcomes["untrusted-nothing"][0])
    assert "no complete PROXY header" in str(outcomes["v2-part"][0])


CLOSED_EARLY = {
    "nothing": (LOOPBACK, b""),
    "v1-part": (LOOPBACK, HEADERS["v1"][:10]),
    "v2-part": (LOOPBACK, HEADERS["v2-tlvs-crc32c"][:30]),
    "optional-signature-part": (TrustPolicy(trusted="127.0.0.0/8", mode="optional"), b"PROX"),
    "untrusted-signature-part": (ONLY_127_0_0_1, b"\r\n\r\n"),
}


@pytest.mark.parametrize("policy, sent", CLOSED_EARLY.values(), ids=CLOSED_EARLY.keys())
def test_peer_closing_before_the_header_is_complete(policy: TrustPolicy, sent: bytes) -> None:
    """A peer that shuts its side mid-header is seen at once, even with bytes unread."""
    with tcp_connection() as (server, client):
        client.sendall(sent)
        time.sleep(0.02)
        client.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed, match="closed before the PROXY header"):
            receive_header(server, policy, peer_of(server))
        assert time.monotonic() - started < 1


def test_peer_resetting_before_the_header_is_complete() -> None:
    with tcp_connection() as (server, client):
        peer = peer_of(server)
        client.sendall(HEADERS["v1"][:10])
        time.sleep(0.02)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            receive_header(server, LOOPBACK, peer)
        assert time.monotonic() - started < 1


# --- UNIX sockets: a peer without an IP address -----------------------------------------


def test_socketpair_peer_is_trusted_only_by_a_star() -> None:
    for policy, expected in ((TrustPolicy(trusted="*"), None), (LOOPBACK, UntrustedHeader)):
        server, client = socket.socketpair()
        with server, client:
            client.sendall(HEADERS["v2-unix"] + PAYLOAD)
            client.shutdown(socket.SHUT_WR)
            if expected is None:
                assert receive_header(server, policy, None) == _header_of(HEADERS["v2-unix"])
                assert read_to_end(server) == PAYLOAD
            else:
                with pytest.raises(expected, match="without an IP address"):
                    receive_header(server, policy, None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from(list(HEADERS.values())[:-1]),
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_any_split_leaves_the_payload_exact(header: bytes, payload: bytes, cuts: list[int]) -> None:
    data = header + payload
    bounds = sorted({cut for cut in cuts if cut < len(data)})
    pieces = [
        data[start:end] for start, end in zip([0, *bounds], [*bounds, len(data)], strict=True)
    ]
    server, client = socket.socketpair()
    with server, client:
        sender = Sender(client, pieces, 0.001, close=True)
        sender.start()
        received = receive_header(server, TrustPolicy(trusted="*", timeout=3), None)
        rest = read_to_end(server)
        sender.finish()
    assert received == _header_of(header)
    assert rest == payload


# --- TLS after the header ----------------------------------------------------------------


def _tls_client(sock: socket.socket, header: bytes, cafile: Path) -> bytes:
    """Send ``header`` and the ClientHello in one write, finish the handshake, send
    ``ping`` and return the server's answer."""
    context = ssl.create_default_context(cafile=str(cafile))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if first:
                pending, first = header + pending, False
            sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise EOFError("the server closed during the handshake") from None
            incoming.write(data)
    tls.write(b"ping")
    sock.sendall(outgoing.read())
    while True:
        try:
            return tls.read(64)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                raise EOFError("the server closed before answering") from None
            incoming.write(data)


def test_tls_handshake_after_the_header(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    header = HEADERS["v2-tlvs-crc32c"]
    outcome: dict[str, object] = {}

    with tcp_connection() as (server, client):

        def serve() -> None:
            try:
                outcome["header"] = receive_header(server, LOOPBACK, peer_of(server))
                with context.wrap_socket(server, server_side=True) as tls:
                    outcome["request"] = tls.recv(64)
                    tls.sendall(b"pong over " + tls.version().encode())  # type: ignore[union-attr]
            except BaseException as error:
                outcome["error"] = error

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        answer = _tls_client(client, header, cert)
        thread.join(10)
    assert "error" not in outcome, outcome
    assert outcome["header"] == _header_of(header)
    assert outcome["request"] == b"ping"
    assert answer.startswith(b"pong over TLS")


# --- reject ------------------------------------------------------------------------------


def test_reject_closes_without_a_byte_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with tcp_connection("127.0.0.3") as (server, client):
        client.sendall(HEADERS["v1"] + PAYLOAD)
        peer = peer_of(server)
        # A server's file objects hold the socket open; reject closes it all the same.
        reader = server.makefile("rb")
        with caplog.at_level(logging.WARNING, logger="proxyproto_mw"):
            with pytest.raises(UntrustedHeader) as raised:
                receive_header(server, ONLY_127_0_0_1, peer)
            reject(server, peer, raised.value)
        client.settimeout(5)
        try:
            received = client.recv(65536)
        except ConnectionResetError:
            received = b""
        reader.close()
    assert received == b""
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.name == "proxyproto_mw"
    assert record.getMessage().startswith(f"closing connection from 127.0.0.3:{peer[1]}: ")
    assert "PROXYPROTO_TRUSTED" in record.getMessage()


def test_reject_is_silent_when_the_peer_went_away(caplog: pytest.LogCaptureFixture) -> None:
    with tcp_connection() as (server, client):
        client.shutdown(socket.SHUT_WR)
        peer = peer_of(server)
        with caplog.at_level(logging.DEBUG, logger="proxyproto_mw"):
            with pytest.raises(ConnectionClosed) as raised:
                receive_header(server, LOOPBACK, peer)
            reject(server, peer, raised.value)
    assert caplog.records == []
    assert server.fileno() == -1
