"""``proxyproto-mw inspect``: show what a load balancer really sends, connection by connection.

Point a balancer's target (or HAProxy's ``server`` line, or ``curl --haproxy-protocol``)
at ``proxyproto-mw inspect --port N``. For every connection it prints the peer, the
decoded header (version, command, addresses, every TLV by name, the CRC32C verdict) or
why the bytes are not a valid header, then the first bytes that followed, and closes the
connection without writing a byte. It trusts every peer because it only shows: it never
serves an application.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import string
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from .decoder import NEED_DATA, HeaderDecoder
from .errors import ChecksumMismatch, NotAHeader, ProxyProtocolError
from .header import TLV, Address, Command, ProxyHeader, SSLInfo, TLVType

__all__ = ["Inspection", "describe_tlv", "inspect_command", "inspect_connection", "show_bytes"]

DATA_LIMIT = 4096
"""The most bytes after the header that an inspection keeps."""

_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\x0b\x0c")


def show_bytes(data: bytes) -> tuple[str, str]:
    """``data`` for a reader: ``("text", escaped text)`` when it is printable ASCII, else
    ``("hex", "16 03 01 ...")``."""
    if data and all(byte in _PRINTABLE for byte in data):
        text = data.decode("ascii")
        escaped = text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
        return "text", escaped.replace("\t", "\\t")
    return "hex", data.hex(" ")


def _text_or_hex(value: bytes) -> str:
    kind, shown = show_bytes(value)
    return shown if kind == "text" else f"hex {shown}"


def _tlv_name(kind: int) -> str:
    try:
        return TLVType(kind).name
    except ValueError:
        return f"0x{kind:02X}"


def _ssl_details(ssl: SSLInfo) -> str:
    flags = [
        name
        for bit, name in (
            (0x01, "client TLS"),
            (0x02, "cert on connection"),
            (0x04, "cert in session"),
        )
        if ssl.client & bit
    ]
    verify = "verified" if ssl.verify == 0 else f"not verified ({ssl.verify})"
    return f"flags 0x{ssl.client:02X} ({', '.join(flags) or 'none'}), client certificate {verify}"


def describe_tlv(header: ProxyHeader, tlv: TLV) -> dict[str, Any]:
    """One TLV by name with its value decoded where the specification (or the cloud that
    defines it) says how; ``sub`` holds an SSL TLV's sub-TLVs."""
    kind, value = tlv.type, tlv.value
    entry: dict[str, Any] = {"type": kind, "name": _tlv_name(kind), "length": len(value)}
    alone = ProxyHeader(header.version, header.command, header.family, header.transport,
                        None, None, (tlv,))  # fmt: skip
    shown: str
    if kind == TLVType.CRC32C:
        shown = f"0x{int.from_bytes(value, 'big'):08X}"
    elif kind == TLVType.NOOP:
        shown = f"{len(value)} bytes of padding"
    elif kind == TLVType.SSL and alone.ssl is not None:
        ssl = alone.ssl
        shown = _ssl_details(ssl)
        entry["sub"] = [
            {
                "type": sub.type,
                "name": _tlv_name(sub.type),
                "length": len(sub.value),
                "value": _text_or_hex(sub.value)
                if sub.type != TLVType.SSL_CLIENT_CERT
                else f"{len(sub.value)} bytes (DER)",
            }
            for sub in ssl.tlvs
        ]
    elif kind == TLVType.AWS and alone.aws_vpce_id is not None:
        shown = f"VPC endpoint {alone.aws_vpce_id}"
    elif kind == TLVType.GCP_PSC and alone.gcp_psc_connection_id is not None:
        shown = f"PSC connection id {alone.gcp_psc_connection_id}"
    elif kind == TLVType.AZURE and alone.azure_private_link_id is not None:
        shown = f"Private Link LINKID {alone.azure_private_link_id}"
    else:
        shown = _text_or_hex(value)
    entry["value"] = shown
    entry["hex"] = value.hex()
    return entry


@dataclass
class Inspection:
    """What one connection delivered, and what the decoder made of it."""

    number: int
    peer: Address
    local: Address
    received: bytes = b""
    """Every byte that arrived before the header was complete (or found invalid)."""
    header: ProxyHeader | None = None
    header_length: int = 0
    verdict: str = "header"
    """``header``, ``invalid header``, ``not a header``, ``incomplete header`` or
    ``no data``."""
    error: str | None = None
    crc32c: str | None = None
    """``ok``, ``absent``, ``mismatch`` or (LOCAL) ``not checked`` for v2; None for v1."""
    data: bytes = b""
    """The first bytes after the header (at most :data:`DATA_LIMIT`)."""
    end: str = ""
    """How the wait for bytes ended: ``data``, ``closed`` or ``timeout``."""
    tlvs: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The inspection as plain JSON values (bytes as hex, and as text when printable)."""
        header = self.header
        kind, shown = show_bytes(self.data)
        result: dict[str, Any] = {
            "connection": self.number,
            "peer": list(self.peer),
            "local": list(self.local),
            "verdict": self.verdict,
            "error": self.error,
            "header": None,
            "crc32c": self.crc32c,
            "data": {
                "length": len(self.data),
                "text": shown if kind == "text" else None,
                "hex": self.data.hex(),
            },
            "end": self.end,
        }
        if header is None:
            result["received"] = self.received.hex()
        else:
            result["header"] = {
                "version": header.version,
                "command": header.command.value,
                "family": header.family.name,
                "transport": header.transport.name,
                "client": list(header.source) if header.source else None,
                "server": list(header.destination) if header.destination else None,
                "unix": [path.decode("utf-8", "replace") for path in header.unix]
                if header.unix
                else None,
                "length": self.header_length,
                "tlvs": self.tlvs,
            }
        return result

    def as_text(self) -> str:
        """The inspection as indented lines for a terminal."""
        lines = [f"connection {self.number} from {_address(self.peer)} to {_address(self.local)}"]
        header = self.header
        if header is None:
            lines.append(f"  {self.verdict}: {self.error}")
            if self.received:
                kind, shown = show_bytes(self.received)
                lines.append(f"  received ({len(self.received)} bytes, {kind}): {shown}")
            return "\n".join(lines)
        kind_line = f"  header: v{header.version} {header.command.value}"
        if header.version == 2:
            kind_line += f" {header.family.name} {header.transport.name}"
        lines.append(f"{kind_line}, {self.header_length} bytes")
        if header.command is Command.LOCAL:
            lines.append("  LOCAL: the sender's own connection (health check); no client address")
        elif header.source is not None and header.destination is not None:
            lines.append(f"  client: {_address(header.source)}")
            lines.append(f"  server: {_address(header.destination)}")
        elif header.unix is not None:
            lines.append(f"  client: unix {header.unix.source.decode('utf-8', 'replace')}")
            lines.append(f"  server: unix {header.unix.destination.decode('utf-8', 'replace')}")
        else:
            lines.append("  no addresses (UNKNOWN or UNSPEC): the connection's own apply")
        for tlv in self.tlvs:
            lines.append(f"  TLV {tlv['name']} (0x{tlv['type']:02X}, {tlv['length']} bytes): "
                         f"{tlv['value']}")  # fmt: skip
            for sub in tlv.get("sub", ()):
                lines.append(f"    {sub['name']} (0x{sub['type']:02X}): {sub['value']}")
        if self.crc32c == "ok":
            lines.append("  CRC32C ok")
        elif self.crc32c == "absent":
            lines.append("  no CRC32C")
        elif self.crc32c == "not checked":
            lines.append("  CRC32C not checked: a LOCAL header's block and TLVs are ignored")
        if self.data:
            kind, shown = show_bytes(self.data)
            lines.append(f"  data ({len(self.data)} bytes, {kind}): {shown}")
        elif self.end == "timeout":
            lines.append("  no data after the header within the timeout")
        else:
            lines.append("  connection closed after the header, no data")
        return "\n".join(lines)


def _address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _read(reader: asyncio.StreamReader, deadline: float) -> bytes | None:
    """The next chunk; ``b""`` when the peer closed, None when ``deadline`` passed."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        return None
    try:
        return await asyncio.wait_for(reader.read(65536), remaining)
    except asyncio.TimeoutError:
        return None
    except OSError:  # a reset: treat as closed, keeping what arrived
        return b""


async def inspect_connection(
    reader: asyncio.StreamReader, inspection: Inspection, timeout: float
) -> None:
    """Fill ``inspection`` from the connection: the header (or why not), then first bytes.

    ``timeout`` bounds the wait for the header, and then the wait for the first bytes.
    """
    loop = asyncio.get_running_loop()
    decoder = HeaderDecoder()
    received = bytearray()
    deadline = loop.time() + timeout
    while True:
        chunk = await _read(reader, deadline)
        if not chunk:
            inspection.received = bytes(received)
            inspection.end = "timeout" if chunk is None else "closed"
            if received:
                inspection.verdict = "incomplete header"
                how = f"within {timeout:g} s" if chunk is None else "before the peer closed"
                inspection.error = f"{len(received)} bytes {how}, not yet a complete PROXY header"
            else:
                inspection.verdict = "no data"
                inspection.error = (
                    f"nothing received within {timeout:g} s" if chunk is None
                    else "the peer closed without sending a byte"
                )  # fmt: skip
            return
        received += chunk
        try:
            result = decoder.feed(chunk)
        except ProxyProtocolError as error:
            inspection.received = bytes(received)
            inspection.verdict = "not a header" if isinstance(error, NotAHeader) else (
                "invalid header"
            )  # fmt: skip
            inspection.error = str(error)
            if isinstance(error, ChecksumMismatch):
                inspection.crc32c = "mismatch"
            return
        if result is not NEED_DATA:
            break
    header, rest = result
    inspection.header = header
    inspection.header_length = len(received) - len(rest)
    inspection.tlvs = [describe_tlv(header, tlv) for tlv in header.tlvs]
    if header.command is Command.LOCAL:
        inspection.crc32c = "not checked"  # a LOCAL header's block is ignored, TLVs included
    elif header.version == 2:
        inspection.crc32c = "ok" if header.crc32c is not None else "absent"
    data = bytearray(rest)
    if not data:
        deadline = loop.time() + timeout
        chunk = await _read(reader, deadline)
        inspection.end = "timeout" if chunk is None else ("data" if chunk else "closed")
        data += chunk or b""
    else:
        inspection.end = "data"
    inspection.data = bytes(data[:DATA_LIMIT])


class _Inspector:
    """The server: inspects each connection, prints it, stops after ``count`` if given."""

    def __init__(self, *, as_json: bool, timeout: float, count: int | None) -> None:
        self.as_json = as_json
        self.timeout = timeout
        self.count = count
        self.seen = 0
        self.printed = 0
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.count is not None and self.seen >= self.count:
            writer.close()
            return
        self.seen += 1
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        inspection = Inspection(self.seen, (peer[0], peer[1]), (local[0], local[1]))
        try:
            await inspect_connection(reader, inspection, self.timeout)
        finally:
            writer.close()  # nothing is ever written back
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if self.as_json:
            click.echo(json.dumps(inspection.as_json()))
        else:
            click.echo(inspection.as_text())
        sys.stdout.flush()
        self.printed += 1
        if self.count is not None and self.printed >= self.count:
            self.done.set()

    async def run(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, host, port)
        bound = server.sockets[0].getsockname()
        click.echo(
            f"proxyproto-mw inspect: listening on {_address((bound[0], bound[1]))}; "
            "every connection is shown, then closed",
            err=True,
        )
        async with server:
            await self.done.wait()


@click.command(
    "inspect",
    short_help="Listen and show the PROXY header (or why not) of every connection.",
    help=(
        "Listen, and show for each connection the PROXY header it starts with (version, "
        "command, addresses, every TLV by name, the CRC32C verdict) or why its bytes are "
        "not a valid header, then the first bytes that followed. Point a load balancer's "
        "target at it (with --host 0.0.0.0 for a balancer on another machine) to see what "
        "it really sends. Every peer is believed: it only shows, it never serves. Exits 0 "
        "after --count connections, 1 when it cannot listen."
    ),
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), required=True, help="Port to listen on (0: any)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per connection.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the header, then for the first bytes after it.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Exit after showing this many connections (default: run until interrupted).",
)
def inspect_command(host: str, port: int, as_json: bool, timeout: float, count: int | None) -> None:
    """The ``inspect`` command."""
    inspector = _Inspector(as_json=as_json, timeout=timeout, count=count)
    try:
        asyncio.run(inspector.run(host, port))
    except OSError as error:
        message = f"cannot listen on {host}:{port}: {error.strerror or error}"
        raise click.ClickException(message) from None
    except KeyboardInterrupt:
        pass
