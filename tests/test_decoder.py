"""The decoder against the specification: every rule, valid and invalid, both versions.

Headers are built by hand here (not with the encoder) so that a mistake shared by the
encoder and the decoder cannot hide; the property tests at the end use the encoder to
generate many headers and check that decoding is the same however the bytes arrive.

Every test runs twice, against each decoder (the ``implementation`` fixture): the C
accelerator, when it is built, and the pure-Python reference it falls back to.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyproto_mw import (
    NEED_DATA,
    TLV,
    ChecksumMismatch,
    Command,
    Decoded,
    Family,
    HeaderDecoder,
    InvalidHeader,
    NotAHeader,
    ProxyHeader,
    ProxyProtocolError,
    SSLInfo,
    TLVType,
    TransportProtocol,
    UnixAddresses,
    decode,
    encode_v1,
    encode_v2,
    match_signature,
    ssl_tlv,
)
from proxyproto_mw import decoder as decoder_module
from proxyproto_mw.decoder import NeedData

# The decoders in use: the C accelerator unless it is not built or PROXYPROTO_NO_EXTENSIONS
# is set (tests/test_speedups.py fails in CI when it is not built), and pure Python.
IMPLEMENTATIONS: dict[str, Callable[[bytes], Decoded | NeedData]] = {
    **({"c": decoder_module.decode} if decoder_module.ACCELERATED else {}),
    "python": decoder_module._decode_python,
}


@pytest.fixture(scope="module", autouse=True, params=list(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Bind ``decode`` (this module's and the one HeaderDecoder calls) to each decoder.

    Module scope: hypothesis refuses function-scoped fixtures, and pytest then runs the
    whole module once per decoder.
    """
    function = IMPLEMENTATIONS[request.param]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoder_module, "decode", function)
        patch.setattr(sys.modules[__name__], "decode", function)
        yield request.param


SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY = Command.PROXY
LOCAL = Command.LOCAL
STREAM = TransportProtocol.STREAM


def crc32c_reference(data: bytes) -> int:
    """CRC32C written from its definition: reflected polynomial 0x82F63B78 (RFC 4960)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2(command: int, family_transport: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header: version 2, ``command``, byte 13, a length (``len(body)`` by default), body."""
    size = len(body) if length is None else length
    return SIGNATURE + bytes([0x20 | command, family_transport]) + size.to_bytes(2, "big") + body


# 192.0.2.1:56324 -> 198.51.100.7:443, written out byte by byte.
INET_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 0x01, 0xBB])
INET_SOURCE = ("192.0.2.1", 56324)
INET_DESTINATION = ("198.51.100.7", 443)
INET6_BLOCK = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("2001:db8:0:1::ff").packed
    + bytes([0x00, 0x50, 0xFF, 0xFF])
)


def with_checksum(header: bytes) -> bytes:
    """``header`` with the value of its (zeroed) CRC32C TLV computed by the reference CRC."""
    at = header.index(tlv(TLVType.CRC32C, b"\x00" * 4)) + 3
    return header[:at] + crc32c_reference(header).to_bytes(4, "big") + header[at + 4 :]


def decoded(data: bytes) -> Decoded:
    result = decode(data)
    assert isinstance(result, Decoded), f"{data!r} decoded to {result!r}"
    return result


def inet_header(*tlvs: bytes) -> ProxyHeader:
    """What the decoder must return for ``v2(1, 0x11, INET_BLOCK + b"".join(tlvs))``."""
    values = tuple(TLV(raw[0], raw[3:]) for raw in tlvs)
    return ProxyHeader(2, PROXY, Family.INET, STREAM, INET_SOURCE, INET_DESTINATION, values)


def v1_header(family: Family, source: tuple[str, int], destination: tuple[str, int]) -> ProxyHeader:
    return ProxyHeader(1, PROXY, family, STREAM, source, destination)


UNKNOWN_V1 = ProxyHeader(1, PROXY, Family.UNSPEC, TransportProtocol.UNSPEC, None, None)
LOCAL_V2 = ProxyHeader(2, LOCAL, Family.UNSPEC, TransportProtocol.UNSPEC, None, None)
LONGEST_V1 = (
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)


# --- version 1 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "header", "rest"),
    [
        pytest.param(
            b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\nGET / HTTP/1.1\r\n\r\n",
            v1_header(Family.INET, ("198.51.100.22", 35646), ("203.0.113.7", 80)),
            b"GET / HTTP/1.1\r\n\r\n",
            id="tcp4-aws-elb-example",
        ),
        pytest.param(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            v1_header(Family.INET, ("0.0.0.0", 0), ("255.255.255.255", 65535)),
            b"",
            id="tcp4-ports-0-and-65535",
        ),
        pytest.param(
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:0db8::0002 1234 443\r\nx",
            v1_header(Family.INET6, ("2001:db8::1", 1234), ("2001:db8::2", 443)),
            b"x",
            id="tcp6-canonical-text",
        ),
        pytest.param(
            b"PROXY TCP6 ::ffff:198.51.100.22 ::1 65535 0\r\n",
            v1_header(Family.INET6, ("::ffff:198.51.100.22", 65535), ("::1", 0)),
            b"",
            id="tcp6-ipv4-mapped",
        ),
        pytest.param(b"PROXY UNKNOWN\r\nabc", UNKNOWN_V1, b"abc", id="unknown-bare"),
        pytest.param(
            b"PROXY UNKNOWN 198.51.100.22 203.0.113.7 35646 80\r\n",
            UNKNOWN_V1,
            b"",
            id="unknown-with-fields",
        ),
        pytest.param(
            b"PROXY UNKNOWN whatever the proxy wrote\r\n", UNKNOWN_V1, b"", id="unknown-anything"
        ),
        pytest.param(LONGEST_V1 + b"rest", UNKNOWN_V1, b"rest", id="unknown-107-bytes"),
        pytest.param(
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nPROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n",
            v1_header(Family.INET, ("192.0.2.1", 1), ("192.0.2.2", 2)),
            b"PROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n",
            id="second-header-is-application-data",
        ),
    ],
)
def test_v1_valid(data: bytes, header: ProxyHeader, rest: bytes) -> None:
    assert decoded(data) == (header, rest)


def test_longest_v1_line_is_107_bytes() -> None:
    assert len(LONGEST_V1) == 107
    assert decoded(LONGEST_V1).header.is_local


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            "invalid IPv4 address '01.2.3.4'",
            id="tcp4-leading-zero-octet-source",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n",
            "invalid IPv4 address '5.6.7.08'",
            id="tcp4-leading-zero-octet-destination",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            "invalid IPv4 address '1.2.3.256'",
            id="tcp4-octet-256",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid IPv4 address '1.2.3'", id="tcp4-3-octets"
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid port '01'", id="port-leading-zero"
        ),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "invalid port '00'", id="port-00"),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "invalid port '65536'", id="port-65536"
        ),
        pytest.param(
            b"PROXY TCP6 ::1 ::2 1 123456\r\n", "invalid port '123456'", id="port-6-digits"
        ),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "invalid port '-1'", id="port-sign"),
        pytest.param(
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            "TCP4 header has an invalid IPv4 address '::1'",
            id="ipv6-in-tcp4",
        ),
        pytest.param(
            b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
            "TCP6 header has an invalid IPv6 address '1.2.3.4'",
            id="ipv4-in-tcp6",
        ),
        pytest.param(
            b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
            "invalid IPv6 address '1::2::3'",
            id="tcp6-two-double-colons",
        ),
        pytest.param(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "single spaces", id="double-space"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces", id="trailing-space"),
        pytest.param(b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", "control character '\\t'", id="tab"),
        pytest.param(
            b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
            "control character '\\t'",
            id="tab-after-protocol",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "control character '\\x00'", id="nul-tcp4"
        ),
        pytest.param(b"PROXY TCP6 ::1\x00 ::2 1 2\r\n", "control character '\\x00'", id="nul-tcp6"),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "3 fields after the protocol, not 4",
            id="missing-field",
        ),
        pytest.param(b"PROXY TCP6\r\n", "0 fields after the protocol, not 4", id="no-fields"),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "5 fields after the protocol, not 4",
            id="extra-field",
        ),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF", id="bare-lf"),
        pytest.param(
            b"PROXY UNKNOWN a\nb\r\n", "CR or LF before its CRLF", id="lf-before-crlf-unknown"
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR that is not followed by LF", id="cr-alone"
        ),
        pytest.param(
            b"PROXY UNKNOWN a\rb\r\n", "CR or LF before its CRLF", id="cr-before-crlf-unknown"
        ),
        pytest.param(
            b"PROXY UNKNOWN " + b"f" * 93, "no CRLF within 107 bytes", id="no-crlf-in-107"
        ),
        pytest.param(LONGEST_V1[:-2] + b"f\r\n", "no CRLF within 107 bytes", id="crlf-at-byte-108"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n", "not ASCII", id="non-ascii-address"),
        pytest.param(
            b"PROXY TCP\xc4 1.2.3.4 5.6.7.8 1 2\r\n", "not ASCII", id="non-ascii-protocol"
        ),
        pytest.param(
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'tcp4'", id="lowercase-tcp4"
        ),
        pytest.param(b"PROXY UNKNOWNX\r\n", "unknown protocol 'UNKNOWNX'", id="unknownx"),
    ],
)
def test_v1_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidHeader) as caught:
        decode(data)
    assert caught.type is InvalidHeader
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(b"PROXY TCP5", id="tcp5"),
        pytest.param(b"PROXY UD", id="udp4"),
        pytest.param(b"PROXY TCP4-", id="tcp4-dash"),
        pytest.param(b"PROXY UNKNOWN\t", id="unknown-tab"),
        pytest.param(b"PROXY UNKNOWNX", id="unknownx"),
        pytest.param(b"PROXY  ", id="double-space-before-protocol"),
    ],
)
def test_v1_unknown_protocol_raises_before_crlf(prefix: bytes) -> None:
    assert decode(prefix[:-1]) is NEED_DATA
    with pytest.raises(InvalidHeader, match="unknown protocol") as caught:
        decode(prefix)
    assert repr(prefix[6:]) in str(caught.value)
    decoder = HeaderDecoder()
    for byte in prefix[:-1]:
        assert decoder.feed(bytes([byte])) is NEED_DATA
    with pytest.raises(InvalidHeader, match="unknown protocol"):
        decoder.feed(prefix[-1:])


def test_v1_without_crlf_waits_for_exactly_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b"f" * 93
    assert decode(line[:106]) is NEED_DATA
    with pytest.raises(InvalidHeader, match="no CRLF within 107 bytes"):
        decode(line[:107])
    # A line that could still end with CRLF at bytes 106-107 waits for byte 107.
    assert decode(LONGEST_V1[:-1]) is NEED_DATA


# --- version 2 ----------------------------------------------------------------------------


UNIX_BLOCK = b"/run/haproxy/client.sock".ljust(108, b"\x00") + b"/run/app.sock".ljust(108, b"\x00")


@pytest.mark.parametrize(
    ("data", "header", "rest"),
    [
        pytest.param(
            v2(1, 0x11, INET_BLOCK) + b"GET /",
            ProxyHeader(2, PROXY, Family.INET, STREAM, INET_SOURCE, INET_DESTINATION),
            b"GET /",
            id="proxy-inet-stream",
        ),
        pytest.param(
            v2(1, 0x12, INET_BLOCK),
            ProxyHeader(
                2, PROXY, Family.INET, TransportProtocol.DGRAM, INET_SOURCE, INET_DESTINATION
            ),
            b"",
            id="proxy-inet-dgram",
        ),
        pytest.param(
            v2(1, 0x21, INET6_BLOCK) + b"\x00rest",
            ProxyHeader(
                2, PROXY, Family.INET6, STREAM, ("2001:db8::1", 80), ("2001:db8:0:1::ff", 65535)
            ),
            b"\x00rest",
            id="proxy-inet6",
        ),
        pytest.param(
            v2(1, 0x31, UNIX_BLOCK),
            ProxyHeader(
                2,
                PROXY,
                Family.UNIX,
                STREAM,
                None,
                None,
                (),
                UnixAddresses(b"/run/haproxy/client.sock", b"/run/app.sock"),
            ),
            b"",
            id="proxy-unix",
        ),
        pytest.param(
            v2(1, 0x00, b""),
            ProxyHeader(2, PROXY, Family.UNSPEC, TransportProtocol.UNSPEC, None, None),
            b"",
            id="proxy-unspec",
        ),
        pytest.param(
            v2(1, 0x01, tlv(TLVType.ALPN, b"h2")),
            ProxyHeader(2, PROXY, Family.UNSPEC, STREAM, None, None, (TLV(1, b"h2"),)),
            b"",
            id="proxy-unspec-with-tlv",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.NOOP, b"\x00\x00")) + b"after",
            inet_header(tlv(TLVType.NOOP, b"\x00\x00")),
            b"after",
            id="length-covers-tlvs-rest-follows",
        ),
        pytest.param(
            v2(0, 0x00, b"") + b"\x16\x03\x01",
            LOCAL_V2,
            b"\x16\x03\x01",
            id="local-unspec",
        ),
        pytest.param(
            v2(0, 0x11, INET_BLOCK), LOCAL_V2, b"", id="local-with-inet-addresses-ignored"
        ),
        pytest.param(
            with_checksum(
                v2(0, 0x11, tlv(TLVType.CRC32C, b"\x00" * 4) + tlv(TLVType.NOOP, b"\x00" * 3))
            )
            + b"GET /health",
            LOCAL_V2,
            b"GET /health",
            id="local-aws-nlb-health-check-tlvs-at-byte-16",
        ),
        pytest.param(v2(0, 0x21, b"\xff" * 5), LOCAL_V2, b"", id="local-garbage-block"),
        pytest.param(v2(0, 0xF7, b""), LOCAL_V2, b"", id="local-unknown-family-ignored"),
    ],
)
def test_v2_valid(data: bytes, header: ProxyHeader, rest: bytes) -> None:
    assert decoded(data) == (header, rest)


def test_v2_local_is_local_and_proxy_inet_is_not() -> None:
    assert decoded(v2(0, 0x11, INET_BLOCK)).header.is_local
    assert not decoded(v2(1, 0x11, INET_BLOCK)).header.is_local
    assert not decoded(v2(1, 0x31, UNIX_BLOCK)).header.is_local


# --- LOCAL: the TLVs are read wherever they are, for their CRC32C ---------------------

CRC32C_ZERO = tlv(TLVType.CRC32C, b"\x00" * 4)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(with_checksum(v2(0, 0x00, CRC32C_ZERO)), id="haproxy-check-unspec"),
        pytest.param(
            with_checksum(v2(0, 0x11, CRC32C_ZERO + tlv(TLVType.NOOP, b"\x00" * 9))),
            id="nlb-inet-tlvs-at-byte-16",
        ),
        pytest.param(
            with_checksum(v2(0, 0x11, INET_BLOCK + tlv(TLVType.UNIQUE_ID, b"u") + CRC32C_ZERO)),
            id="inet-tlvs-after-the-block",
        ),
        pytest.param(
            with_checksum(v2(0, 0x21, INET6_BLOCK + CRC32C_ZERO)), id="inet6-tlvs-after-the-block"
        ),
        pytest.param(with_checksum(v2(0, 0x31, CRC32C_ZERO)), id="unix-family-tlvs-at-byte-16"),
        pytest.param(with_checksum(v2(0, 0xF7, CRC32C_ZERO)), id="unknown-family-tlvs-at-16"),
    ],
)
def test_v2_local_with_a_matching_crc32c_is_accepted(data: bytes) -> None:
    assert decoded(data + b"GET /health") == (LOCAL_V2, b"GET /health")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(with_checksum(v2(0, 0x00, CRC32C_ZERO)), id="haproxy-check-unspec"),
        pytest.param(
            with_checksum(v2(0, 0x11, CRC32C_ZERO + tlv(TLVType.NOOP, b"\x00" * 9))),
            id="nlb-inet-tlvs-at-byte-16",
        ),
        pytest.param(
            with_checksum(v2(0, 0x11, INET_BLOCK + CRC32C_ZERO)), id="inet-tlvs-after-the-block"
        ),
        pytest.param(
            with_checksum(v2(0, 0x21, INET6_BLOCK + tlv(0xE5, b"x") + CRC32C_ZERO)),
            id="inet6-tlvs-after-the-block",
        ),
    ],
)
def test_v2_local_with_a_wrong_crc32c_is_rejected(data: bytes) -> None:
    """HAProxy's own health check carries a CRC32C (tests/fixtures); a wrong one is refused."""
    assert decoded(data).header == LOCAL_V2
    bad = data[:-1] + bytes([data[-1] ^ 0x80])
    with pytest.raises(ChecksumMismatch, match="CRC32C"):
        decode(bad + b"GET /health")
    decoder = HeaderDecoder()
    assert decoder.feed(bad[:20]) is NEED_DATA
    with pytest.raises(ChecksumMismatch):
        decoder.feed(bad[20:])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(v2(0, 0x11, b"\x03\x00\x09" + b"\x00" * 9), id="crc32c-of-9-bytes-at-16"),
        pytest.param(v2(0, 0x11, INET_BLOCK + b"\x01\x00\x05ab"), id="tlv-past-the-end"),
        pytest.param(v2(0, 0x00, tlv(TLVType.AUTHORITY, b"\xff")), id="authority-not-utf8"),
        pytest.param(v2(0, 0x00, tlv(TLVType.SSL, b"\x01")), id="ssl-too-short"),
        pytest.param(v2(0, 0x21, b"\xff" * 40), id="garbage"),
        pytest.param(
            # The block's bytes read as a CRC32C TLV at byte 16 that does not match; after the
            # block the TLVs read cleanly, so that is where they are.
            v2(0, 0x11, b"\x03\x00\x04\x00\x00\x00\x00\x00\x01\xbb\x00\x50" + tlv(0xE5, b"")),
            id="block-reads-as-a-bad-crc32c",
        ),
    ],
)
def test_v2_local_is_not_rejected_for_what_its_block_holds(data: bytes) -> None:
    assert decoded(data + b"x") == (LOCAL_V2, b"x")


def test_v2_local_crc32c_mismatch_wherever_the_tlvs_are() -> None:
    """A checksum that matches at neither place rejects, whichever place it was read at."""
    after_block = with_checksum(v2(0, 0x11, INET_BLOCK + CRC32C_ZERO))
    spoofed = after_block[:16] + b"\x0a" + after_block[17:]
    with pytest.raises(ChecksumMismatch):
        decode(spoofed)


# --- transport UNSPEC: no addresses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "family", "tlvs"),
    [
        pytest.param(v2(1, 0x10, INET_BLOCK), Family.INET, (), id="inet"),
        pytest.param(v2(1, 0x10, bytes(12)), Family.INET, (), id="inet-zeros"),
        pytest.param(
            v2(1, 0x20, INET6_BLOCK + tlv(TLVType.ALPN, b"h2")),
            Family.INET6,
            (TLV(TLVType.ALPN, b"h2"),),
            id="inet6-with-tlv",
        ),
        pytest.param(v2(1, 0x30, UNIX_BLOCK), Family.UNIX, (), id="unix"),
    ],
)
def test_v2_proxy_with_transport_unspec_carries_no_addresses(
    data: bytes, family: Family, tlvs: tuple[TLV, ...]
) -> None:
    header, rest = decoded(data + b"GET /")
    unspec = TransportProtocol.UNSPEC
    assert header == ProxyHeader(2, PROXY, family, unspec, None, None, tlvs, None)
    assert header.is_local
    assert rest == b"GET /"


def test_v2_transport_unspec_still_needs_the_familys_block() -> None:
    with pytest.raises(InvalidHeader, match="shorter than the INET address block"):
        decode(v2(1, 0x10, INET_BLOCK[:11]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(SIGNATURE + b"\x11\x11\x00\x0c" + INET_BLOCK, "version 1, not 2", id="v1"),
        pytest.param(SIGNATURE + b"\x01\x11\x00\x0c" + INET_BLOCK, "version 0, not 2", id="v0"),
        pytest.param(SIGNATURE + b"\x31\x11\x00\x0c" + INET_BLOCK, "version 3, not 2", id="v3"),
        pytest.param(SIGNATURE + b"\xf1\x11\x00\x0c" + INET_BLOCK, "version 15, not 2", id="v15"),
        pytest.param(v2(2, 0x11, INET_BLOCK), "unknown command 2", id="command-2"),
        pytest.param(v2(0xF, 0x11, INET_BLOCK), "unknown command 15", id="command-15"),
        pytest.param(v2(1, 0x41, INET_BLOCK), "unknown address family 4", id="family-4"),
        pytest.param(v2(1, 0xF1, INET_BLOCK), "unknown address family 15", id="family-15"),
        pytest.param(v2(1, 0x13, INET_BLOCK), "unknown transport protocol 3", id="transport-3"),
        pytest.param(v2(1, 0x1F, INET_BLOCK), "unknown transport protocol 15", id="transport-15"),
        pytest.param(
            v2(1, 0x11, INET_BLOCK[:11]),
            "length 11 is shorter than the INET address block (12 bytes)",
            id="inet-length-11",
        ),
        pytest.param(
            v2(1, 0x21, INET6_BLOCK[:35]),
            "length 35 is shorter than the INET6 address block (36 bytes)",
            id="inet6-length-35",
        ),
        pytest.param(
            v2(1, 0x21, INET_BLOCK),
            "length 12 is shorter than the INET6 address block (36 bytes)",
            id="inet6-with-inet-block",
        ),
        pytest.param(
            v2(1, 0x31, UNIX_BLOCK[:215]),
            "length 215 is shorter than the UNIX address block (216 bytes)",
            id="unix-length-215",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + b"\x01\x00\x05ab"),
            "TLV 0x01 of length 5 runs past the end",
            id="tlv-past-header",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.NOOP, b"") + tlv(0xE5, b"x" * 4)[:-1]),
            "TLV 0xE5 of length 4 runs past the end",
            id="second-tlv-past-header",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + b"\x04"),
            "TLV header at offset 28 runs past the end",
            id="one-stray-byte",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.ALPN, b"h2") + b"\x04\x00"),
            "TLV header at offset 33 runs past the end",
            id="two-stray-bytes",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.CRC32C, b"\x00" * 3)),
            "CRC32C TLV has 3 bytes, not 4",
            id="crc32c-3-bytes",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.CRC32C, b"\x00" * 5)),
            "CRC32C TLV has 5 bytes, not 4",
            id="crc32c-5-bytes",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.UNIQUE_ID, b"u" * 129)),
            "UNIQUE_ID TLV is longer than 128 bytes",
            id="unique-id-129-bytes",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.SSL, b"\x01\x00\x00\x00")),
            "SSL TLV is shorter than 5 bytes",
            id="ssl-4-bytes",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.SSL, b"\x01\x00\x00\x00\x00\x21\x00\x09TLSv1.3")),
            "SSL TLV: TLV 0x21 of length 9 runs past the end",
            id="ssl-sub-tlv-past-end",
        ),
        pytest.param(
            v2(1, 0x11, INET_BLOCK + tlv(TLVType.AUTHORITY, b"caf\xe9.example")),
            "AUTHORITY TLV is not UTF-8",
            id="authority-not-utf8",
        ),
    ],
)
def test_v2_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidHeader) as caught:
        decode(data)
    assert caught.type is InvalidHeader
    assert message in str(caught.value)


# --- version 2 TLVs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "attribute", "expected"),
    [
        pytest.param(tlv(0x01, b"h2"), "alpn", b"h2", id="alpn"),
        pytest.param(
            tlv(0x02, "bücher.example".encode()), "authority", "bücher.example", id="authority"
        ),
        pytest.param(tlv(0x05, b"\x01" * 128), "unique_id", b"\x01" * 128, id="unique-id-128"),
        pytest.param(tlv(0x30, b"blue"), "netns", "blue", id="netns"),
        pytest.param(
            tlv(0xEA, b"\x01vpce-08d2bf15fac5001c9"),
            "aws_vpce_id",
            "vpce-08d2bf15fac5001c9",
            id="aws-vpce",
        ),
        pytest.param(tlv(0xEA, b"\x02vpce-1"), "aws_vpce_id", None, id="aws-other-subtype"),
        pytest.param(
            tlv(0xE0, b"\x01\x23\x45\x67\x89\xab\xcd\xef"),
            "gcp_psc_connection_id",
            0x0123456789ABCDEF,
            id="gcp-psc-big-endian",
        ),
        pytest.param(
            tlv(0xE0, b"\x01\x23\x45\x67"), "gcp_psc_connection_id", None, id="gcp-psc-4-bytes"
        ),
        pytest.param(
            tlv(0xEE, b"\x01\x78\x56\x34\x12"),
            "azure_private_link_id",
            0x12345678,
            id="azure-little-endian",
        ),
        pytest.param(
            tlv(0xEE, b"\x02\x78\x56\x34\x12"),
            "azure_private_link_id",
            None,
            id="azure-other-subtype",
        ),
        pytest.param(tlv(0x99, b"raw"), "alpn", None, id="absent-alpn"),
        pytest.param(tlv(0x99, b"raw"), "ssl", None, id="absent-ssl"),
        pytest.param(tlv(0x99, b"raw"), "crc32c", None, id="absent-crc32c"),
    ],
)
def test_v2_tlv_accessors(record: bytes, attribute: str, expected: object) -> None:
    header, rest = decoded(v2(1, 0x11, INET_BLOCK + record) + b"body")
    assert header == inet_header(record)
    assert getattr(header, attribute) == expected
    assert rest == b"body"


def test_v2_noop_and_unknown_tlvs_are_kept_raw() -> None:
    records = [
        tlv(TLVType.NOOP, b"\x00" * 9),
        tlv(0x99, b"\x00\xffvalue"),
        tlv(0xE5, b""),
        tlv(0x99, b"second"),
    ]
    header = decoded(v2(1, 0x11, INET_BLOCK + b"".join(records))).header
    assert header.tlvs == (
        TLV(0x04, b"\x00" * 9),
        TLV(0x99, b"\x00\xffvalue"),
        TLV(0xE5, b""),
        TLV(0x99, b"second"),
    )
    assert header.source == INET_SOURCE
    assert header.tlv(0x99) == b"\x00\xffvalue"
    assert header.tlv(0xE5) == b""
    assert header.tlv(0x98) is None


CERTIFICATE = bytes.fromhex("3082010a0282010100c0ffee")
SSL_SUB_TLVS = (
    tlv(0x21, b"TLSv1.3")
    + tlv(0x22, b"client.example")
    + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    + tlv(0x24, b"SHA256")
    + tlv(0x25, b"RSA2048")
    + tlv(0x26, b"X25519")
    + tlv(0x27, b"rsa_pss_rsae_sha256")
    + tlv(0x28, CERTIFICATE)
)


def test_v2_ssl_tlv_with_every_sub_tlv() -> None:
    value = b"\x05" + b"\x00\x00\x00\x00" + SSL_SUB_TLVS
    header = decoded(v2(1, 0x11, INET_BLOCK + tlv(TLVType.SSL, value))).header
    ssl = header.ssl
    assert ssl is not None
    assert (ssl.client, ssl.verify) == (0x05, 0)
    assert ssl.tlvs[0] == TLV(0x21, b"TLSv1.3")
    assert len(ssl.tlvs) == 8
    assert ssl.tls and ssl.certificate_presented and ssl.verified
    assert ssl.version == "TLSv1.3"
    assert ssl.common_name == "client.example"
    assert ssl.cipher == "TLS_AES_128_GCM_SHA256"
    assert ssl.signature_algorithm == "SHA256"
    assert ssl.key_algorithm == "RSA2048"
    assert ssl.group == "X25519"
    assert ssl.signature_scheme == "rsa_pss_rsae_sha256"
    assert ssl.client_certificate == CERTIFICATE
    assert ssl.as_dict() == {
        "tls": True,
        "client": 5,
        "verify": 0,
        "verified": True,
        "version": "TLSv1.3",
        "common_name": "client.example",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "signature_algorithm": "SHA256",
        "key_algorithm": "RSA2048",
        "group": "X25519",
        "signature_scheme": "rsa_pss_rsae_sha256",
    }


@pytest.mark.parametrize(
    ("value", "tls", "presented", "verified"),
    [
        pytest.param(b"\x01\x00\x00\x00\x00", True, False, False, id="tls-no-certificate"),
        pytest.param(b"\x03\x00\x00\x00\x01", True, True, False, id="certificate-not-verified"),
        pytest.param(b"\x05\x00\x00\x00\x00", True, True, True, id="session-certificate-verified"),
        pytest.param(b"\x00\x00\x00\x00\x00", False, False, False, id="plain-client"),
    ],
)
def test_v2_ssl_flags(value: bytes, tls: bool, presented: bool, verified: bool) -> None:
    ssl = decoded(v2(1, 0x11, INET_BLOCK + tlv(TLVType.SSL, value))).header.ssl
    assert ssl is not None
    assert ssl == SSLInfo(value[0], value[4], ())
    assert (ssl.tls, ssl.certificate_presented, ssl.verified) == (tls, presented, verified)
    assert ssl.version is None
    assert ssl.client_certificate is None


# --- CRC32C ---------------------------------------------------------------------------------


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_reference(b"123456789") == 0xE3069283


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(b"", id="crc-first"),
        pytest.param(tlv(TLVType.ALPN, b"h2") + tlv(TLVType.NOOP, b"\x00" * 5), id="crc-after"),
    ],
)
def test_v2_correct_crc32c_passes(before: bytes) -> None:
    after = tlv(TLVType.UNIQUE_ID, b"id-1")
    zeroed = v2(1, 0x11, INET_BLOCK + before + tlv(TLVType.CRC32C, b"\x00" * 4) + after)
    data = with_checksum(zeroed)
    header = decoded(data + b"rest").header
    assert header.crc32c == crc32c_reference(zeroed)
    assert header.unique_id == b"id-1"
    assert header.source == INET_SOURCE


def test_v2_wrong_crc32c_is_a_checksum_mismatch() -> None:
    zeroed = v2(1, 0x11, INET_BLOCK + tlv(TLVType.CRC32C, b"\x00" * 4))
    good = with_checksum(zeroed)
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    with pytest.raises(ChecksumMismatch, match="CRC32C") as caught:
        decode(bad)
    assert f"0x{int.from_bytes(bad[-4:], 'big'):08X}" in str(caught.value)
    assert f"0x{crc32c_reference(zeroed):08X}" in str(caught.value)


def test_v2_crc32c_covers_the_addresses() -> None:
    good = with_checksum(v2(1, 0x11, INET_BLOCK + tlv(TLVType.CRC32C, b"\x00" * 4)))
    spoofed = good[:16] + b"\x0a" + good[17:]  # source 10.0.2.1 instead of 192.0.2.1
    with pytest.raises(ChecksumMismatch):
        decode(spoofed)


# --- early rejection --------------------------------------------------------------------


def deciding_length(data: bytes) -> int:
    """How many bytes of ``data`` it takes to see that it is not a PROXY header."""
    signature = {b"P": b"PROXY ", b"\r": SIGNATURE}.get(data[:1])
    if signature is None:
        return 1
    same = 0
    while same < len(data) and data[same] == signature[same]:
        same += 1
    return same + 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="get"),
        pytest.param(b"POST /form HTTP/1.1\r\n", id="post"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
        pytest.param(b"PUT / HTTP/1.1\r\n", id="put"),
        pytest.param(b"PROXZ", id="proxz"),
        pytest.param(b"PROXY\r\n", id="proxy-without-space"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-client-hello"),
        pytest.param(b"\r\nX", id="crlf-x"),
        pytest.param(b"\r\n\r\n\x00\r\nQUIT\r", id="v2-signature-last-byte-wrong"),
        pytest.param(b"\x00", id="nul"),
    ],
)
def test_not_a_header_is_rejected_at_the_deciding_byte(data: bytes) -> None:
    k = deciding_length(data)
    if k > 1:
        assert decode(data[: k - 1]) is NEED_DATA
    with pytest.raises(NotAHeader, match="not a PROXY header") as caught:
        decode(data[:k])
    assert caught.value.data == data[:k]
    with pytest.raises(NotAHeader) as caught:
        decode(data)
    assert caught.value.data == data

    decoder = HeaderDecoder()
    for i in range(k - 1):
        assert decoder.feed(data[i : i + 1]) is NEED_DATA
    with pytest.raises(NotAHeader) as caught:
        decoder.feed(data[k - 1 :])
    assert caught.value.data == data


def test_early_rejection_examples() -> None:
    with pytest.raises(NotAHeader):
        decode(b"G")
    assert decode(b"P") is NEED_DATA
    assert decode(b"") is NEED_DATA
    assert decode(b"\r") is NEED_DATA
    with pytest.raises(NotAHeader):
        decode(b"PO")
    with pytest.raises(NotAHeader):
        decode(b"\x16\x03\x01")


def test_not_a_header_data_holds_every_chunk_fed() -> None:
    decoder = HeaderDecoder()
    assert decoder.feed(b"\r\n") is NEED_DATA
    assert decoder.feed(b"\r\n\x00") is NEED_DATA
    assert decoder.buffered == b"\r\n\r\n\x00"
    with pytest.raises(NotAHeader) as caught:
        decoder.feed(b"\r\nQUIX and the rest")
    assert caught.value.data == b"\r\n\r\n\x00\r\nQUIX and the rest"


@pytest.mark.parametrize(
    ("byte_12", "message"),
    [
        pytest.param(0x11, "version 1, not 2", id="version-1"),
        pytest.param(0x31, "version 3, not 2", id="version-3"),
        pytest.param(0x22, "unknown command 2", id="command-2"),
    ],
)
def test_v2_bad_version_or_command_raises_at_byte_12(byte_12: int, message: str) -> None:
    data = SIGNATURE + bytes([byte_12])
    assert decode(SIGNATURE) is NEED_DATA
    with pytest.raises(InvalidHeader, match=message):
        decode(data)
    decoder = HeaderDecoder()
    for byte in SIGNATURE:
        assert decoder.feed(bytes([byte])) is NEED_DATA
    with pytest.raises(InvalidHeader, match=message):
        decoder.feed(bytes([byte_12]))
    decoder = HeaderDecoder()
    assert decoder.feed(SIGNATURE) is NEED_DATA
    with pytest.raises(InvalidHeader, match=message):
        decoder.feed(bytes([byte_12]))


def test_v2_bad_family_raises_at_byte_16_before_the_body() -> None:
    with pytest.raises(InvalidHeader, match="unknown address family 5"):
        decode(v2(1, 0x51, b"", length=200))
    assert decode(v2(1, 0x11, b"", length=200)) is NEED_DATA


def test_v2_waits_for_the_longest_header_and_no_longer() -> None:
    body = tlv(TLVType.NOOP, b"\x00" * (0xFFFF - 3))
    data = v2(0, 0x00, body)
    assert len(data) == 16 + 0xFFFF
    assert decode(data[:-1]) is NEED_DATA
    assert decoded(data + b"x") == (LOCAL_V2, b"x")
    decoder = HeaderDecoder()
    assert decoder.feed(data[:20]) is NEED_DATA
    assert decoder.feed(data[20:-1]) is NEED_DATA
    assert decoder.feed(data[-1:] + b"next") == (LOCAL_V2, b"next")


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"", None),
        (b"P", None),
        (b"PROXY", None),
        (b"PROXY ", True),
        (b"PROXY TCP4 garbage", True),
        (b"PROXX", False),
        (b"\r\n\r\n\x00\r\nQUI", None),
        (SIGNATURE, True),
        (SIGNATURE[:-1] + b"!", False),
        (b"GET", False),
    ],
)
def test_match_signature(data: bytes, answer: bool | None) -> None:
    assert match_signature(data) is answer


# --- properties -------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)

ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
RAW_TLV_TYPES = [kind for kind in range(256) if kind not in (1, 2, 3, 4, 5, 0x20, 0x30)]
raw_tlvs = st.builds(TLV, st.sampled_from(RAW_TLV_TYPES), st.binary(max_size=40))
short_text = st.text(st.characters(codec="utf-8"), max_size=20)
known_tlvs = st.one_of(
    st.builds(TLV, st.just(TLVType.ALPN), st.binary(min_size=1, max_size=16)),
    st.builds(TLV, st.just(TLVType.AUTHORITY), short_text.map(str.encode)),
    st.builds(TLV, st.just(TLVType.NOOP), st.binary(max_size=16)),
    st.builds(TLV, st.just(TLVType.UNIQUE_ID), st.binary(max_size=128)),
    st.builds(TLV, st.just(TLVType.NETNS), short_text.map(str.encode)),
    st.builds(
        ssl_tlv,
        client=st.integers(0, 7),
        verify=st.integers(0, 0xFFFFFFFF),
        version=st.none() | short_text,
        common_name=st.none() | short_text,
        cipher=st.none() | short_text,
        client_certificate=st.none() | st.binary(max_size=64),
    ),
)
tlv_lists = st.lists(raw_tlvs | known_tlvs, max_size=6)
unix_paths = st.binary(max_size=108).map(lambda path: path.replace(b"\x00", b"/"))
transports = st.sampled_from([TransportProtocol.STREAM, TransportProtocol.DGRAM])


@st.composite
def address_pairs(draw: st.DrawFn) -> tuple[tuple[str, int], tuple[str, int]]:
    hosts = draw(st.sampled_from([ipv4, ipv6]))
    return (draw(hosts), draw(ports)), (draw(hosts), draw(ports))


def same_address(decoded_address: tuple[str, int] | None, given: tuple[str, int]) -> bool:
    assert decoded_address is not None
    host, port = decoded_address
    return (ipaddress.ip_address(host), port) == (ipaddress.ip_address(given[0]), given[1])


@PROPERTY_SETTINGS
@given(address_pairs())
def test_v1_round_trip(addresses: tuple[tuple[str, int], tuple[str, int]]) -> None:
    source, destination = addresses
    header, rest = decoded(encode_v1(source, destination))
    assert header.version == 1 and header.command is PROXY and header.transport is STREAM
    assert header.family is (Family.INET if ":" not in source[0] else Family.INET6)
    if ":" not in source[0]:
        assert (header.source, header.destination) == (source, destination)
    assert same_address(header.source, source)
    assert same_address(header.destination, destination)
    assert (header.tlvs, header.unix, rest) == ((), None, b"")


@PROPERTY_SETTINGS
@given(address_pairs(), transports, tlv_lists, st.booleans())
def test_v2_round_trip(
    addresses: tuple[tuple[str, int], tuple[str, int]],
    transport: TransportProtocol,
    tlvs: list[TLV],
    checksum: bool,
) -> None:
    source, destination = addresses
    data = encode_v2(source, destination, transport=transport, tlvs=tlvs, checksum=checksum)
    header, rest = decoded(data)
    assert (header.version, header.command, header.transport) == (2, PROXY, transport)
    assert header.family is (Family.INET if ":" not in source[0] else Family.INET6)
    assert same_address(header.source, source)
    assert same_address(header.destination, destination)
    assert rest == b""
    if checksum:
        assert header.tlvs[:-1] == tuple(tlvs)
        assert header.tlvs[-1].type == TLVType.CRC32C
        zeroed = data[:-4] + b"\x00" * 4
        assert header.crc32c == crc32c_reference(zeroed)
    else:
        assert header.tlvs == tuple(tlvs)


@PROPERTY_SETTINGS
@given(unix_paths, unix_paths, tlv_lists, st.booleans())
def test_v2_unix_round_trip(source: bytes, destination: bytes, tlvs: list[TLV], crc: bool) -> None:
    header = decoded(encode_v2(unix=(source, destination), tlvs=tlvs, checksum=crc)).header
    assert header.unix == (source, destination)
    assert (header.family, header.source, header.destination) == (Family.UNIX, None, None)
    assert header.tlvs[: len(tlvs)] == tuple(tlvs)
    assert len(header.tlvs) == len(tlvs) + crc


v1_headers = address_pairs().map(lambda pair: encode_v1(*pair))


@st.composite
def valid_headers(draw: st.DrawFn) -> bytes:
    """Any valid header, v1 or v2, as real senders write them."""
    kind = draw(st.sampled_from(["v1", "v1-unknown", "v2", "v2-local", "v2-unix"]))
    if kind == "v1":
        return draw(v1_headers)
    if kind == "v1-unknown":
        return encode_v1()
    tlvs = draw(tlv_lists)
    checksum = draw(st.booleans())
    if kind == "v2-local":
        return encode_v2(command=LOCAL, tlvs=tlvs, checksum=checksum)
    if kind == "v2-unix":
        unix = (draw(unix_paths), draw(unix_paths))
        return encode_v2(unix=unix, tlvs=tlvs, checksum=checksum)
    return encode_v2(*draw(address_pairs()), tlvs=tlvs, checksum=checksum)


def feed_all(decoder: HeaderDecoder, chunks: list[bytes]) -> Decoded:
    """Feed ``chunks`` until a header is complete; the result's rest includes later chunks."""
    for i, chunk in enumerate(chunks):
        result = decoder.feed(chunk)
        if isinstance(result, Decoded):
            return Decoded(result.header, result.rest + b"".join(chunks[i + 1 :]))
    raise AssertionError(f"no header after {len(chunks)} chunks: {decoder.buffered!r}")


@PROPERTY_SETTINGS
@given(valid_headers(), st.binary(max_size=30))
def test_split_anywhere_decodes_the_same(header_bytes: bytes, trailing: bytes) -> None:
    data = header_bytes + trailing
    expected = decoded(data)
    assert expected == (decoded(header_bytes).header, trailing)
    for i in range(len(data) + 1):
        assert feed_all(HeaderDecoder(), [data[:i], data[i:]]) == expected
    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert feed_all(HeaderDecoder(), one_by_one) == expected


# Bytes that the grammar treats specially, tried more often than chance would.
interesting_bytes = st.sampled_from(b"\x00\t\n\r 0.:\xff") | st.integers(0, 255)


@st.composite
def mutated(draw: st.DrawFn, headers: st.SearchStrategy[bytes]) -> bytes:
    """A valid header with a few bytes flipped, replaced, inserted or deleted."""
    data = bytearray(draw(headers))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "replace", "insert", "delete"]))
        if operation == "insert":
            data.insert(draw(st.integers(0, len(data))), draw(interesting_bytes))
        elif data:
            at = draw(st.integers(0, len(data) - 1))
            if operation == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif operation == "replace":
                data[at] = draw(interesting_bytes)
            else:
                del data[at]
    return bytes(data)


v1_alphabet = st.sampled_from(
    [b"0", b"1", b"9", b"25", b"255", b"f", b":", b".", b" ", b"\r", b"\n", b"\t", b"\x00", b"\xff"]
)
v1_like = st.builds(
    lambda protocol, parts, end: b"PROXY " + protocol + b"".join(parts) + end,
    st.sampled_from([b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"UNKNOWN ", b"TCP", b""]),
    st.lists(v1_alphabet, max_size=60),
    st.sampled_from([b"\r\n", b"", b"\r", b"\n"]),
)
v2_like = st.builds(
    lambda head, body: SIGNATURE + head + body,
    st.binary(max_size=4),
    st.binary(max_size=80),
)
garbage = st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=120).map(lambda data: b"PROXY " + data),
    v1_like,
    v2_like,
    mutated(valid_headers()),
    mutated(v1_headers),
)


def answer(data: bytes) -> Decoded | NeedData | type[ProxyProtocolError]:
    """decode(data), or the class of the ProxyProtocolError it raised (anything else escapes)."""
    try:
        return decode(data)
    except ProxyProtocolError as error:
        if isinstance(error, NotAHeader):
            assert error.data == data
        return type(error)


def assert_refused_or_waiting_for_a_possible_header(data: bytes) -> None:
    """decode(data) answers or raises a ProxyProtocolError, and waits only while a header fits."""
    if answer(data) is not NEED_DATA:
        return
    if data[:1] == b"P":
        assert len(data) < 107
    elif data.startswith(SIGNATURE) and len(data) >= 16:
        declared = int.from_bytes(data[14:16], "big")
        assert len(data) < 16 + declared <= 16 + 0xFFFF
    else:
        assert len(data) < 16


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(garbage)
def test_garbage_raises_only_proxy_protocol_errors(data: bytes) -> None:
    assert_refused_or_waiting_for_a_possible_header(data)


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(mutated(v1_headers))
def test_mutated_v1_lines_raise_only_proxy_protocol_errors(data: bytes) -> None:
    assert_refused_or_waiting_for_a_possible_header(data)


@PROPERTY_SETTINGS
@given(garbage)
def test_incremental_answers_match_decode_of_every_prefix(data: bytes) -> None:
    decoder = HeaderDecoder()
    for i in range(len(data)):
        expected = answer(data[: i + 1])
        try:
            result: Decoded | NeedData | type[ProxyProtocolError] = decoder.feed(data[i : i + 1])
        except ProxyProtocolError as error:
            result = type(error)
            if isinstance(error, NotAHeader):
                assert error.data == data[: i + 1]
        assert result == expected, f"after {i + 1} bytes"
        if result is not NEED_DATA:
            break


@PROPERTY_SETTINGS
@given(st.sampled_from([0x00, 0x11, 0x21, 0x31]), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_v2_waits_only_while_the_declared_length_is_missing(
    family: int, length: int, body: bytes
) -> None:
    data = v2(1, family, body, length=length)
    if answer(data) is NEED_DATA:
        assert len(data) < 16 + length
