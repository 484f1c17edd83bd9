"""The decoder against what real senders send: the captures in ``tests/fixtures``.

The fixtures were captured by ``tests/capture_fixtures.py`` (their README says from which
sender, which version, when); these tests read them and need no sender at run time, except
the live test, which re-captures into a temporary directory when HAProxy and curl are here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from proxyproto_mw import (
    NEED_DATA,
    Address,
    Command,
    Decoded,
    Family,
    HeaderDecoder,
    ProxyHeader,
    TLVType,
    TransportProtocol,
    decode,
)
from tests.capture_fixtures import CAPTURES, CURL_CLIENT, FIXTURES, RELAY_CLIENT, Expected, Sender
from tests.haproxy import haproxy_available

EXPECTED: dict[str, Expected] = json.loads((FIXTURES / "expected.json").read_text())
NAMES = sorted(path.stem for path in FIXTURES.glob("*.bin"))

CLIENT_HOSTS = {
    "haproxy-send-proxy-v1": RELAY_CLIENT,
    "haproxy-send-proxy-v2": RELAY_CLIENT,
    "haproxy-send-proxy-v2-crc32c-unique-id": RELAY_CLIENT,
    "curl-haproxy-protocol-ipv4": CURL_CLIENT,
    "nginx-stream-proxy-protocol": RELAY_CLIENT,
}
"""The loopback address each relayed client bound to: the source its header must name."""


def _address(pair: list[str | int] | None) -> Address | None:
    if pair is None:
        return None
    host, port = pair
    assert isinstance(host, str)
    assert isinstance(port, int)
    return host, port


def _decode_whole(data: bytes) -> Decoded:
    result = decode(data)
    assert isinstance(result, Decoded), "the whole capture is not a complete header"
    return result


def check_header(header: ProxyHeader, rest: bytes, expected: Expected) -> None:
    """Assert that a decoded header and the bytes after it are what ``expected`` says."""
    assert header.version == expected["version"]
    assert header.command is Command(expected["command"])
    assert header.family is Family[expected["family"]]
    assert header.transport is TransportProtocol[expected["transport"]]
    assert header.source == _address(expected["source"])
    assert header.destination == _address(expected["destination"])
    assert header.is_local == (header.command is Command.LOCAL)
    assert sorted(tlv.type for tlv in header.tlvs) == expected["tlv_types"]
    if TLVType.CRC32C in expected["tlv_types"]:
        # Decoding verified it; a mismatch would have raised ChecksumMismatch.
        assert header.crc32c is not None
    prefix = expected["unique_id_prefix"]
    if prefix is None:
        assert header.unique_id is None
    else:
        assert header.unique_id is not None
        assert header.unique_id.startswith(prefix.encode("ascii"))
        assert len(header.unique_id) > len(prefix)
    assert rest == expected["payload"].encode("latin-1")


def test_every_fixture_has_expected_values() -> None:
    assert NAMES, f"no fixtures in {FIXTURES}"
    assert set(NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_decodes(name: str) -> None:
    data = (FIXTURES / f"{name}.bin").read_bytes()
    decoded = _decode_whole(data)
    check_header(decoded.header, decoded.rest, EXPECTED[name])


@pytest.mark.parametrize("name", NAMES)
def test_fixture_decodes_byte_by_byte(name: str) -> None:
    data = (FIXTURES / f"{name}.bin").read_bytes()
    whole = _decode_whole(data)
    decoder = HeaderDecoder()
    for end in range(1, len(data) + 1):
        result = decoder.feed(data[end - 1 : end])
        if result is not NEED_DATA:
            break
    else:
        pytest.fail("the decoder never completed the header")
    assert isinstance(result, Decoded)
    # It completes on the header's last byte, so nothing after it was fed yet.
    assert result.rest == b""
    assert end == len(data) - len(whole.rest)
    assert result.header == whole.header
    check_header(result.header, data[end:], EXPECTED[name])


@pytest.mark.skipif(
    not (haproxy_available() and shutil.which("curl")), reason="needs haproxy and curl"
)
@pytest.mark.parametrize("sender", CAPTURES, ids=[sender.name for sender in CAPTURES])
def test_live_capture_matches_decoder(sender: Sender, tmp_path: Path) -> None:
    reason = sender.missing()
    if reason is not None:
        pytest.skip(reason)
    capture = sender.capture(tmp_path)
    data = (tmp_path / f"{sender.name}.bin").read_bytes()
    assert data == capture.data
    decoded = _decode_whole(data)
    check_header(decoded.header, decoded.rest, capture.expected)
    client = CLIENT_HOSTS.get(sender.name)
    if client is not None:
        assert decoded.header.source is not None
        assert decoded.header.source[0] == client
