"""The C accelerator (``proxyproto_mw._speedups``) against the pure-Python decoder.

The C ``decode`` handles the common complete, valid headers itself (v2 TLVs included)
and hands everything else to ``_decode_python``. Here both get the same inputs, valid,
mutated and random, and must give equal results of identical types, or raise the same
error with the same message. A spying fallback shows which inputs the C code decoded
itself. The decoder's own tests (tests/test_decoder.py) run against both
implementations as well; tests/test_sanitizers.py runs a differential fuzz against a
build of the C code under AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Any, NamedTuple

import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxyproto_mw import (
    TLV,
    Command,
    Decoded,
    Family,
    HeaderDecoder,
    NotAHeader,
    ProxyHeader,
    ProxyProtocolError,
    TLVType,
    TransportProtocol,
    encode_tlv,
    encode_v2,
    ssl_tlv,
)
from proxyproto_mw import decoder as decoder_module
from proxyproto_mw.decoder import NeedData, _decode_python
from tests.leaks import growth

speedups: ModuleType | None
try:
    from proxyproto_mw import _speedups as speedups
except ImportError:
    speedups = None

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CONFIGURATION = (
    Decoded,
    ProxyHeader,
    Command.PROXY,
    Family.INET,
    Family.INET6,
    TransportProtocol.STREAM,
    (),
    TLV,
)


def test_extension_is_built_in_ci() -> None:
    """CI must test the accelerator: there, a failed (optional) build is an error."""
    if not os.environ.get("CI"):
        pytest.skip("not in CI (CI is not set)")
    assert speedups is not None, "proxyproto_mw._speedups was not built"
    if not os.environ.get("PROXYPROTO_NO_EXTENSIONS"):
        assert decoder_module.ACCELERATED


needs_speedups = pytest.mark.skipif(speedups is None, reason="the C accelerator is not built")


def c_module() -> Any:  # the extension; Any so that the tests may call it with bad arguments
    assert speedups is not None
    return speedups


if speedups is not None and not decoder_module.ACCELERATED:
    # PROXYPROTO_NO_EXTENSIONS is set: the decoder left the built module unconfigured.
    speedups.configure(_decode_python, *CONFIGURATION)


@contextmanager
def spying() -> Iterator[list[object]]:
    """Record every call the C decode passes on to the Python decoder."""
    calls: list[object] = []

    def spy(*args: Any, **kwargs: Any) -> Decoded | NeedData:
        calls.append(args[0] if args else kwargs)
        return _decode_python(*args, **kwargs)

    module = c_module()
    module.configure(spy, *CONFIGURATION)
    try:
        yield calls
    finally:
        module.configure(_decode_python, *CONFIGURATION)


def outcome(function: Callable[[Any], object], data: object) -> tuple[bool, object]:
    """(True, result) or (False, the exception raised)."""
    try:
        return True, function(data)
    except Exception as error:
        return False, error


def assert_identical(actual: object, expected: object, where: str = "result") -> None:
    """Equal and of identical types, recursively through tuples (hashes included)."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple)
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_identical(a, e, f"{where}[{i}]")
        assert hash(actual) == hash(expected), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def compare(data: object) -> bool:
    """Assert that both decoders answer ``data`` alike; return whether C decoded it itself."""
    ok, expected = outcome(_decode_python, data)
    with spying() as calls:
        c_ok, actual = outcome(c_module().decode, data)
    assert c_ok is ok, f"{data!r}: C {actual!r}, Python {expected!r}"
    if ok:
        assert_identical(actual, expected)
    else:
        assert isinstance(actual, Exception) and isinstance(expected, Exception)
        assert type(actual) is type(expected), f"{data!r}: {actual!r} != {expected!r}"
        assert str(actual) == str(expected)
        if isinstance(expected, NotAHeader):
            assert isinstance(actual, NotAHeader)
            assert_identical(actual.data, expected.data)
    # C decodes exactly the valid complete TCP4/TCP6 lines and v2 INET/INET6 STREAM
    # headers (TLVs included) given as bytes, and passes everything else on.
    handled = not calls
    assert handled == (
        type(data) is bytes
        and isinstance(expected, Decoded)
        and expected.header.command is Command.PROXY
        and expected.header.family in (Family.INET, Family.INET6)
        and expected.header.transport is TransportProtocol.STREAM
    ), f"{data!r}: decoded in C: {handled}"
    return handled


def compare_prefixes(data: bytes) -> None:
    """compare() every prefix of ``data``, and ``data`` with bytes after it."""
    for end in range(len(data) + 1):
        compare(data[:end])
    compare(data + b"GET / HTTP/1.1\r\n")


SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- what the C code must decode itself ---------------------------------------------


LONGEST_TCP6_LINE = (  # 105 bytes before the CRLF, the most a v1 line may have
    b"PROXY TCP6 0000:0000:0000:0000:0000:0000:255.255.255.25 "
    b"0000:0000:0000:0000:0000:0000:255.255.255.255 1 2"
)


@needs_speedups
@pytest.mark.parametrize(
    ("data", "source", "destination"),
    [
        pytest.param(
            b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\n",
            ("198.51.100.22", 35646),
            ("203.0.113.7", 80),
            id="v1-tcp4",
        ),
        pytest.param(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\nGET",
            ("0.0.0.0", 0),
            ("255.255.255.255", 65535),
            id="v1-tcp4-extremes",
        ),
        pytest.param(
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 0000::ffff:198.51.100.22 1 65535\r\n",
            ("2001:db8::1", 1),
            ("::ffff:198.51.100.22", 65535),
            id="v1-tcp6-normalized",
        ),
        pytest.param(
            LONGEST_TCP6_LINE + b"\r\n",
            ("::255.255.255.25", 1),
            ("::255.255.255.255", 2),
            id="v1-tcp6-105-bytes",
        ),
        pytest.param(
            encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443)),
            ("192.0.2.1", 56324),
            ("198.51.100.7", 443),
            id="v2-inet",
        ),
        pytest.param(
            encode_v2(("0.10.100.255", 0), ("255.255.255.255", 65535)) + b"rest",
            ("0.10.100.255", 0),
            ("255.255.255.255", 65535),
            id="v2-inet-octet-widths",
        ),
        pytest.param(
            encode_v2(("2001:db8::1", 80), ("::ffff:1.2.3.4", 443)),
            ("2001:db8::1", 80),
            ("::ffff:1.2.3.4", 443),
            id="v2-inet6",
        ),
    ],
)
def test_common_headers_are_decoded_in_c(
    data: bytes, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    assert compare(data)
    result = c_module().decode(data)
    assert (result.header.source, result.header.destination) == (source, destination)
    compare_prefixes(data)


@needs_speedups
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(LONGEST_TCP6_LINE + b"5\r\n", id="v1-106-bytes"),
        b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 100000\r\n",
        b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4\x00 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 ::1 \x1a:1 1 2\r\n",  # 0x1A | 0x20 is ":"
        b"PROXY TCP6 ::1 ::g 1 2\r\n",
        b"PROXY TCP6 ::1 ::\xff 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n",
        b"PROXY UNKNOWN\r\n",
        SIGNATURE + b"\x20\x00\x00\x00",  # LOCAL
        SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # DGRAM
        SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # INET6 block too short
        SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # unknown command
        SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
        SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216),  # UNIX
    ],
)
def test_everything_else_is_left_to_python(data: bytes) -> None:
    assert not compare(data)
    compare_prefixes(data)


INET4 = (("192.0.2.1", 1), ("192.0.2.2", 2))
INET6 = (("2001:db8::1", 1), ("2001:db8::2", 2))
HAPROXY_TLVS: list[tuple[int, bytes]] = [
    (TLVType.ALPN, b"h2"),
    (TLVType.AUTHORITY, b"api.example.com"),
    (TLVType.UNIQUE_ID, b"CB007107:8B3E_CB007107:01BB_6745A1F2_0001:2A3B"),
    ssl_tlv(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", client_certificate=b"\x30"),
    (TLVType.AWS, b"\x01vpce-0123456789abcdef0"),
    (TLVType.NOOP, b"\x00" * 5),
]


def with_first_crc32c(data: bytes) -> bytes:
    """``data`` with its first (zeroed) CRC32C TLV's value filled in."""
    at = data.index(encode_tlv(TLVType.CRC32C, bytes(4))) + 3
    return data[:at] + crc32c(data).to_bytes(4, "big") + data[at + 4 :]


def with_crc32c_first(addresses: tuple[tuple[str, int], tuple[str, int]]) -> bytes:
    """HAProxy's order: the CRC32C TLV first, then the others."""
    return with_first_crc32c(
        encode_v2(*addresses, tlvs=[(TLVType.CRC32C, bytes(4)), *HAPROXY_TLVS])
    )


@needs_speedups
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_v2(*INET4, tlvs=[(0x04, b"")]), id="noop-empty"),
        pytest.param(encode_v2(*INET4, tlvs=HAPROXY_TLVS, checksum=True), id="haproxy-crc-last"),
        pytest.param(with_crc32c_first(INET4), id="haproxy-crc-first"),
        pytest.param(with_crc32c_first(INET6) + b"GET", id="inet6-haproxy-crc-first"),
        pytest.param(
            encode_v2(*INET6, tlvs=[(1, b"h2"), (2, b"example.com"), (0xEA, b"\x01vpce-1")])
            + b"GET",
            id="inet6",
        ),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.AUTHORITY, "bücher.example".encode())]),
            id="authority-utf8",
        ),
        pytest.param(
            encode_v2(
                *INET4,
                tlvs=[(TLVType.AUTHORITY, "\U0001d518\U0001d52b\U0001d526".encode()), (2, b"")],
            ),
            id="authority-4-byte-utf8-and-empty",
        ),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.UNIQUE_ID, b"u" * 128)]), id="unique-128"),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.SSL, b"\x01" + bytes(4))]), id="ssl-bare"),
        pytest.param(
            with_first_crc32c(encode_v2(*INET4, tlvs=[(TLVType.CRC32C, bytes(4))] * 3)),
            id="three-crc32c-first-checked",
        ),
        pytest.param(encode_v2(*INET4, tlvs=[(0xE5, bytes(0xFFFF - 12 - 3))]), id="longest-header"),
        pytest.param(
            encode_v2(
                *INET4,
                tlvs=[(k, bytes(5) if k == 0x20 else bytes([k])) for k in range(256) if k != 3],
            ),
            id="all-types",
        ),
    ],
)
def test_v2_tlvs_are_decoded_in_c(data: bytes) -> None:
    assert compare(data)
    compare_prefixes(data[:400])


@needs_speedups
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(SIGNATURE + b"\x21\x11\x00\x0d" + bytes(13), id="one-stray-byte"),
        pytest.param(SIGNATURE + b"\x21\x11\x00\x0e" + bytes(14), id="two-stray-bytes"),
        pytest.param(encode_v2(*INET4, tlvs=[(1, b"h2")])[:-1], id="cut-value"),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.AUTHORITY, b"\xff")]), id="authority-not-utf8"
        ),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.AUTHORITY, b"\xed\xa0\x80")]),
            id="authority-surrogate",
        ),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.AUTHORITY, b"\xc0\xaf")]), id="authority-overlong"
        ),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.UNIQUE_ID, b"u" * 129)]), id="unique-129"),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.SSL, bytes(4))]), id="ssl-4-bytes"),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.SSL, bytes(5) + b"\x21\x00\x09TLSv1.3")]),
            id="ssl-sub-tlv-past-end",
        ),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.SSL, bytes(5) + b"\x21\x00")]),
            id="ssl-stray-sub-bytes",
        ),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.CRC32C, bytes(3))]), id="crc32c-3-bytes"),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.CRC32C, bytes(5))]), id="crc32c-5-bytes"),
        pytest.param(encode_v2(*INET4, tlvs=[(TLVType.CRC32C, bytes(4))]), id="crc32c-zero"),
        pytest.param(
            encode_v2(*INET4, tlvs=[(TLVType.CRC32C, bytes(4))], checksum=True),
            id="second-crc32c-not-first",
        ),
    ],
)
def test_v2_tlv_errors_are_left_to_python(data: bytes) -> None:
    """Any broken TLV rule: Python decodes it and says why."""
    assert not compare(data)
    compare_prefixes(data)


@needs_speedups
def test_every_bit_flip_of_a_checksummed_header_decodes_alike() -> None:
    data = with_crc32c_first(INET4)
    for at in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[at] ^= 1 << bit
            compare(bytes(flipped))


@needs_speedups
@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_crc32c_is_castagnoli(data: bytes, cut: int) -> None:
    """The C CRC32C, by SSE4.2 and by table, is the crc32c package's, at any alignment."""
    module = c_module()
    assert module.crc32c(b"123456789") == module.crc32c(b"123456789", True) == 0xE3069283
    for piece in (data, data[cut % (len(data) + 1) :]):
        assert module.crc32c(piece) == module.crc32c(piece, True) == crc32c(piece)


class Bytes(bytes):
    pass


V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nrest"


@needs_speedups
@pytest.mark.parametrize(
    "data",
    [bytearray(V1), memoryview(V1), Bytes(V1), V1.decode(), None, 42, [V1]],
    ids=["bytearray", "memoryview", "bytes-subclass", "str", "None", "int", "list"],
)
def test_other_argument_types_are_left_to_python(data: object) -> None:
    assert not compare(data)


@needs_speedups
def test_other_calls_are_left_to_python() -> None:
    decode = c_module().decode
    assert_identical(decode(data=V1), _decode_python(V1))
    for args in [(), (V1, V1)]:
        with pytest.raises(TypeError):
            decode(*args)
    with pytest.raises(TypeError):
        decode(V1, data=V1)


@needs_speedups
def test_decoder_and_header_decoder_use_the_accelerator() -> None:
    if not decoder_module.ACCELERATED:
        pytest.skip("PROXYPROTO_NO_EXTENSIONS is set")
    assert decoder_module.decode is c_module().decode
    with spying() as calls:
        result = HeaderDecoder().feed(V1)
    assert result == _decode_python(V1)
    assert calls == []


@needs_speedups
def test_configure_checks_its_arguments() -> None:
    module = c_module()
    with pytest.raises(TypeError):
        module.configure(_decode_python, *CONFIGURATION[:-1])
    with pytest.raises(TypeError):
        module.configure(None, *CONFIGURATION)

    class WithDict(tuple[object, ...]):  # instances have a __dict__
        pass

    class Pair(NamedTuple):
        a: int
        b: int

    for bad in (dict, WithDict, int):
        with pytest.raises(TypeError):
            module.configure(_decode_python, bad, *CONFIGURATION[1:])
    module.configure(_decode_python, Pair, *CONFIGURATION[1:])  # any NamedTuple will do
    module.configure(_decode_python, *CONFIGURATION)
    with pytest.raises(TypeError):
        module.configure(_decode_python, *CONFIGURATION[:-2], (1,), TLV)
    with pytest.raises(TypeError):
        module.configure(_decode_python, *CONFIGURATION[:-1], None)
    with pytest.raises(TypeError):
        module.configure(_decode_python, *CONFIGURATION[:-1], dict)
    assert compare(V1)


@needs_speedups
def test_an_unconfigured_module_refuses_to_decode() -> None:
    """Each module object has its own state (multi-phase initialization)."""
    spec = importlib.util.find_spec("proxyproto_mw._speedups")
    assert spec is not None
    fresh: Any = importlib.util.module_from_spec(spec)
    with pytest.raises(RuntimeError, match="not configured"):
        fresh.decode(V1)  # created, not executed yet: no state at all
    assert spec.loader is not None
    spec.loader.exec_module(fresh)
    with pytest.raises(RuntimeError, match="not configured"):
        fresh.decode(V1)
    fresh.configure(_decode_python, *CONFIGURATION)
    assert_identical(fresh.decode(V1), _decode_python(V1))


# --- differential properties ----------------------------------------------------------

ipv4_texts = st.ip_addresses(v=4).map(str)
octet_texts = st.one_of(
    st.integers(0, 255).map(str),
    st.sampled_from(["00", "01", "001", "010", "256", "999", "1000", "", "-1", "0x1", "1e1"]),
)
ipv4_like = st.lists(octet_texts, min_size=3, max_size=5).map(".".join)
ipv6_addresses = st.ip_addresses(v=6)
ipv6_texts = st.one_of(
    ipv6_addresses.map(str),
    ipv6_addresses.map(lambda address: address.exploded),
    ipv6_addresses.map(lambda address: address.exploded.upper()),
    ipv6_addresses.map(lambda address: str(address).upper()),
    ipv4_texts.map(lambda text: f"::ffff:{text}"),
    ipv4_texts.map(lambda text: f"::{text}"),
    st.tuples(ipv6_addresses, ipv4_texts).map(lambda pair: f"{pair[0].exploded[:30]}{pair[1]}"),
    st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
        lambda words: ":".join(f"{word:x}" for word in words)
    ),
    # Runs of zero words where glibc's "::" shortening and IPv4 forms have their rules.
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x1234]), min_size=8, max_size=8).map(
        lambda words: ":".join(f"{word:x}" for word in words)
    ),
)
ipv6_like = st.text("0123456789abcdefABCDEF:.", max_size=46)
port_texts = st.one_of(
    st.integers(0, 0xFFFF).map(str),
    st.integers(0x10000, 10**7).map(str),
    st.integers(0, 0xFFFF).map(lambda port: f"0{port}"),
    st.sampled_from(["", "00", "-1", "+1", "1 ", "1_0", "\u0661", "65535", "65536", "99999"]),
)
separators = st.sampled_from([" "] * 12 + ["  ", "\t", "", "\x00", ".", ":"])
endings = st.sampled_from([b"\r\n"] * 8 + [b"", b"\r", b"\n", b"\r\r\n", b"\n\r", b" \r\n"])


@st.composite
def v1_lines(draw: st.DrawFn) -> bytes:
    """TCP4/TCP6 lines, mostly valid, with fields and separators that often are not."""
    protocol = draw(st.sampled_from(["TCP4", "TCP6", "TCP4", "TCP6", "tcp4", "TCP5", "UNKNOWN"]))
    # A third valid fields and separators, a third odd fields, a third odd everything.
    odd_fields, sloppy = draw(st.sampled_from([(False, False), (True, False), (True, True)]))
    if not odd_fields:
        hosts = ipv6_texts if protocol == "TCP6" else ipv4_texts
        ports = st.integers(0, 0xFFFF).map(str)
    elif protocol == "TCP6":
        hosts, ports = ipv6_texts | ipv6_like | ipv4_texts, port_texts
    else:
        hosts, ports = ipv4_texts | ipv4_like | ipv6_texts, port_texts
    fields = [draw(hosts), draw(hosts), draw(ports), draw(ports)]
    text = "PROXY " + protocol
    for field in fields:
        text += (draw(separators) if sloppy else " ") + field
    ending = draw(endings) if sloppy else b"\r\n"
    return text.encode("utf-8") + ending + draw(st.binary(max_size=12))


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    """v2 PROXY INET/INET6 STREAM headers, some of their bytes replaced at random."""
    family = draw(st.sampled_from([4, 6]))
    hosts = ipv4_texts if family == 4 else ipv6_addresses.map(str)
    ports = st.integers(0, 0xFFFF)
    data = bytearray(encode_v2((draw(hosts), draw(ports)), (draw(hosts), draw(ports))))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data) + draw(st.binary(max_size=8))


tlv_records: st.SearchStrategy[tuple[int, bytes]] = st.one_of(
    st.tuples(st.integers(0, 255), st.binary(max_size=24)),
    st.tuples(
        st.sampled_from([1, 2, 3, 4, 5, 0x20, 0x30, 0xE0, 0xEA, 0xEE]), st.binary(max_size=12)
    ),
    st.tuples(st.just(2), st.text(max_size=8).map(str.encode)),
    st.tuples(st.just(5), st.binary(min_size=120, max_size=130)),
    st.builds(
        ssl_tlv,
        client=st.integers(0, 7),
        verify=st.integers(0, 3),
        version=st.none() | st.just("TLSv1.3"),
        common_name=st.none() | st.text(max_size=6),
        client_certificate=st.none() | st.binary(max_size=8),
    ).map(lambda record: (record.type, record.value)),
)


@st.composite
def v2_tlv_headers(draw: st.DrawFn) -> bytes:
    """v2 INET/INET6 STREAM headers with random TLV sequences, often with a CRC32C
    (correct, where ever it is), sometimes with a byte replaced or the length changed."""
    family = draw(st.sampled_from([4, 6]))
    hosts = ipv4_texts if family == 4 else ipv6_addresses.map(str)
    ports = st.integers(0, 0xFFFF)
    records = draw(st.lists(tlv_records, max_size=7))
    checksum_at = draw(st.none() | st.integers(0, len(records)))
    if checksum_at is not None:
        records.insert(checksum_at, (TLVType.CRC32C, bytes(4)))
    data = bytearray(encode_v2((draw(hosts), draw(ports)), (draw(hosts), draw(ports))))
    block_end = len(data)
    for kind, value in records:
        data += encode_tlv(kind, value)
    data[14:16] = (len(data) - 16).to_bytes(2, "big")
    if checksum_at is not None:
        at = block_end + 3 + sum(3 + len(value) for _, value in records[:checksum_at])
        data[at : at + 4] = crc32c(bytes(data)).to_bytes(4, "big")
    change = draw(st.sampled_from(["none"] * 6 + ["byte", "length"]))
    if change == "byte":
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif change == "length":
        data[14:16] = draw(st.integers(0, len(data) + 8 - 16)).to_bytes(2, "big")
    return bytes(data) + draw(st.binary(max_size=8))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes replaced, inserted, deleted, or cut short."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if operation == "insert":
            data.insert(at, draw(st.sampled_from(b" \t\r\n\x00.:0f9") | st.integers(0, 255)))
        elif operation == "truncate":
            del data[at:]
        elif at < len(data):
            if operation == "replace":
                data[at] = draw(st.integers(0, 255))
            else:
                del data[at]
    return bytes(data)


IPV4_EDGES = [
    "0.0.0.0",
    "255.255.255.255",
    "256.0.0.0",
    "1.2.3.256",
    "1.2.3",
    "1.2.3.4.5",
    "1..2.3",
    ".1.2.3",
    "1.2.3.",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3.0",
    "1.2.3.00",
    "1.2.3.2555",
    "1.2.3.0255",
    "300.1.1.1",
    "1.2.3.4",
    "9.99.199.249",
    "1.2.3.4..",
    "....",
    "1.2.3.1000",
]


@needs_speedups
@pytest.mark.parametrize("address", IPV4_EDGES)
def test_v1_ipv4_edges_decode_alike(address: str) -> None:
    """The C check of dotted quads accepts exactly what glibc's inet_pton does."""
    compare(f"PROXY TCP4 {address} 10.0.0.1 1 2\r\n".encode())
    compare(f"PROXY TCP4 10.0.0.1 {address} 1 2\r\n".encode())


@needs_speedups
@SETTINGS
@given(v1_lines())
@example(b"PROXY TCP6 ::1 ::ffff:1.2.3.4 1 2\r\n")
@example(b"PROXY TCP6 ::0.0.0.2 1::2:0:0:0:3 1 2\r\n")
def test_v1_lines_decode_alike(data: bytes) -> None:
    compare(data)


@needs_speedups
@settings(SETTINGS, max_examples=300)
@given(v1_lines())
def test_v1_lines_cut_anywhere_decode_alike(data: bytes) -> None:
    compare_prefixes(data)


@needs_speedups
@SETTINGS
@given(v2_headers())
def test_v2_headers_decode_alike(data: bytes) -> None:
    compare(data)


@needs_speedups
@settings(SETTINGS, max_examples=300)
@given(v2_headers())
def test_v2_headers_cut_anywhere_decode_alike(data: bytes) -> None:
    compare_prefixes(data)


@needs_speedups
@SETTINGS
@given(v2_tlv_headers())
def test_v2_tlv_sequences_decode_alike(data: bytes) -> None:
    compare(data)


@needs_speedups
@settings(SETTINGS, max_examples=200)
@given(v2_tlv_headers())
def test_v2_tlv_sequences_cut_anywhere_decode_alike(data: bytes) -> None:
    compare_prefixes(data)


@needs_speedups
@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=120),
        st.binary(max_size=110).map(lambda data: b"PROXY TCP4 " + data),
        st.binary(max_size=110).map(lambda data: b"PROXY TCP6 " + data),
        st.binary(max_size=60).map(lambda data: SIGNATURE + data),
        mutated(v1_lines()),
        mutated(v2_headers()),
        mutated(v2_tlv_headers()),
    )
)
def test_random_and_mutated_bytes_decode_alike(data: bytes) -> None:
    compare(data)


@needs_speedups
@SETTINGS
@given(st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8), st.booleans())
def test_ipv6_text_is_glibc_text(words: list[int], zeros: bool) -> None:
    """The C text of any INET6 address, v1 or v2, is socket.inet_ntop's."""
    if zeros:  # the "::" and embedded-IPv4 rules need runs of zero words
        words = [word if word % 3 else 0 for word in words]
    packed = b"".join(word.to_bytes(2, "big") for word in words)
    text = socket.inet_ntop(socket.AF_INET6, packed)
    assert ipaddress.IPv6Address(text).packed == packed
    v2 = SIGNATURE + b"\x21\x21\x00\x24" + packed + packed + b"\x00\x01\x00\x02"
    assert compare(v2)
    line = f"PROXY TCP6 {ipaddress.IPv6Address(packed).exploded} {text} 1 2\r\n".encode()
    assert compare(line)
    assert c_module().decode(line).header.source == (text, 1)


# --- references and memory ------------------------------------------------------------

LEAK_INPUTS = [
    b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\nGET / HTTP/1.1\r\n",
    b"PROXY TCP6 2001:db8::22 2001:db8:1::7 35646 443\r\n",
    encode_v2(("198.51.100.22", 35646), ("203.0.113.7", 80)),
    encode_v2(("2001:db8::22", 35646), ("2001:db8:1::7", 443)) + b"x",
    encode_v2(*INET4, tlvs=[*HAPROXY_TLVS, (TLVType.AUTHORITY, "bücher".encode())], checksum=True),
]
FALLBACK_INPUTS = [
    b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80",  # NEED_DATA
    b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 65536\r\n",  # InvalidHeader
    b"GET / HTTP/1.1\r\n",  # NotAHeader
    encode_v2(*INET4, tlvs=[(TLVType.AUTHORITY, b"caf\xe9")]),  # not UTF-8
    encode_v2(*INET4, tlvs=[(TLVType.CRC32C, bytes(4))]),  # ChecksumMismatch
]


def decode_many(decode: Callable[[bytes], object], rounds: int) -> None:
    for round_number in range(rounds):
        for data in LEAK_INPUTS:
            decode(data)
        if round_number % 10 == 0:  # the fallback path (slower), a tenth as often
            for data in FALLBACK_INPUTS:
                with suppress(ProxyProtocolError):
                    decode(data)


@needs_speedups
def test_no_references_or_memory_leak() -> None:
    decode = c_module().decode
    watched: list[object] = [
        *CONFIGURATION,
        _decode_python,
        *LEAK_INPUTS,
        *FALLBACK_INPUTS,
    ]
    decode_many(decode, 1000)  # warm up caches and free lists
    left = growth(lambda: decode_many(decode, 25_000), watched)  # 100k fast, 7.5k fallback
    assert left.references == [0] * len(watched)
    assert left.objects < 100
    assert left.traced_bytes < 64 * 1024  # a leaked result per call would be megabytes
