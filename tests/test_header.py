"""The header's typed accessors: what they answer for well-formed, malformed and repeated TLVs.

The headers are decoded from bytes (by the engine in use, C or pure Python), as an
application receives them.
"""

from __future__ import annotations

import pytest

from proxyproto_mw import TLV, Decoded, ProxyHeader, decode, encode_tlv, encode_v2

SOURCE = ("192.0.2.1", 56324)
DESTINATION = ("198.51.100.7", 443)


def received(*tlvs: tuple[int, bytes]) -> ProxyHeader:
    """The header a v2 INET header with ``tlvs`` decodes to."""
    result = decode(encode_v2(SOURCE, DESTINATION, tlvs=tlvs))
    assert isinstance(result, Decoded)
    assert result.header.tlvs == tuple(TLV(kind, value) for kind, value in tlvs)
    return result.header


AWS_VPCE = (0xEA, b"\x01vpce-08d2bf15fac5001c9")
GCP_PSC = (0xE0, b"\x01\x23\x45\x67\x89\xab\xcd\xef")
AZURE = (0xEE, b"\x01\x78\x56\x34\x12")


@pytest.mark.parametrize(
    ("malformed", "well_formed", "attribute", "expected"),
    [
        pytest.param(
            (0xEA, b"\x01"), AWS_VPCE, "aws_vpce_id", "vpce-08d2bf15fac5001c9", id="aws-empty"
        ),
        pytest.param(
            (0xEA, b""), AWS_VPCE, "aws_vpce_id", "vpce-08d2bf15fac5001c9", id="aws-no-subtype"
        ),
        pytest.param(
            (0xEA, b"\x02vpce-other"),
            AWS_VPCE,
            "aws_vpce_id",
            "vpce-08d2bf15fac5001c9",
            id="aws-other-subtype",
        ),
        pytest.param(
            (0xEA, b"\x01vpce-\xff"),
            AWS_VPCE,
            "aws_vpce_id",
            "vpce-08d2bf15fac5001c9",
            id="aws-not-ascii",
        ),
        pytest.param(
            (0xE0, b"\x01\x23\x45\x67"),
            GCP_PSC,
            "gcp_psc_connection_id",
            0x0123456789ABCDEF,
            id="gcp-4-bytes",
        ),
        pytest.param(
            (0xE0, b"\x00" * 9),
            GCP_PSC,
            "gcp_psc_connection_id",
            0x0123456789ABCDEF,
            id="gcp-9-bytes",
        ),
        pytest.param(
            (0xEE, b"\x02\x78\x56\x34\x12"),
            AZURE,
            "azure_private_link_id",
            0x12345678,
            id="azure-other-subtype",
        ),
        pytest.param(
            (0xEE, b"\x01\x78\x56\x34"),
            AZURE,
            "azure_private_link_id",
            0x12345678,
            id="azure-4-bytes",
        ),
    ],
)
def test_a_malformed_cloud_tlv_is_skipped_for_the_next_well_formed_one(
    malformed: tuple[int, bytes], well_formed: tuple[int, bytes], attribute: str, expected: object
) -> None:
    header = received(malformed, (0x04, b""), well_formed)
    assert getattr(header, attribute) == expected
    assert header.as_dict()[attribute] == expected  # type: ignore[literal-required]
    alone = received(malformed)
    assert getattr(alone, attribute) is None
    assert alone.as_dict()[attribute] is None  # type: ignore[literal-required]


@pytest.mark.parametrize(
    ("first", "second", "attribute", "expected"),
    [
        pytest.param(
            AWS_VPCE, (0xEA, b"\x01vpce-second"), "aws_vpce_id", "vpce-08d2bf15fac5001c9", id="aws"
        ),
        pytest.param(
            GCP_PSC,
            (0xE0, b"\x00" * 7 + b"\x01"),
            "gcp_psc_connection_id",
            0x0123456789ABCDEF,
            id="gcp",
        ),
        pytest.param(
            AZURE, (0xEE, b"\x01\x01\x00\x00\x00"), "azure_private_link_id", 0x12345678, id="azure"
        ),
    ],
)
def test_the_first_well_formed_cloud_tlv_wins(
    first: tuple[int, bytes], second: tuple[int, bytes], attribute: str, expected: object
) -> None:
    assert getattr(received(first, second), attribute) == expected


def test_cloud_accessors_without_their_tlv_answer_none() -> None:
    header = received((0x01, b"h2"), (0xE5, encode_tlv(0xEA, b"\x01vpce-nested")))
    assert (header.aws_vpce_id, header.gcp_psc_connection_id, header.azure_private_link_id) == (
        None,
        None,
        None,
    )
