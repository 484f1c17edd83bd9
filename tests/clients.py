"""Client-side helpers shared by the end-to-end tests: raw sockets bound to a loopback
source, an HTTP/1.1 reader, a WebSocket session, the addresses and headers the tests send,
and the assertions on how a server refuses a connection.

Each client binds its own loopback address, so that the address a server reports can only
have come from the PROXY header (or from that socket).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import connect as websocket_connect

from proxyproto_mw import Command, TLVType, encode_v1, encode_v2, ssl_tlv
from tests.servers import LogMark

Address = tuple[str, int]
JSON = dict[str, Any]

CLIENT: Address = ("198.51.100.22", 35646)
"""The client address the tests' headers carry (AWS's documentation example)."""
DESTINATION: Address = ("203.0.113.7", 443)
"""The address the client reached, as the headers say."""
CLIENT6: Address = ("2001:db8::22", 50123)
DESTINATION6: Address = ("2001:db8:0:1::7", 8443)

WARNING = "closing connection from"
"""The start of the line ``proxyproto_mw`` logs when it closes a connection."""


# --- raw sockets and HTTP/1.1 ------------------------------------------------------------


def open_from(source: str, address: Address, timeout: float = 5.0) -> socket.socket:
    """A TCP connection from ``source`` (a loopback address) to ``address``."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def local_address(sock: socket.socket) -> Address:
    """The socket's own (host, port)."""
    host, port = sock.getsockname()[:2]
    return host, port


def request(path: str = "/", *, method: str = "GET", body: bytes = b"", headers: str = "") -> bytes:
    """An HTTP/1.1 request with a Content-Length."""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}"
    if body or method != "GET":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


@dataclass
class Response:
    """One HTTP response read from a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> JSON:
        """The body as JSON (an object)."""
        value = json.loads(self.body)
        assert isinstance(value, dict), value
        return value


class HttpReader:
    """Reads HTTP/1.1 responses, one after another, from a raw socket (or from ``data``)."""

    def __init__(self, sock: socket.socket | None, data: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(data)

    def _fill(self) -> bool:
        if self.sock is None:
            return False
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes; ``EOFError`` if the connection closes first."""
        while len(self.buffer) < size:
            if not self._fill():
                raise EOFError(f"closed in a response body; received {bytes(self.buffer)!r}")
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"closed in a response; received {bytes(self.buffer)!r}")
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return line

    def response(self) -> Response:
        """The next response; ``EOFError`` if the connection closes first."""
        status_line = self._line()
        status = int(status_line.split(b" ")[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            body = b""
        elif "content-length" in headers:
            body = self.take(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self._line().split(b";")[0], 16):
                chunks.append(self.take(size))
                self.take(2)
            while self._line():
                pass
            body = b"".join(chunks)
        else:
            while self._fill():
                pass
            body, self.buffer = bytes(self.buffer), bytearray()
        return Response(status, headers, body)


def exchange(address: Address, source: str, payload: bytes) -> tuple[Response, Address]:
    """Send ``payload`` (a header and one request) from ``source``; the response and our
    address."""
    with open_from(source, address) as sock:
        sock.sendall(payload)
        return HttpReader(sock).response(), local_address(sock)


def drain(sock: socket.socket, timeout: float = 8.0) -> tuple[bytes, str]:
    """Everything the server sends until it closes: (bytes, ``eof``/``reset``/``timeout``)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        return received, "reset"
    except TimeoutError:
        return received, "timeout"
    return received, "eof"


def httpx_client(source: str) -> httpx.Client:
    """An httpx client whose connections come from ``source``, ignoring proxy variables."""
    return httpx.Client(
        transport=httpx.HTTPTransport(local_address=source), trust_env=False, timeout=5
    )


def client_address(response: httpx.Response) -> Address:
    """The local (host, port) of the connection an httpx response came over."""
    host, port = response.extensions["network_stream"].get_extra_info("client_addr")[:2]
    return host, port


# --- refused connections -----------------------------------------------------------------


def assert_closed_silently(sock: socket.socket, timeout: float = 8.0) -> None:
    """The server closed the connection without writing a single byte."""
    received, end = drain(sock, timeout)
    assert received == b"", f"the server wrote {received!r} before closing"
    assert end in ("eof", "reset"), f"the connection was not closed within {timeout} s"


def send_and_assert_closed_silently(address: Address, source: str, payload: bytes) -> Address:
    """Send ``payload`` from ``source``; the server closes without a byte. Our address."""
    with open_from(source, address) as sock:
        peer = local_address(sock)
        sock.sendall(payload)
        assert_closed_silently(sock)
    return peer


def assert_one_warning(mark: LogMark, peer: Address, reason: str) -> str:
    """Exactly one ``closing connection`` line since ``mark``, naming ``peer`` and ``reason``."""
    host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    pattern = rf"{WARNING} {re.escape(host)}:{peer[1]}: .*{reason}"
    (line,) = mark.wait_for(pattern)
    time.sleep(0.1)  # a second line for the same connection would be written by now
    lines = mark.lines(WARNING)
    assert lines == [line], f"expected one warning, got {lines}"
    return line


def times_until_closed(
    address: Address, partial: Mapping[str, bytes]
) -> tuple[dict[str, float], dict[str, Address]]:
    """Open one connection from 127.0.0.1 per ``partial`` payload (an incomplete header),
    all at once, and wait for the server to close each without a byte: the seconds each
    stayed open and each one's address, by name."""
    closed_after: dict[str, float] = {}
    failures: list[BaseException] = []
    peers: dict[str, Address] = {}

    def wait(name: str, sock: socket.socket, started: float) -> None:
        try:
            assert_closed_silently(sock, timeout=10)
            closed_after[name] = time.monotonic() - started
        except BaseException as error:
            failures.append(error)

    # The server's clock starts when it accepts, after connect() began here: measuring
    # from before connect() can only make the time look longer.
    sockets: dict[str, socket.socket] = {}
    threads = []
    try:
        for name, payload in partial.items():
            started = time.monotonic()
            sock = sockets[name] = open_from("127.0.0.1", address)
            peers[name] = local_address(sock)
            sock.sendall(payload)
            thread = threading.Thread(target=wait, args=(name, sock, started))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(15)
    finally:
        for sock in sockets.values():
            sock.close()
    assert not failures, failures
    return closed_after, peers


# --- v2 TLVs -----------------------------------------------------------------------------


def v2_tlvs() -> list[tuple[int, bytes]]:
    """The TLVs an HAProxy with ``proxy-v2-options ssl,authority,unique-id`` sends (CRC32C
    is added by ``encode_v2(checksum=True)``)."""
    ssl = ssl_tlv(client=0x01, verify=0, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
    return [
        (TLVType.ALPN, b"http/1.1"),
        (TLVType.AUTHORITY, b"app.example.com"),
        (TLVType.UNIQUE_ID, b"\x00\x01request-42"),
        (ssl.type, ssl.value),
    ]


def assert_v2_extension(extension: JSON, peer: Address) -> None:
    """The scope extension (or environ entry) of a header built from :func:`v2_tlvs`."""
    assert extension["version"] == 2
    assert extension["command"] == "PROXY"
    assert extension["client"] == list(CLIENT)
    assert extension["server"] == list(DESTINATION)
    assert extension["peer"] == list(peer)
    assert extension["alpn"] == b"http/1.1".hex()
    assert extension["authority"] == "app.example.com"
    assert extension["unique_id"] == b"\x00\x01request-42".hex()
    assert extension["ssl"]["tls"] is True
    assert extension["ssl"]["version"] == "TLSv1.3"
    assert extension["ssl"]["cipher"] == "TLS_AES_128_GCM_SHA256"
    assert set(extension["tlvs"]) == {"1", "2", "3", "5", "32"}


def _bad_crc32c() -> bytes:
    header = bytearray(encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True))
    header[-1] ^= 0xFF  # the CRC32C TLV comes last
    return bytes(header)


BAD_INPUT = {
    "v1-leading-zero": (
        b"PROXY TCP4 198.51.100.022 203.0.113.7 35646 443\r\n" + request(),
        r"invalid IPv4 address '198\.51\.100\.022'",
    ),
    "v1-port-leading-zero": (
        b"PROXY TCP4 198.51.100.22 203.0.113.7 035646 443\r\n" + request(),
        r"invalid port '035646'",
    ),
    "v1-bare-lf": (
        b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 443\n" + request(),
        r"LF before its CRLF",
    ),
    "v1-garbage-protocol": (b"PROXY TCP5 garbage\r\n" + request(), r"unknown protocol 'TCP5'"),
    "v1-not-ascii": (b"PROXY \x00\xff\xfe garbage\r\n" + request(), r"not ASCII"),
    "v2-bad-crc32c": (_bad_crc32c() + request(), r"CRC32C"),
    "v2-version-3": (
        encode_v2(CLIENT, DESTINATION)[:12] + b"\x31\x11\x00\x0c" + bytes(12) + request(),
        r"version 3",
    ),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), r"no PROXY header"),
    "missing-header": (request(), r"no PROXY header from trusted peer 127\.0\.0\.1"),
}
"""Input a server trusting 127.0.0.1 and requiring the header closes without a byte, by
name: (what 127.0.0.1 sends, the reason its WARNING line gives)."""

UNKNOWN_AND_LOCAL = {
    "v1-unknown": (encode_v1(), 1, "PROXY"),
    "v1-unknown-with-fields": (
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        1,
        "PROXY",
    ),
    "v2-local": (encode_v2(command=Command.LOCAL), 2, "LOCAL"),
    # AWS NLB health checks: LOCAL, family INET, TLVs where the address block would be
    "v2-local-nlb": (
        b"\r\n\r\n\x00\r\nQUIT\n\x20\x11\x00\x07\x04\x00\x04\x00\x00\x00\x00",
        2,
        "LOCAL",
    ),
}
"""Headers that carry no client address, by name: (header, its version, its command). A
server uses the connection's own addresses for them."""


# --- WebSocket ---------------------------------------------------------------------------


@dataclass
class WebSocketResult:
    """What a WebSocket session saw: the app's greeting (its scope) and the echoes."""

    scope: JSON
    text_echo: str | bytes
    bytes_echo: str | bytes
    local: Address


async def _websocket_session(sock: socket.socket, uri: str) -> WebSocketResult:
    local = local_address(sock)
    async with websocket_connect(
        uri, sock=sock, proxy=None, open_timeout=5, close_timeout=2, ping_interval=None
    ) as websocket:
        greeting = await websocket.recv()
        await websocket.send("hello through the proxy")
        text_echo = await websocket.recv()
        await websocket.send(b"\x00\x01\xfe\xff")
        bytes_echo = await websocket.recv()
    scope = json.loads(greeting)
    assert isinstance(scope, dict)
    return WebSocketResult(scope, text_echo, bytes_echo, local)


def websocket_session(
    address: Address, source: str, header: bytes = b"", path: str = "/ws"
) -> WebSocketResult:
    """A WebSocket session with the ``websockets`` client over a socket from ``source`` that
    sent ``header`` first."""
    sock = open_from(source, address)
    sock.sendall(header)
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    uri = f"ws://{host}:{address[1]}{path}"

    async def bounded() -> WebSocketResult:
        return await asyncio.wait_for(_websocket_session(sock, uri), 15)

    try:
        return asyncio.run(bounded())
    finally:
        sock.close()


def assert_websocket_echoes(result: WebSocketResult) -> None:
    """The echo round trips of :func:`websocket_session` came back unchanged."""
    assert result.text_echo == "hello through the proxy"
    assert result.bytes_echo == b"\x00\x01\xfe\xff"
