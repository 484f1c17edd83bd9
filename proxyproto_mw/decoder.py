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

import os
import re
import socket
import struct
from enum import Enum
from typing import Final, Literal, NamedTuple, NoReturn

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
    "ACCELERATED",
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
_new = tuple.__new__
_ZERO_CHECKSUM: Final = b"\x00\x00\x00\x00"
_UNKNOWN_V1: Final = ProxyHeader(1, _PROXY, Family.UNSPEC, TransportProtocol.UNSPEC, None, None)
_LOCAL_V2: Final = ProxyHeader(2, _LOCAL, Family.UNSPEC, TransportProtocol.UNSPEC, None, None)
_ADDRESS_BLOCK: Final = (0, 12, 36, 216)
# A v2 header's 14th byte -> (family, transport, address block length), None if invalid.
_V2_KINDS: Final = tuple(
    (_FAMILIES[byte >> 4], _TRANSPORTS[byte & 0x0F], _ADDRESS_BLOCK[byte >> 4])
    if byte >> 4 < len(_FAMILIES) and byte & 0x0F < len(_TRANSPORTS)
    else None
    for byte in range(256)
)
_unpack_fixed = struct.Struct("!BBH").unpack_from  # version/command, family/transport, length
_unpack_inet = struct.Struct("!8BHH").unpack_from  # two IPv4 addresses byte by byte, two ports
_unpack_inet6 = struct.Struct("!16s16sHH").unpack_from
_unpack_u32 = struct.Struct("!I").unpack_from
_OCTETS: Final = tuple(str(octet) for octet in range(256))


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


def _decode_python(data: bytes) -> Decoded | NeedData:
    """Decode the header at the start of ``data`` (a connection's first bytes, all of them).

    The pure-Python decoder: the reference for the optional C accelerator, and the
    fallback it calls for every input it does not handle itself.
    """
    # A slice compared is about 3x cheaper than bytes.startswith (its argument parsing).
    if data[:12] == V2_SIGNATURE:
        return _decode_v2(data)
    if data[:6] == V1_SIGNATURE:
        return _decode_v1(data)
    return _decode_start(data)


def _decode_start(data: bytes) -> NeedData:
    """Data that starts with neither complete signature: a prefix of one, or not a header."""
    first = data[:1]
    if first == b"P":
        signature = V1_SIGNATURE
    elif first == b"\r":
        signature = V2_SIGNATURE
    elif not data:
        return NEED_DATA
    else:
        raise NotAHeader(f"the connection starts with {data[:8]!r}, not a PROXY header", data)
    if signature.startswith(data):
        return NEED_DATA
    raise NotAHeader(f"the connection starts with {data[:12]!r}, not a PROXY header", data)


def _decode_v1(data: bytes) -> Decoded | NeedData:
    # One split yields the line and the rest (cheaper than find, then two slices).
    parts = data.split(b"\r\n", 1)
    if len(parts) == 1 or len(parts[0]) > V1_MAX_LENGTH - 2:  # no CRLF within the limit
        _check_v1_prefix(data)
        return NEED_DATA
    line, rest = parts
    fields = line.split(b" ")
    protocol = fields[1]  # fields[0] is b"PROXY"
    if len(fields) == 6 and protocol in {b"TCP4", b"TCP6"}:
        _, _, source_host, destination_host, source_port, destination_port = fields
        try:
            # UTF-8 (the default) is enough: inet_pton rejects anything but ASCII.
            source = source_host.decode()
            destination = destination_host.decode()
            if protocol == b"TCP4":
                _inet_pton(_AF_INET, source)  # glibc's is strict: no leading zeros
                _inet_pton(_AF_INET, destination)
                family = _INET
            else:
                source = _inet_ntop(_AF_INET6, _inet_pton(_AF_INET6, source))
                destination = _inet_ntop(_AF_INET6, _inet_pton(_AF_INET6, destination))
                family = _INET6
        except (OSError, ValueError):  # ValueError: not UTF-8, or a NUL (inet_pton)
            raise InvalidHeader(_explain_v1(line)) from None
        # bytes.isdigit: ASCII digits only; the range check bounds the length.
        if not (source_port.isdigit() and destination_port.isdigit()):
            raise InvalidHeader(_explain_v1(line))
        source_number = int(source_port)
        destination_number = int(destination_port)
        if (
            source_number > 0xFFFF
            or destination_number > 0xFFFF
            or (source_port[0] == 48 and len(source_port) > 1)  # a leading "0"
            or (destination_port[0] == 48 and len(destination_port) > 1)
        ):
            raise InvalidHeader(_explain_v1(line))
        header = _new(
            ProxyHeader,
            (
                1,
                _PROXY,
                family,
                _STREAM,
                (source, source_number),
                (destination, destination_number),
                (),
                None,
            ),
        )
    elif protocol == b"UNKNOWN":
        if b"\r" in line or b"\n" in line:
            raise InvalidHeader("v1 header has a CR or LF before its CRLF")
        header = _UNKNOWN_V1
    else:
        raise InvalidHeader(_explain_v1(line))
    return _new(Decoded, (header, rest))


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


def _decode_v2(data: bytes) -> Decoded | NeedData:
    size = len(data)
    if size < V2_FIXED_LENGTH:
        if size > 12:
            _check_version_command(data[12])
        return NEED_DATA
    version_command, family_transport, length = _unpack_fixed(data, 12)
    if version_command != 0x21:  # anything but "version 2, PROXY" gets the full check
        _check_version_command(version_command)
    end = V2_FIXED_LENGTH + length
    if version_command & 0x0F == 0:
        # LOCAL: the real addresses apply whatever the block holds.
        if size < end:
            return NEED_DATA
        if length:
            _check_local_tlvs(data, family_transport, end)
        return _new(Decoded, (_LOCAL_V2, data[end:]))
    kind = _V2_KINDS[family_transport]
    if kind is None:
        _check_family_transport(family_transport)
    family, transport, block = kind
    if size < end:
        return NEED_DATA
    if length < block:
        raise InvalidHeader(
            f"v2 header's length {length} is shorter than the "
            f"{family.name} address block ({block} bytes)"
        )
    source = destination = unix = None
    if not family_transport & 0x0F:
        pass  # transport UNSPEC: the block carries no addresses, the real ones apply
    elif block == 12:  # INET; the octets' texts from a table beat socket.inet_ntoa by far
        a, b, c, d, e, f, g, h, source_port, destination_port = _unpack_inet(data, 16)
        o = _OCTETS
        source = (f"{o[a]}.{o[b]}.{o[c]}.{o[d]}", source_port)
        destination = (f"{o[e]}.{o[f]}.{o[g]}.{o[h]}", destination_port)
    elif block == 36:  # INET6
        source_address, destination_address, source_port, destination_port = _unpack_inet6(data, 16)
        source = (_inet_ntop(_AF_INET6, source_address), source_port)
        destination = (_inet_ntop(_AF_INET6, destination_address), destination_port)
    elif block == 216:  # UNIX
        unix = UnixAddresses(data[16:124].split(b"\x00", 1)[0], data[124:232].split(b"\x00", 1)[0])
    tlv_start = V2_FIXED_LENGTH + block
    header = _new(
        ProxyHeader,
        (
            2,
            _PROXY,
            family,
            transport,
            source,
            destination,
            _read_tlvs(data, tlv_start, end) if tlv_start < end else (),
            unix,
        ),
    )
    return _new(Decoded, (header, data[end:]))


def _check_local_tlvs(data: bytes, family_transport: int, end: int) -> None:
    """Read a LOCAL header's TLVs only to verify its CRC32C; anything else it holds is ignored.

    Senders disagree on where a LOCAL header's TLVs start: after the address block of
    the family it names (as for PROXY), or right after byte 16 whatever the family (AWS
    NLB health checks name INET; HAProxy's name UNSPEC). Both places are tried, the
    block's first; the first place where the TLVs read cleanly (every rule, checksum
    included) wins. Only a CRC32C that does not match, where no place reads cleanly,
    rejects the header: odd bytes in a LOCAL block never do. The TLVs themselves are not
    returned; a LOCAL header says nothing about a client.
    """
    family_number = family_transport >> 4
    block = _ADDRESS_BLOCK[family_number] if family_number < len(_ADDRESS_BLOCK) else 0
    mismatch: ChecksumMismatch | None = None
    starts = (V2_FIXED_LENGTH + block, V2_FIXED_LENGTH) if block else (V2_FIXED_LENGTH,)
    for start in starts:
        if start > end:
            continue
        try:
            _read_tlvs(data, start, end)
        except ChecksumMismatch as error:
            mismatch = mismatch or error
        except InvalidHeader:
            continue
        else:
            return
    if mismatch is not None:
        raise mismatch


def _check_family_transport(family_transport: int) -> NoReturn:
    family_number = family_transport >> 4
    if family_number > 3:
        raise InvalidHeader(f"v2 header has an unknown address family {family_number}")
    raise InvalidHeader(f"v2 header has an unknown transport protocol {family_transport & 0x0F}")


def _check_version_command(version_command: int) -> None:
    if version_command >> 4 != 2:
        raise InvalidHeader(f"v2 header has version {version_command >> 4}, not 2")
    if version_command & 0x0F > 1:
        raise InvalidHeader(f"v2 header has an unknown command {version_command & 0x0F}")


def _read_tlvs(data: bytes, start: int, end: int) -> tuple[TLV, ...]:
    """Split and check the TLVs of a PROXY header ending at ``end``, in one pass."""
    tlvs: list[TLV] = []
    append = tlvs.append
    offset = start
    checksum_at = -1
    while offset < end:
        value_at = offset + 3
        if value_at > end:
            raise InvalidHeader(f"v2 header: a TLV header at offset {offset} runs past the end")
        kind = data[offset]
        offset = value_at + ((data[offset + 1] << 8) | data[offset + 2])
        if offset > end:
            raise InvalidHeader(
                f"v2 header: TLV 0x{kind:02X} of length {offset - value_at} runs past the end"
            )
        value = data[value_at:offset]
        if kind <= 0x05 or kind == 0x20:  # the types with rules; others are kept raw
            if kind == 0x03:  # CRC32C
                if offset - value_at != 4:
                    raise InvalidHeader(
                        f"v2 header's CRC32C TLV has {offset - value_at} bytes, not 4"
                    )
                if checksum_at < 0:
                    checksum_at = value_at
            elif kind == 0x20:  # SSL
                _check_ssl(value)
            elif kind == 0x02:  # AUTHORITY
                try:
                    value.decode()
                except UnicodeDecodeError:
                    raise InvalidHeader("v2 header's AUTHORITY TLV is not UTF-8") from None
            elif kind == 0x05 and offset - value_at > 128:  # UNIQUE_ID
                raise InvalidHeader("v2 header's UNIQUE_ID TLV is longer than 128 bytes")
        append(_new(TLV, (kind, value)))
    if checksum_at >= 0:
        _check_crc32c(data, end, checksum_at)
    return tuple(tlvs)


def _check_ssl(value: bytes) -> None:
    """Check the SSL TLV's sub-TLVs stay within it (without building them)."""
    size = len(value)
    if size < 5:
        raise InvalidHeader("v2 header's SSL TLV is shorter than 5 bytes")
    offset = 5  # after the client bit field and the verify result
    while offset + 3 <= size:
        offset += 3 + ((value[offset + 1] << 8) | value[offset + 2])
    if offset != size:
        try:  # say which sub-TLV overruns
            split_tlvs(value, 5)
        except ValueError as error:
            raise InvalidHeader(f"v2 header's SSL TLV: {error}") from None
        raise AssertionError("unreachable: split_tlvs accepted an overrunning SSL TLV")


def _check_crc32c(data: bytes, end: int, value_at: int) -> None:
    """Check the CRC32C whose value starts at ``value_at``: computed with that field zeroed."""
    (expected,) = _unpack_u32(data, value_at)
    # One call over a copy is cheaper than three chained ones over the pieces.
    actual = crc32c(data[:value_at] + _ZERO_CHECKSUM + data[value_at + 4 : end])
    if actual != expected:
        raise ChecksumMismatch(
            f"v2 header's CRC32C is 0x{expected:08X} but the header's checksum is 0x{actual:08X}"
        )


def _wanted(data: bytes) -> int:
    """How many bytes an incomplete header needs before decoding again can make progress."""
    size = len(data)
    if data.startswith(V2_SIGNATURE):
        if size >= V2_FIXED_LENGTH:
            return V2_FIXED_LENGTH + ((data[14] << 8) | data[15])
        return V2_FIXED_LENGTH if size > 12 else 13  # check the version as soon as it arrives
    return size + 1


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
        result = decode(data)
        if result is NEED_DATA:
            if not buffer:
                buffer += data
            self._wanted = _wanted(data)
            return NEED_DATA
        buffer.clear()
        return result

    @property
    def buffered(self) -> bytes:
        """The bytes fed so far that have not yet formed a header."""
        return bytes(self._buffer)


decode = _decode_python
"""Decode the header at the start of ``data`` (a connection's first bytes, all of them).

Returns a :class:`Decoded` header with the bytes that followed it, or :data:`NEED_DATA`;
raises :class:`~proxyproto_mw.errors.NotAHeader` or
:class:`~proxyproto_mw.errors.InvalidHeader` (see the module's docstring). The C
accelerator (``proxyproto_mw._speedups``) replaces it when it is built, unless the
environment variable ``PROXYPROTO_NO_EXTENSIONS`` is set to a non-empty value; it
decodes the common valid headers itself (v2 TLVs included, by the rules of
``_read_tlvs``) and passes everything else to the pure-Python decoder, so both give
the same answers.
"""
ACCELERATED = False
"""Whether :func:`decode` is the C accelerator."""

if not os.environ.get("PROXYPROTO_NO_EXTENSIONS"):
    try:
        from . import _speedups
    except ImportError:  # not built (no compiler, another Python): pure Python it is
        pass
    else:
        _speedups.configure(
            _decode_python, Decoded, ProxyHeader, _PROXY, _INET, _INET6, _STREAM, (), TLV
        )
        decode = _speedups.decode
        ACCELERATED = True
