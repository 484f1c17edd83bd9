"""The PROXY header decoder: bytes in, a header (or a reason to close) out; no I/O.

Feed a connection's first bytes to :class:`HeaderDecoder` as they arrive. Each call
answers :data:`NEED_DATA`, or a :class:`Decoded` header with the bytes that followed
it, or raises a :class:`~proxyproto_mw.errors.ProxyProtocolError`:
:class:`~proxyproto_mw.errors.NotAHeader` as soon as the bytes cannot be the start of
a header, :class:`~proxyproto_mw.errors.InvalidHeader` when they start one but break
the grammar. The decoder never waits for more than the longest possible header
(107 bytes for v1, 16 + 65535 for v2).
"""

from __future__ import annotations

import re
import socket
from enum import Enum
from typing import Final, Literal, NamedTuple

from crc32c import crc32c

from .errors import ChecksumMismatch, InvalidHeader, NotAHeader
from .header import (
    TLV,
    Command,
    Family,
    ProxyHeader,
    TransportProtocol,
    UnixAddresses,
    split_tlvs,
)

__all__ = [
    "NEED_DATA",
    "V1_MAX_LENGTH",
    "V1_SIGNATURE",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "Decoded",
    "HeaderDecoder",
    "NeedData",
    "decode",
    "match_signature",
]

V1_SIGNATURE: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH: Final = 107
"""Longest v1 line, CRLF included (``UNKNOWN`` with full IPv6 fields)."""
V2_MAX_LENGTH: Final = 16 + 0xFFFF
V2_FIXED_LENGTH: Final = 16


class NeedData(Enum):
    """The type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""The header is not complete yet: feed more bytes."""


class Decoded(NamedTuple):
    """A complete header and the bytes that followed it on the connection."""

    header: ProxyHeader
    rest: bytes


_PROXY: Final = Command.PROXY
_LOCAL: Final = Command.LOCAL
_STREAM: Final = TransportProtocol.STREAM
_TRANSPORTS: Final = tuple(TransportProtocol)
_FAMILIES: Final = tuple(Family)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_PORT = r"(?:0|[1-9][0-9]{0,4})"
_IPV4_FIELD = re.compile(_IPV4)
_PORT_FIELD = re.compile(_PORT)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")

_INET: Final = Family.INET
_INET6: Final = Family.INET6
_AF_INET: Final = socket.AF_INET
_AF_INET6: Final = socket.AF_INET6
_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_inet_ntoa = socket.inet_ntoa
_new = tuple.__new__
_ZERO_CHECKSUM: Final = b"\x00\x00\x00\x00"
_UNKNOWN_V1: Final = ProxyHeader(1, _PROXY, Family.UNSPEC, TransportProtocol.UNSPEC, None, None)
_LOCAL_V2: Final = ProxyHeader(2, _LOCAL, Family.UNSPEC, TransportProtocol.UNSPEC, None, None)
_ADDRESS_BLOCK: Final = (0, 12, 36, 216)


def match_signature(data: bytes) -> bool | None:
    """Whether ``data`` starts with a PROXY signature: True, False, or None while undecided."""
    if data[:1] == b"P":
        signature = V1_SIGNATURE
    elif data[:1] == b"\r":
        signature = V2_SIGNATURE
    elif not data:
        return None
    else:
        return False
    if len(data) >= len(signature):
        return data.startswith(signature)
    return None if signature.startswith(data) else False


def decode(data: bytes) -> Decoded | NeedData:
    """Decode the header at the start of ``data`` (a connection's first bytes, all of them)."""
    if data.startswith(V2_SIGNATURE):
        result = _decode_v2(data)
    elif data.startswith(V1_SIGNATURE):
        result = _decode_v1(data)
    else:
        result = _decode(data)
    return NEED_DATA if result.__class__ is int else result  # type: ignore[return-value]


def _decode(data: bytes) -> Decoded | int:
    """Decode, or return how many bytes must be buffered before trying again helps."""
    first = data[:1]
    if first == b"P":
        if data.startswith(V1_SIGNATURE):
            return _decode_v1(data)
        signature = V1_SIGNATURE
    elif first == b"\r":
        if data.startswith(V2_SIGNATURE):
            return _decode_v2(data)
        signature = V2_SIGNATURE
    elif not data:
        return 1
    else:
        raise NotAHeader(f"the connection starts with {data[:8]!r}, not a PROXY header", data)
    if signature.startswith(data):
        return len(data) + 1
    raise NotAHeader(f"the connection starts with {data[:12]!r}, not a PROXY header", data)


def _decode_v1(data: bytes) -> Decoded | int:
    end = data.find(b"\r\n", 6, V1_MAX_LENGTH)
    if end < 0:
        _check_v1_prefix(data)
        return len(data) + 1
    fields = data[6:end].split(b" ")
    protocol = fields[0]
    if len(fields) == 5 and protocol in (b"TCP4", b"TCP6"):
        try:
            source_host = fields[1].decode("ascii")
            destination_host = fields[2].decode("ascii")
            if protocol == b"TCP4":
                _inet_pton(_AF_INET, source_host)
                _inet_pton(_AF_INET, destination_host)
                family = _INET
            else:
                source_host = _inet_ntop(_AF_INET6, _inet_pton(_AF_INET6, source_host))
                destination_host = _inet_ntop(_AF_INET6, _inet_pton(_AF_INET6, destination_host))
                family = _INET6
        except (OSError, ValueError):  # ValueError: not ASCII, or a NUL (inet_pton)
            raise InvalidHeader(_explain_v1(data[:end])) from None
        source_port = fields[3]
        destination_port = fields[4]
        if (
            not source_port.isdigit()
            or not destination_port.isdigit()
            or len(source_port) > 5
            or len(destination_port) > 5
            or (source_port[0] == 48 and len(source_port) > 1)
            or (destination_port[0] == 48 and len(destination_port) > 1)
        ):
            raise InvalidHeader(_explain_v1(data[:end]))
        sport = int(source_port)
        dport = int(destination_port)
        if sport > 0xFFFF or dport > 0xFFFF:
            raise InvalidHeader(_explain_v1(data[:end]))
        header = _new(
            ProxyHeader,
            (1, _PROXY, family, _STREAM, (source_host, sport), (destination_host, dport), (), None),
        )
    elif protocol == b"UNKNOWN":
        if b"\r" in data[:end] or b"\n" in data[:end]:
            raise InvalidHeader("v1 header has a CR or LF before its CRLF")
        header = _UNKNOWN_V1
    else:
        raise InvalidHeader(_explain_v1(data[:end]))
    end += 2
    return _new(Decoded, (header, data[end:] if end < len(data) else b""))


def _check_v1_prefix(data: bytes) -> None:
    """Reject an incomplete v1 line as soon as it cannot become valid."""
    line = data[:V1_MAX_LENGTH]
    if b"\n" in line:
        raise InvalidHeader("v1 header has a bare LF (the line must end with CRLF)")
    cr = line.find(b"\r")
    if cr >= 0 and cr + 1 < len(line):
        raise InvalidHeader("v1 header has a CR that is not followed by LF")
    if len(data) >= V1_MAX_LENGTH:
        raise InvalidHeader(f"v1 header has no CRLF within {V1_MAX_LENGTH} bytes")
    protocol = line[6:14]
    if not any(known.startswith(protocol[: len(known)]) for known in _V1_PROTOCOLS):
        raise InvalidHeader(f"v1 header has an unknown protocol {protocol!r}")


def _explain_v1(raw: bytes) -> str:
    """Say precisely why a complete v1 line (without its CRLF) is invalid."""
    try:
        line = raw.decode("ascii")
    except UnicodeDecodeError:
        return "v1 header has a byte that is not ASCII"
    if "\r" in line or "\n" in line:
        return "v1 header has a CR or LF before its CRLF"
    control = _CONTROL.search(line)
    if control is not None:
        return (
            f"v1 header has a control character {control.group()!r} "
            "(fields are separated by single spaces)"
        )
    fields = line.split(" ")
    if "" in fields:
        return f"v1 header fields must be separated by single spaces: {line!r}"
    protocol = fields[1]
    if protocol not in ("TCP4", "TCP6"):
        return f"v1 header has an unknown protocol {protocol!r}"
    if len(fields) != 6:
        return f"v1 {protocol} header has {len(fields) - 2} fields after the protocol, not 4"
    for port in fields[4:]:
        if _PORT_FIELD.fullmatch(port) is None or int(port) > 0xFFFF:
            return f"v1 header has an invalid port {port!r} (decimal 0..65535, no leading zeros)"
    for address in fields[2:4]:
        if protocol == "TCP4" and _IPV4_FIELD.fullmatch(address) is None:
            return f"v1 TCP4 header has an invalid IPv4 address {address!r}"
        if protocol == "TCP6":
            try:
                _inet_pton(_AF_INET6, address)
            except OSError:
                return f"v1 TCP6 header has an invalid IPv6 address {address!r}"
    return f"v1 header does not match the grammar: {line!r}"


def _decode_v2(data: bytes) -> Decoded | int:
    size = len(data)
    if size < V2_FIXED_LENGTH:
        if size > 12:
            _check_version_command(data[12])
            return V2_FIXED_LENGTH
        return 13  # check the version as soon as its byte arrives
    version_command = data[12]
    if version_command != 0x21:  # anything but "version 2, PROXY" gets the full check
        _check_version_command(version_command)
    end = V2_FIXED_LENGTH + ((data[14] << 8) | data[15])
    if version_command & 0x0F == 0:
        # LOCAL: the block is ignored whatever it holds (AWS NLB health checks put TLVs
        # where an INET block would be).
        if size < end:
            return end
        return _new(Decoded, (_LOCAL_V2, data[end:] if end < size else b""))
    family_transport = data[13]
    family_number = family_transport >> 4
    transport_number = family_transport & 0x0F
    if family_number > 3:
        raise InvalidHeader(f"v2 header has an unknown address family {family_number}")
    if transport_number > 2:
        raise InvalidHeader(f"v2 header has an unknown transport protocol {transport_number}")
    if size < end:
        return end
    block = _ADDRESS_BLOCK[family_number]
    if end - V2_FIXED_LENGTH < block:
        raise InvalidHeader(
            f"v2 header's length {end - V2_FIXED_LENGTH} is shorter than the "
            f"{_FAMILIES[family_number].name} address block ({block} bytes)"
        )
    source = destination = unix = None
    if family_number == 1:
        source = (_inet_ntoa(data[16:20]), (data[24] << 8) | data[25])
        destination = (_inet_ntoa(data[20:24]), (data[26] << 8) | data[27])
    elif family_number == 2:
        source = (_inet_ntop(_AF_INET6, data[16:32]), (data[48] << 8) | data[49])
        destination = (_inet_ntop(_AF_INET6, data[32:48]), (data[50] << 8) | data[51])
    elif family_number == 3:
        unix = UnixAddresses(data[16:124].split(b"\x00", 1)[0], data[124:232].split(b"\x00", 1)[0])
    tlv_start = V2_FIXED_LENGTH + block
    tlvs = _read_tlvs(data, tlv_start, end) if tlv_start < end else ()
    header = _new(
        ProxyHeader,
        (
            2,
            _PROXY,
            _FAMILIES[family_number],
            _TRANSPORTS[transport_number],
            source,
            destination,
            tlvs,
            unix,
        ),
    )
    return _new(Decoded, (header, data[end:] if end < size else b""))


def _check_version_command(version_command: int) -> None:
    if version_command >> 4 != 2:
        raise InvalidHeader(f"v2 header has version {version_command >> 4}, not 2")
    if version_command & 0x0F > 1:
        raise InvalidHeader(f"v2 header has an unknown command {version_command & 0x0F}")


def _read_tlvs(data: bytes, start: int, end: int) -> tuple[TLV, ...]:
    """Split and check the TLVs of a PROXY header ending at ``end``, in one pass."""
    tlvs = []
    offset = start
    checksum_at = -1
    while offset < end:
        if offset + 3 > end:
            raise InvalidHeader(f"v2 header: a TLV header at offset {offset} runs past the end")
        kind = data[offset]
        length = (data[offset + 1] << 8) | data[offset + 2]
        value_at = offset + 3
        offset = value_at + length
        if offset > end:
            raise InvalidHeader(f"v2 header: TLV 0x{kind:02X} of length {length} runs past the end")
        value = data[value_at:offset]
        if kind <= 0x05 or kind == 0x20:  # the types with rules; others are kept raw
            if kind == 0x03:  # CRC32C
                if length != 4:
                    raise InvalidHeader(f"v2 header's CRC32C TLV has {length} bytes, not 4")
                if checksum_at < 0:
                    checksum_at = value_at
            elif kind == 0x20:  # SSL
                if length < 5:
                    raise InvalidHeader("v2 header's SSL TLV is shorter than 5 bytes")
                try:
                    split_tlvs(value, 5)
                except ValueError as error:
                    raise InvalidHeader(f"v2 header's SSL TLV: {error}") from None
            elif kind == 0x02:  # AUTHORITY
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidHeader("v2 header's AUTHORITY TLV is not UTF-8") from None
            elif kind == 0x05 and length > 128:  # UNIQUE_ID
                raise InvalidHeader("v2 header's UNIQUE_ID TLV is longer than 128 bytes")
        tlvs.append(_new(TLV, (kind, value)))
    if checksum_at >= 0:
        _check_crc32c(data, end, checksum_at)
    return tuple(tlvs)


def _check_crc32c(data: bytes, end: int, value_at: int) -> None:
    """Check the CRC32C whose value starts at ``value_at``: computed with that field zeroed."""
    expected = int.from_bytes(data[value_at : value_at + 4], "big")
    actual = crc32c(data[value_at + 4 : end], crc32c(_ZERO_CHECKSUM, crc32c(data[:value_at])))
    if actual != expected:
        raise ChecksumMismatch(
            f"v2 header's CRC32C is 0x{expected:08X} but the header's checksum is 0x{actual:08X}"
        )


class HeaderDecoder:
    """Incremental decoder for one connection's header.

    Feed every chunk the connection delivers to :meth:`feed` until it returns a
    :class:`Decoded`; it buffers only while the header is incomplete, and only tries
    again once enough bytes are there to make progress.
    """

    __slots__ = ("_buffer", "_wanted")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._wanted = 1

    def feed(self, data: bytes) -> Decoded | Literal[NeedData.NEED_DATA]:
        """Add ``data``; return the header when complete, else :data:`NEED_DATA`.

        Raises :class:`~proxyproto_mw.errors.NotAHeader` (its ``data`` holds every byte
        fed so far) or :class:`~proxyproto_mw.errors.InvalidHeader`.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._wanted:
                return NEED_DATA
            data = bytes(buffer)
        result = _decode(data)
        if isinstance(result, int):
            if not buffer:
                buffer += data
            self._wanted = result
            return NEED_DATA
        buffer.clear()
        return result

    @property
    def buffered(self) -> bytes:
        """The bytes fed so far that have not yet formed a header."""
        return bytes(self._buffer)
