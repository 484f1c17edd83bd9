"""Build PROXY headers: for tests, benchmarks, and clients of your own that speak PROXY.

>>> encode_v1(("198.51.100.22", 35646), ("203.0.113.7", 80))
b'PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\\r\\n'
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from crc32c import crc32c

from .decoder import V2_SIGNATURE
from .header import TLV, Address, Command, Family, ProxyHeader, TLVType, TransportProtocol

__all__ = ["encode", "encode_tlv", "encode_v1", "encode_v2", "ssl_tlv"]

_ADDRESS_BLOCK = {Family.UNSPEC: 0, Family.INET: 12, Family.INET6: 36, Family.UNIX: 216}


def _family_of(address: Address) -> Family:
    return Family.INET6 if ipaddress.ip_address(address[0]).version == 6 else Family.INET


def _port(address: Address) -> int:
    port = int(address[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not in 0..65535")
    return port


def encode_v1(source: Address | None = None, destination: Address | None = None) -> bytes:
    """A v1 line; ``PROXY UNKNOWN`` when no addresses are given.

    Both addresses must be of the same family (TCP4 or TCP6).
    """
    if source is None or destination is None:
        if source is not None or destination is not None:
            raise ValueError("give both addresses, or neither for PROXY UNKNOWN")
        return b"PROXY UNKNOWN\r\n"
    family = _family_of(source)
    if _family_of(destination) is not family:
        raise ValueError("source and destination must both be IPv4 or both IPv6")
    name = "TCP4" if family is Family.INET else "TCP6"
    hosts = [str(ipaddress.ip_address(address[0])) for address in (source, destination)]
    line = f"PROXY {name} {hosts[0]} {hosts[1]} {_port(source)} {_port(destination)}\r\n"
    return line.encode("ascii")


def encode_tlv(kind: int, value: bytes) -> bytes:
    """One TLV record."""
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError("a TLV type is one byte and its value at most 65535 bytes")
    return bytes((kind, len(value) >> 8, len(value) & 0xFF)) + value


def ssl_tlv(
    *,
    client: int = 0x01,
    verify: int = 0,
    version: str | None = None,
    common_name: str | None = None,
    cipher: str | None = None,
    signature_algorithm: str | None = None,
    key_algorithm: str | None = None,
    client_certificate: bytes | None = None,
) -> TLV:
    """The SSL TLV as HAProxy's ``proxy-v2-options ssl`` sends it."""
    sub = [
        (TLVType.SSL_VERSION, version),
        (TLVType.SSL_CN, common_name),
        (TLVType.SSL_CIPHER, cipher),
        (TLVType.SSL_SIG_ALG, signature_algorithm),
        (TLVType.SSL_KEY_ALG, key_algorithm),
    ]
    value = bytes([client]) + verify.to_bytes(4, "big")
    value += b"".join(encode_tlv(kind, text.encode()) for kind, text in sub if text is not None)
    if client_certificate is not None:
        value += encode_tlv(TLVType.SSL_CLIENT_CERT, client_certificate)
    return TLV(TLVType.SSL, value)


def encode_v2(
    source: Address | None = None,
    destination: Address | None = None,
    *,
    command: Command = Command.PROXY,
    transport: TransportProtocol = TransportProtocol.STREAM,
    tlvs: Iterable[TLV | tuple[int, bytes]] = (),
    checksum: bool = False,
    unix: tuple[bytes, bytes] | None = None,
    family: Family = Family.UNSPEC,
) -> bytes:
    """A v2 header.

    With no addresses the family is UNSPEC (with ``command=Command.LOCAL``, a health
    check), or ``family`` with its address block zeroed and transport UNSPEC (a header
    that names a family but carries no addresses). ``unix`` gives the two socket paths
    of family UNIX. ``checksum`` appends a CRC32C TLV computed over the whole header.
    """
    if unix is not None:
        family = Family.UNIX
        block = unix[0].ljust(108, b"\x00") + unix[1].ljust(108, b"\x00")
        if len(block) != 216:
            raise ValueError("a UNIX socket path is at most 108 bytes")
    elif source is None or destination is None:
        if source is not None or destination is not None:
            raise ValueError("give both addresses, or neither for family UNSPEC")
        block = bytes(_ADDRESS_BLOCK[family])
        transport = TransportProtocol.UNSPEC
    else:
        family = _family_of(source)
        if _family_of(destination) is not family:
            raise ValueError("source and destination must both be IPv4 or both IPv6")
        af = socket.AF_INET if family is Family.INET else socket.AF_INET6
        block = (
            socket.inet_pton(af, source[0])
            + socket.inet_pton(af, destination[0])
            + _port(source).to_bytes(2, "big")
            + _port(destination).to_bytes(2, "big")
        )
    body = block + b"".join(encode_tlv(kind, value) for kind, value in tlvs)
    if checksum:
        body += encode_tlv(TLVType.CRC32C, b"\x00\x00\x00\x00")
    if len(body) > 0xFFFF:
        raise ValueError("a v2 header's body is at most 65535 bytes")
    command_byte = 0x21 if command is Command.PROXY else 0x20
    header = (
        V2_SIGNATURE
        + bytes((command_byte, (family << 4) | transport))
        + len(body).to_bytes(2, "big")
        + body
    )
    if checksum:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def encode(header: ProxyHeader) -> bytes:
    """Encode a decoded header again, in its own version (CRC32C recomputed if it had one)."""
    if header.version == 1:
        return encode_v1(header.source, header.destination)
    tlvs = [tlv for tlv in header.tlvs if tlv.type != TLVType.CRC32C]
    checksum = len(tlvs) != len(header.tlvs)
    return encode_v2(
        header.source,
        header.destination,
        command=header.command,
        transport=header.transport,
        tlvs=tlvs,
        checksum=checksum,
        unix=tuple(header.unix) if header.unix else None,  # type: ignore[arg-type]
        family=header.family if header.command is Command.PROXY else Family.UNSPEC,
    )
