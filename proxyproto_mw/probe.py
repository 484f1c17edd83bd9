"""``proxyproto-mw probe URL``: act as the load balancer in front of a backend, once.

It connects to the backend at URL, sends a PROXY header claiming the client address of
``--client`` (any address: it is only bytes in the header), then an HTTP request, or for
``ws://`` URLs a WebSocket handshake (and optionally messages), over TLS for ``https://``
and ``wss://`` (TLS starts after the header, as behind a TCP listener), and prints what came
back. Its exit status tells a script what happened:

- 0: the backend answered (any HTTP status; a WebSocket handshake, accepted or not);
- 1: the backend closed (or reset) the connection without answering: it refused the header;
- 2: usage error (bad URL, address or option);
- 3: no answer (or no WebSocket message asked for) within ``--timeout``;
- 4: the connection could not be made (refused, unknown host, TLS handshake failed).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import socket
import ssl
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import click

from .encoder import encode_v1, encode_v2, ssl_tlv
from .header import TLV, Address, Command, TLVType

__all__ = [
    "ANSWERED",
    "CANNOT_CONNECT",
    "CLOSED",
    "TIMED_OUT",
    "USAGE",
    "Target",
    "parse_address",
    "parse_target",
    "parse_tlv",
    "probe_command",
]

ANSWERED = 0
CLOSED = 1
USAGE = 2
TIMED_OUT = 3
CANNOT_CONNECT = 4

DEFAULT_CLIENT = "203.0.113.7:54321"
"""A documentation address (RFC 5737): plainly not a real client in any log."""
_DEFAULT_SERVER_HOST = {4: "198.51.100.10", 6: "2001:db8::10"}
_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_RESPONSE_LIMIT = 1 << 20
_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\x0b\x0c")


class ProbeTimeout(Exception):
    """The backend did not answer within the timeout."""


class ProbeClosed(Exception):
    """The backend closed the connection; ``data`` holds what it sent before."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__("closed")
        self.data = data


@dataclass(frozen=True)
class Target:
    """Where the probe connects, and what it speaks there."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def websocket(self) -> bool:
        """A ``ws://`` or ``wss://`` URL."""
        return self.scheme in ("ws", "wss")

    @property
    def tls(self) -> bool:
        """An ``https://`` or ``wss://`` URL: TLS after the header."""
        return self.scheme in ("https", "wss")

    @property
    def host_header(self) -> str:
        """The ``Host`` header's value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_target(url: str) -> Target:
    """Split ``url``; a ``click.BadParameter`` names what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise click.BadParameter(
            f"{url!r}: the scheme must be http, https, ws or wss", param_hint="URL"
        )
    try:
        port = parts.port
    except ValueError:
        raise click.BadParameter(f"{url!r}: the port is not a number 0..65535") from None
    if not parts.hostname:
        raise click.BadParameter(f"{url!r} has no host", param_hint="URL")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    default = 443 if parts.scheme in ("https", "wss") else 80
    return Target(parts.scheme, parts.hostname, default if port is None else port, path)


def parse_address(text: str, option: str) -> Address:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) as (host, port); ``click.BadParameter`` if not."""
    host, separator, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        address = None
        number = -1
    if not separator or address is None or not 0 <= number <= 0xFFFF:
        raise click.BadParameter(
            f"{text!r} is not ADDR:PORT (an IP address, [IPv6]:PORT, port 0..65535)",
            param_hint=option,
        )
    return str(address), number


_TLV_ALIASES = {"aws": "AWS", "aws_vpce": "AWS", "gcp": "GCP_PSC", "azure": "AZURE"}


def parse_tlv(text: str) -> TLV:
    """``NAME=VALUE`` as a TLV.

    NAME is a :class:`~proxyproto_mw.header.TLVType` name in any case (``authority``,
    ``alpn``, ``unique-id``, ``netns``, ``noop``, ``ssl``, ``aws``, ``gcp-psc``, ``azure``)
    or a number (``0xE5``). VALUE is text, or ``hex:...`` for raw bytes. ``ssl=TLSv1.3``
    says the client connected over TLS with that version; ``aws=vpce-...`` is the VPC
    endpoint id, ``gcp-psc=N`` the connection id, ``azure=N`` the LINKID.
    """
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="--tlv")
    key = name.strip().lower().replace("-", "_")
    kind: int
    try:
        kind = int(key, 0)
    except ValueError:
        try:
            kind = TLVType[_TLV_ALIASES.get(key, key).upper()]
        except KeyError:
            names = ", ".join(member.name.lower().replace("_", "-") for member in TLVType)
            raise click.BadParameter(
                f"unknown TLV {name!r}: use a number or one of {names}", param_hint="--tlv"
            ) from None
    if not 0 <= kind <= 0xFF:
        raise click.BadParameter(f"TLV type {kind} is not one byte", param_hint="--tlv")
    if kind == TLVType.CRC32C:
        raise click.BadParameter("use --crc32c for a checksum", param_hint="--tlv")
    try:
        raw = bytes.fromhex(value[4:]) if value.startswith("hex:") else value.encode()
        if kind == TLVType.SSL and not value.startswith("hex:"):
            return ssl_tlv(version=value)
        if kind == TLVType.AWS and not value.startswith("hex:"):
            raw = b"\x01" + raw
        elif kind == TLVType.GCP_PSC and not value.startswith("hex:"):
            raw = int(value).to_bytes(8, "big")
        elif kind == TLVType.AZURE and not value.startswith("hex:"):
            raw = b"\x01" + int(value).to_bytes(4, "little")
    except (ValueError, OverflowError) as error:
        raise click.BadParameter(f"{text!r}: {error}", param_hint="--tlv") from None
    return TLV(kind, raw)


def _show(data: bytes) -> str:
    if all(byte in _PRINTABLE for byte in data):
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(data)} bytes, hex) {data.hex(' ')}"


class _Connection:
    """A blocking socket with one deadline for the whole exchange."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()

    def fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ProbeTimeout
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise ProbeTimeout from None
        except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
            chunk = b""
        if not chunk:
            raise ProbeClosed(bytes(self.buffer))
        self.buffer += chunk
        if len(self.buffer) > _RESPONSE_LIMIT:
            raise click.ClickException(f"the answer is longer than {_RESPONSE_LIMIT} bytes")

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def head(self) -> bytes:
        """An HTTP response head, up to and including the empty line."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self.fill()
        return self.take(end + 4)

    def until_closed(self) -> bytes:
        try:
            while True:
                self.fill()
        except ProbeClosed:
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def _http_body(connection: _Connection, fields: dict[str, str], status: int) -> bytes:
    if 100 <= status < 200 or status in (204, 304):
        return b""
    if "content-length" in fields:
        return connection.take(int(fields["content-length"]))
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            while (end := connection.buffer.find(b"\r\n")) < 0:
                connection.fill()
            size = int(connection.take(end + 2).split(b";")[0], 16)
            if size == 0:
                break
            body += connection.take(size + 2)[:-2]
        return bytes(body)
    return connection.until_closed()


def _http(connection: _Connection, target: Target) -> None:
    request = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
        "User-Agent: proxyproto-mw-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    connection.sock.sendall(request.encode("ascii"))
    head = connection.head()
    status_line, fields = _headers(head)
    parts = status_line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    click.echo(head.decode("latin-1").rstrip("\r\n").replace("\r\n", "\n"))
    click.echo("")
    try:
        body = _http_body(connection, fields, status)
    except ProbeClosed as closed:
        body = closed.data
    if body:
        click.echo(_show(body))


def _mask(payload: bytes, key: bytes) -> bytes:
    return bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as RFC 6455 requires)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    key = os.urandom(4)
    return bytes([0x80 | opcode]) + length + key + _mask(payload, key)


def _message(connection: _Connection) -> tuple[int, bytes]:
    """The next data message (opcode, payload), pings answered; a close is ProbeClosed."""
    opcode = 0
    payload = bytearray()
    while True:
        first, second = connection.take(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(connection.take(2), "big")
        elif size == 127:
            size = int.from_bytes(connection.take(8), "big")
        key = connection.take(4) if second & 0x80 else b""
        data = connection.take(size)
        if key:
            data = _mask(data, key)
        kind = first & 0x0F
        if kind == 0x8:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            click.echo(f"< close {code or ''} {data[2:].decode('utf-8', 'replace')}".rstrip())
            raise ProbeClosed
        if kind == 0x9:
            connection.sock.sendall(_frame(0xA, data))
            continue
        if kind == 0xA:
            continue
        if kind:
            opcode = kind
        payload += data
        if first & 0x80:
            return opcode, bytes(payload)


def _websocket(connection: _Connection, target: Target, send: Sequence[str], receive: int) -> int:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "User-Agent: proxyproto-mw-probe\r\n\r\n"
    )
    connection.sock.sendall(request.encode("ascii"))
    head = connection.head()
    status_line, fields = _headers(head)
    click.echo(head.decode("latin-1").rstrip("\r\n").replace("\r\n", "\n"))
    click.echo("")
    accept = base64.b64encode(hashlib.sha1((key + _WEBSOCKET_GUID).encode()).digest()).decode()
    if status_line.split(" ")[1:2] != ["101"] or fields.get("sec-websocket-accept") != accept:
        click.echo("WebSocket handshake refused")
        return ANSWERED
    click.echo("WebSocket handshake accepted")
    for text in send:
        connection.sock.sendall(_frame(0x1, text.encode()))
        click.echo(f"> {text}")
    for _ in range(receive):
        opcode, payload = _message(connection)
        click.echo(f"< {payload.decode('utf-8', 'replace') if opcode == 1 else _show(payload)}")
    connection.sock.sendall(_frame(0x8, (1000).to_bytes(2, "big")))
    return ANSWERED


def _header(
    version: int, *, client: Address, server: Address, tlvs: Sequence[TLV], local: bool, crc: bool
) -> bytes:
    if version == 1:
        return encode_v1(client, server)
    if local:
        return encode_v2(command=Command.LOCAL, tlvs=tlvs, checksum=crc)
    return encode_v2(client, server, tlvs=tlvs, checksum=crc)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"proxyproto-mw probe: {message}", err=True)
    sys.exit(code)


@click.command(
    "probe",
    short_help="Send a PROXY header and a request to a backend; print the answer.",
    help=(
        "Connect to the backend at URL (http, https, ws or wss) as a load balancer would: "
        "send a PROXY header claiming --client, then an HTTP request or a WebSocket "
        "handshake (TLS after the header for https and wss), and print the answer. "
        "Exit status: 0 answered, 1 closed without an answer (the backend refused the "
        "header), 2 usage error, 3 no answer within --timeout, 4 could not connect."
    ),
)
@click.argument("url")
@click.option(
    "--version",
    "version",
    type=click.Choice(["1", "2"]),
    help="PROXY protocol version. [default: 1, or 2 with --tlv, --local or --crc32c]",
)
@click.option(
    "--client",
    default=DEFAULT_CLIENT,
    show_default=True,
    help="The client ADDR:PORT the header claims ([IPv6]:PORT for IPv6).",
)
@click.option(
    "--server",
    help="The server ADDR:PORT the header claims. [default: 198.51.100.10 or 2001:db8::10, "
    "with the URL's port]",
)
@click.option(
    "--tlv",
    "tlvs",
    multiple=True,
    help="A v2 TLV NAME=VALUE (authority=example.com, alpn=h2, unique-id=..., ssl=TLSv1.3, "
    "aws=vpce-..., gcp-psc=N, azure=N, 0xE5=hex:0102); repeatable.",
)
@click.option("--crc32c", "crc", is_flag=True, help="Add a CRC32C TLV (v2).")
@click.option("--local", is_flag=True, help="Send a v2 LOCAL header, as a health check does.")
@click.option(
    "--send",
    multiple=True,
    help="WebSocket: a text message to send after the handshake; repeatable.",
)
@click.option(
    "--receive",
    type=click.IntRange(min=0),
    help="WebSocket: how many messages to wait for and print. [default: as many as --send]",
)
@click.option("--insecure", "-k", is_flag=True, help="TLS: do not verify the certificate.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds for the whole exchange.",
)
def probe_command(
    *,
    url: str,
    version: str | None,
    client: str,
    server: str | None,
    tlvs: tuple[str, ...],
    crc: bool,
    local: bool,
    send: tuple[str, ...],
    receive: int | None,
    insecure: bool,
    timeout: float,
) -> None:
    """The ``probe`` command."""
    target = parse_target(url)
    claimed_client = parse_address(client, "--client")
    family = ipaddress.ip_address(claimed_client[0]).version
    claimed_server = (
        parse_address(server, "--server") if server else (_DEFAULT_SERVER_HOST[family], target.port)
    )
    if ipaddress.ip_address(claimed_server[0]).version != family:
        raise click.BadParameter("--client and --server must both be IPv4 or both IPv6")
    records = [parse_tlv(text) for text in tlvs]
    number = int(version) if version else (2 if records or local or crc else 1)
    if number == 1 and (records or local or crc):
        raise click.UsageError("--tlv, --local and --crc32c need --version 2")
    if not target.websocket and (send or receive):
        raise click.UsageError("--send and --receive are for ws:// and wss:// URLs")
    header = _header(
        number, client=claimed_client, server=claimed_server, tlvs=records, local=local, crc=crc
    )
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except TimeoutError:
        _fail(TIMED_OUT, f"no connection to {target.host}:{target.port} within {timeout:g} s")
    except OSError as error:
        _fail(CANNOT_CONNECT, f"cannot connect to {target.host}:{target.port}: {error}")
    host, port = claimed_client
    described = "LOCAL" if local else f"client {f'[{host}]' if ':' in host else host}:{port}"
    click.echo(f"> PROXY v{number} header ({len(header)} bytes), {described}", err=True)
    try:
        with sock:
            sock.sendall(header)
            stream: socket.socket | ssl.SSLSocket = sock
            if target.tls:
                context = ssl.create_default_context()
                if insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                try:
                    stream = context.wrap_socket(sock, server_hostname=target.host)
                except (ssl.SSLEOFError, ConnectionResetError):
                    raise ProbeClosed from None
                except TimeoutError:
                    raise ProbeTimeout from None
                except (ssl.SSLError, OSError) as error:
                    _fail(CANNOT_CONNECT, f"TLS handshake after the header failed: {error}")
            connection = _Connection(stream, deadline)
            if target.websocket:
                _websocket(connection, target, send, len(send) if receive is None else receive)
            else:
                _http(connection, target)
    except ProbeTimeout:
        _fail(TIMED_OUT, f"no answer within {timeout:g} s")
    except ProbeClosed as closed:
        if closed.data:
            click.echo(_show(closed.data))
            _fail(CLOSED, "the backend closed the connection in the middle of its answer")
        _fail(CLOSED, "the backend closed the connection without an answer")
    except (ConnectionResetError, BrokenPipeError):
        _fail(CLOSED, "the backend reset the connection")
