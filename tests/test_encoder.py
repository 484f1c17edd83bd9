"""The encoder: exact bytes for what senders write, errors for what cannot be written."""

from __future__ import annotations

import re

import pytest
from crc32c import crc32c

from proxyproto_mw import (
    TLV,
    Command,
    Decoded,
    Family,
    ProxyHeader,
    TLVType,
    TransportProtocol,
    UnixAddresses,
    decode,
    encode,
    encode_tlv,
    encode_v1,
    encode_v2,
    ssl_tlv,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def decoded(data: bytes) -> Decoded:
    result = decode(data)
    assert isinstance(result, Decoded), f"{data!r} decoded to {result!r}"
    return result


@pytest.mark.parametrize(
    ("source", "destination", "line"),
    [
        pytest.param(
            ("198.51.100.22", 35646),
            ("203.0.113.7", 80),
            b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\n",
            id="tcp4",
        ),
        pytest.param(
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            id="tcp4-extremes",
        ),
        pytest.param(
            ("2001:DB8:0:0:0:0:0:1", 1234),
            ("2001:0db8::0002", 443),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n",
            id="tcp6-canonical",
        ),
        pytest.param(None, None, b"PROXY UNKNOWN\r\n", id="unknown"),
    ],
)
def test_encode_v1(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, line: bytes
) -> None:
    assert encode_v1(source, destination) == line


@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        pytest.param(
            ("192.0.2.1", 1), ("2001:db8::1", 2), "must both be IPv4 or both IPv6", id="4-6"
        ),
        pytest.param(
            ("2001:db8::1", 1), ("192.0.2.1", 2), "must both be IPv4 or both IPv6", id="6-4"
        ),
        pytest.param(("192.0.2.1", 1), None, "both addresses, or neither", id="source-only"),
        pytest.param(None, ("192.0.2.1", 1), "both addresses, or neither", id="destination-only"),
    ],
)
def test_encode_v1_and_v2_reject_mixed_or_missing_addresses(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_v1(source, destination)
    with pytest.raises(ValueError, match=message):
        encode_v2(source, destination)


@pytest.mark.parametrize(
    ("source", "destination", "port"),
    [
        pytest.param(("192.0.2.1", 65536), ("192.0.2.2", 80), "65536", id="source-65536"),
        pytest.param(("2001:db8::1", 80), ("::1", -1), "-1", id="destination-negative"),
    ],
)
def test_encode_v1_and_v2_reject_ports_out_of_range(
    source: tuple[str, int], destination: tuple[str, int], port: str
) -> None:
    message = re.escape(f"port {port} is not in 0..65535")
    with pytest.raises(ValueError, match=message):
        encode_v1(source, destination)
    with pytest.raises(ValueError, match=message):
        encode_v2(source, destination)


def test_encode_v2_inet_bytes() -> None:
    data = encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443))
    assert data == (
        SIGNATURE
        + b"\x21\x11\x00\x0c"
        + bytes([192, 0, 2, 1, 198, 51, 100, 7])
        + b"\xdc\x04\x01\xbb"
    )


def test_encode_v2_inet6_dgram_with_tlvs_bytes() -> None:
    data = encode_v2(
        ("::1", 1),
        ("2001:db8::2", 2),
        transport=TransportProtocol.DGRAM,
        tlvs=[TLV(TLVType.ALPN, b"h2"), (0xE5, b"")],
    )
    assert data[:16] == SIGNATURE + b"\x21\x22\x00\x2c"
    assert data[16:32] == b"\x00" * 15 + b"\x01"
    assert data[32:48] == b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x02"
    assert data[48:] == b"\x00\x01\x00\x02" + b"\x01\x00\x02h2" + b"\xe5\x00\x00"


def test_encode_v2_local_health_check_bytes() -> None:
    assert encode_v2(command=Command.LOCAL) == SIGNATURE + b"\x20\x00\x00\x00"


@pytest.mark.parametrize(
    ("family", "block"),
    [
        pytest.param(Family.INET, 12, id="inet"),
        pytest.param(Family.INET6, 36, id="inet6"),
        pytest.param(Family.UNIX, 216, id="unix"),
    ],
)
def test_encode_v2_family_without_addresses_bytes(family: Family, block: int) -> None:
    """A family with no addresses: its block zeroed, transport UNSPEC (the real ones apply)."""
    data = encode_v2(family=family, tlvs=[(TLVType.ALPN, b"h2")])
    assert data[:16] == SIGNATURE + bytes([0x21, family << 4]) + (block + 5).to_bytes(2, "big")
    assert data[16:] == bytes(block) + b"\x01\x00\x02h2"
    header = decoded(data).header
    assert (header.family, header.transport, header.source, header.unix) == (
        family,
        TransportProtocol.UNSPEC,
        None,
        None,
    )


def test_encode_v2_unix_bytes() -> None:
    data = encode_v2(unix=(b"/run/a.sock", b"/run/b.sock"))
    assert data[:16] == SIGNATURE + b"\x21\x31\x00\xd8"
    assert data[16:] == b"/run/a.sock".ljust(108, b"\x00") + b"/run/b.sock".ljust(108, b"\x00")


def test_encode_v2_unix_path_longer_than_108_bytes_is_rejected() -> None:
    assert len(encode_v2(unix=(b"a" * 108, b"b"))) == 16 + 216
    with pytest.raises(ValueError, match="at most 108 bytes"):
        encode_v2(unix=(b"a" * 109, b"b"))


def test_encode_v2_checksum_is_accepted_by_the_decoder() -> None:
    data = encode_v2(
        ("192.0.2.1", 1),
        ("192.0.2.2", 2),
        tlvs=[(TLVType.AUTHORITY, b"example.com")],
        checksum=True,
    )
    assert data[-7:-4] == b"\x03\x00\x04"  # the CRC32C TLV comes last
    assert int.from_bytes(data[-4:], "big") == crc32c(data[:-4] + b"\x00" * 4)
    header = decoded(data).header
    assert header.crc32c == int.from_bytes(data[-4:], "big")
    assert header.authority == "example.com"


def test_encode_v2_body_longer_than_65535_bytes_is_rejected() -> None:
    fits = [(TLVType.NOOP, b"\x00" * (0xFFFF - 12 - 3))]
    assert decoded(encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=fits)).header.source == (
        "192.0.2.1",
        1,
    )
    too_long = [(TLVType.NOOP, b"\x00" * (0xFFFF - 12 - 2))]
    with pytest.raises(ValueError, match="at most 65535 bytes"):
        encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=too_long)
    with pytest.raises(ValueError, match="at most 65535 bytes"):
        encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=fits, checksum=True)


def test_encode_tlv() -> None:
    assert encode_tlv(0xEA, b"\x01vpce-1") == b"\xea\x00\x07\x01vpce-1"
    assert encode_tlv(0x04, b"") == b"\x04\x00\x00"
    with pytest.raises(ValueError, match="one byte"):
        encode_tlv(0x100, b"")
    with pytest.raises(ValueError, match="65535"):
        encode_tlv(0x04, b"\x00" * 0x10000)


def test_ssl_tlv_decodes_to_the_same_details() -> None:
    record = ssl_tlv(
        client=0x03,
        verify=0,
        version="TLSv1.2",
        common_name="client.example",
        cipher="ECDHE-RSA-AES128-GCM-SHA256",
        signature_algorithm="SHA256",
        key_algorithm="RSA2048",
        client_certificate=b"\x30\x82der",
    )
    assert record.value[:5] == b"\x03\x00\x00\x00\x00"
    header = decoded(encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=[record])).header
    ssl = header.ssl
    assert ssl is not None
    assert ssl.tls and ssl.certificate_presented and ssl.verified
    assert (ssl.version, ssl.common_name, ssl.cipher) == (
        "TLSv1.2",
        "client.example",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
    assert (ssl.signature_algorithm, ssl.key_algorithm) == ("SHA256", "RSA2048")
    assert ssl.client_certificate == b"\x30\x82der"


INET = ProxyHeader(
    2,
    Command.PROXY,
    Family.INET,
    TransportProtocol.STREAM,
    ("192.0.2.1", 56324),
    ("198.51.100.7", 443),
)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(
            ProxyHeader(
                1,
                Command.PROXY,
                Family.INET,
                TransportProtocol.STREAM,
                ("198.51.100.22", 35646),
                ("203.0.113.7", 80),
            ),
            id="v1-tcp4",
        ),
        pytest.param(
            ProxyHeader(
                1,
                Command.PROXY,
                Family.INET6,
                TransportProtocol.STREAM,
                ("2001:db8::1", 1),
                ("::1", 65535),
            ),
            id="v1-tcp6",
        ),
        pytest.param(
            ProxyHeader(1, Command.PROXY, Family.UNSPEC, TransportProtocol.UNSPEC, None, None),
            id="v1-unknown",
        ),
        pytest.param(INET, id="v2-inet"),
        pytest.param(
            INET._replace(
                tlvs=(
                    TLV(TLVType.ALPN, b"h2"),
                    TLV(TLVType.AWS, b"\x01vpce-0abc"),
                    TLV(0x99, b"raw"),
                    TLV(TLVType.CRC32C, b"\x00\x00\x00\x00"),
                )
            ),
            id="v2-inet-tlvs-checksum",
        ),
        pytest.param(
            INET._replace(
                family=Family.INET6,
                transport=TransportProtocol.DGRAM,
                source=("2001:db8::1", 0),
                destination=("2001:db8::2", 65535),
            ),
            id="v2-inet6-dgram",
        ),
        pytest.param(
            INET._replace(
                family=Family.UNIX,
                source=None,
                destination=None,
                unix=UnixAddresses(b"/run/a.sock", b"/run/b.sock"),
            ),
            id="v2-unix",
        ),
        pytest.param(
            ProxyHeader(2, Command.PROXY, Family.UNSPEC, TransportProtocol.UNSPEC, None, None),
            id="v2-proxy-unspec",
        ),
        pytest.param(
            ProxyHeader(2, Command.PROXY, Family.INET6, TransportProtocol.UNSPEC, None, None),
            id="v2-proxy-inet6-transport-unspec",
        ),
        pytest.param(
            ProxyHeader(2, Command.LOCAL, Family.UNSPEC, TransportProtocol.UNSPEC, None, None),
            id="v2-local",
        ),
    ],
)
def test_encode_round_trip(header: ProxyHeader) -> None:
    data = encode(header)
    again = decoded(data + b"next").header
    if header.crc32c is not None:
        # The checksum is recomputed for the new bytes; everything else is kept.
        assert again.crc32c == crc32c(data[:-4] + b"\x00" * 4)
        assert again._replace(tlvs=again.tlvs[:-1]) == header._replace(tlvs=header.tlvs[:-1])
    else:
        assert again == header
    assert encode(again) == data
