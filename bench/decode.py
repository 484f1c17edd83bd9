"""Decode speed: ``proxyproto_mw.decode`` against ``proxy-protocol`` 0.11.3, same bytes, same run.

Run ``python bench/decode.py`` (about 20-30 s), ``--quick`` (a few seconds) for a smoke
run, ``--markdown PATH`` to also write the table and its footnotes as Markdown, ``--pure``
to time the pure-Python decoder even where the C accelerator is built.
Each cell is the best (minimum) of many ``timeit`` repeats, divided by the calls per
repeat; the repeats of the two libraries alternate so that drift hits both alike.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import proxyprotocol.checksum
from crc32c import crc32c
from proxyprotocol import ProxyProtocolChecksumError
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import ProxyResult

import proxyproto_mw
from proxyproto_mw import (
    ChecksumMismatch,
    Decoded,
    NeedData,
    TLVType,
    encode_v1,
    encode_v2,
    ssl_tlv,
)
from proxyproto_mw.decoder import ACCELERATED, _decode_python, decode

Decode = Callable[[bytes], Decoded | NeedData]

THEIRS_VERSION = version("proxy-protocol")
THEIRS = f"proxy-protocol {THEIRS_VERSION}"
OURS = f"proxyproto-mw {proxyproto_mw.__version__}"

SOURCE4 = ("198.51.100.22", 35646)
DESTINATION4 = ("203.0.113.7", 80)
SOURCE6 = ("2001:db8::22", 35646)
DESTINATION6 = ("2001:db8:1::7", 443)
V1_TCP4 = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\n"

# The TLVs that HAProxy (``send-proxy-v2-ssl``, ``proxy-v2-options``) and AWS NLB put
# after the addresses. The CRC32C value is filled in by _v2_with_crc32c.
CRC32C = (TLVType.CRC32C, b"\x00\x00\x00\x00")
ALPN = (TLVType.ALPN, b"h2")
AUTHORITY = (TLVType.AUTHORITY, b"api.example.com")
UNIQUE_ID = (TLVType.UNIQUE_ID, b"CB007107:8B3E_CB007107:01BB_6745A1F2_0001:2A3B")
SSL: tuple[int, bytes] = ssl_tlv(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
AWS_VPCE = (TLVType.AWS, b"\x01vpce-0123456789abcdef0")
NOOP = (TLVType.NOOP, b"\x00" * 5)
# HAProxy's make_proxy_line_v2 writes CRC32C first, then ALPN, AUTHORITY, UNIQUE_ID, SSL;
# the AWS VPC endpoint TLV and NOOP padding follow.
HAPROXY_ORDER: list[tuple[int, bytes]] = [CRC32C, ALPN, AUTHORITY, UNIQUE_ID, SSL, AWS_VPCE, NOOP]
TYPE_ORDER = sorted(HAPROXY_ORDER, key=lambda tlv: tlv[0])


def _v2_with_crc32c(tlvs: list[tuple[int, bytes]]) -> bytes:
    """A v2 TCP4 header whose TLVs are ``tlvs`` in this order, its CRC32C TLV filled in."""
    header = encode_v2(SOURCE4, DESTINATION4, tlvs=tlvs)
    offset = 16 + 12  # signature, version, family, length; then the INET address block
    for kind, value in tlvs:
        if kind == TLVType.CRC32C:
            break
        offset += 3 + len(value)
    value_at = offset + 3
    checksum = crc32c(header).to_bytes(4, "big")  # computed with the value still zero
    return header[:value_at] + checksum + header[value_at + 4 :]


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    source: tuple[str, int]


CASES = [
    Case("v1 TCP4", encode_v1(SOURCE4, DESTINATION4), SOURCE4),
    Case("v1 TCP6", encode_v1(SOURCE6, DESTINATION6), SOURCE6),
    Case("v2 TCP4", encode_v2(SOURCE4, DESTINATION4), SOURCE4),
    Case("v2 TCP6", encode_v2(SOURCE6, DESTINATION6), SOURCE6),
    Case("v2 TCP4 + 7 TLVs [1], type order", _v2_with_crc32c(TYPE_ORDER), SOURCE4),
    Case("v2 TCP4 + 7 TLVs [1], HAProxy order [2]", _v2_with_crc32c(HAPROXY_ORDER), SOURCE4),
]


_DETECT = ProxyProtocolDetect()
their_unpack: Callable[[bytes], ProxyResult] = _DETECT.unpack


def _their_source(result: ProxyResult) -> tuple[str, int]:
    source = result.source
    if source is None or not isinstance(source[1], int):
        raise AssertionError(f"{THEIRS} decoded no IP source address: {result!r}")
    return str(source[0]), source[1]


def check(case: Case, decode: Decode) -> bool:
    """Check both decode ``case.data`` to its source address; False if theirs rejects it.

    proxy-protocol may reject a valid header with a CRC32C (footnote [2]); that row is
    then timed for proxyproto-mw only. Any other disagreement stops the benchmark.
    """
    ours = decode(case.data)
    if not isinstance(ours, Decoded) or ours.rest or ours.header.source != case.source:
        raise AssertionError(f"{case.name}: proxyproto-mw decoded {ours!r}")
    try:
        result = their_unpack(case.data)
    except ProxyProtocolChecksumError:
        return False
    theirs = _their_source(result)
    if theirs != case.source:
        raise AssertionError(f"{case.name}: {THEIRS} decoded source {theirs!r}")
    return True


def crc32c_checked(decode: Decode) -> tuple[bool, bool]:
    """Whether each library rejects the TLV header with one bit of its UNIQUE_ID flipped."""
    data = bytearray(_v2_with_crc32c(TYPE_ORDER))
    data[data.index(UNIQUE_ID[1]) + 3] ^= 0x01
    corrupt = bytes(data)
    try:
        decode(corrupt)
        ours = False
    except ChecksumMismatch:
        ours = True
    try:
        their_unpack(corrupt)
        theirs = False
    except ProxyProtocolChecksumError:
        theirs = True
    return ours, theirs


def _calls_per_repeat(timer: timeit.Timer, seconds: float) -> int:
    """How many calls make one repeat last about ``seconds``."""
    calls = 100
    while True:
        elapsed = timer.timeit(calls)
        if elapsed >= 0.005:
            return max(1, round(calls * seconds / elapsed))
        calls *= 10


def best_per_call(timers: list[timeit.Timer], repeats: int, seconds: float) -> list[float]:
    """Best time of one call (seconds) for each timer, repeats alternating between them."""
    calls = [_calls_per_repeat(timer, seconds) for timer in timers]
    best = [float("inf")] * len(timers)
    for _ in range(repeats):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(calls[i]) / calls[i])
    return best


@dataclass(frozen=True)
class Row:
    name: str
    size: int
    ours: float
    theirs: float | None


def run(cases: list[tuple[Case, bool]], repeats: int, seconds: float, decode: Decode) -> list[Row]:
    """Time each case; proxy-protocol only where it accepts the header."""
    rows = []
    for case, theirs_accepts in cases:
        timers = [timeit.Timer("decode(data)", globals={"decode": decode, "data": case.data})]
        if theirs_accepts:
            timers.append(
                timeit.Timer("unpack(data)", globals={"unpack": their_unpack, "data": case.data})
            )
        best = best_per_call(timers, repeats, seconds)
        rows.append(Row(case.name, len(case.data), best[0], best[1] if len(best) > 1 else None))
    return rows


HEADINGS = ("input", "bytes", f"{OURS} (µs per header)", f"{THEIRS} (µs)", "speed-up")


def cells(row: Row) -> tuple[str, str, str, str, str]:
    if row.theirs is None:
        return (row.name, str(row.size), f"{row.ours * 1e6:.2f}", "rejects it [2]", "-")
    return (
        row.name,
        str(row.size),
        f"{row.ours * 1e6:.2f}",
        f"{row.theirs * 1e6:.2f}",
        f"{row.theirs / row.ours:.1f}x",
    )


def text_table(rows: list[Row]) -> str:
    table = [HEADINGS, *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADINGS))]

    def line(values: tuple[str, ...]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join(
            [first, *(v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))]
        )

    return "\n".join(
        [line(HEADINGS), "  ".join("-" * w for w in widths)]
        + [line(values) for values in table[1:]]
    )


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADINGS) + " |", "|---|--:|--:|--:|--:|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for entry in cpuinfo:
                key, _, value = entry.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def implementation(pure: bool) -> str:
    """Which decoder is timed, as the header line says it."""
    if pure:
        return f"pure Python (--pure; ACCELERATED = {ACCELERATED})"
    if ACCELERATED:
        return "C accelerator (ACCELERATED = True)"
    return (
        "pure Python (ACCELERATED = False: the C accelerator is not built, "
        "or PROXYPROTO_NO_EXTENSIONS is set)"
    )


def environment(pure: bool) -> list[str]:
    return [
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"Python: {platform.python_implementation()} {platform.python_version()} "
        f"({platform.system()} {platform.machine()})",
        f"CPU: {cpu_model()}",
        f"{OURS} decoder timed: {implementation(pure)}",
    ]


def footnotes(repeats: int, ours_crc: bool, theirs_crc: bool, rejected: bool) -> list[str]:
    active = proxyprotocol.checksum.crc32c is not None
    return [
        f"Best of {repeats} timeit repeats, per call; speed-up = {THEIRS} time / ours. "
        f"Both get the same bytes, exactly one header; {THEIRS} is called as "
        "`ProxyProtocolDetect().unpack(data)`, the version-detecting entry point its README "
        "recommends (what its `ProxyProtocolReader` calls). Before timing, both libraries were "
        "checked to decode the same source address from every input.",
        "[1] v2 TLVs: ALPN h2, AUTHORITY, CRC32C, NOOP padding (5 bytes), UNIQUE_ID (46 bytes), "
        "SSL with version and cipher sub-TLVs, AWS VPC endpoint id (0xEA).",
        "[2] CRC32C: proxyproto-mw verifies it over the bytes received "
        f"(a flipped bit is rejected: {'yes' if ours_crc else 'NO'}). {THEIRS} verifies it only "
        "when the optional `crc32c` module is importable "
        f"(here: {'yes' if active else 'no'}; flipped bit rejected: "
        f"{'yes' if theirs_crc else 'no'}), and over its own re-serialisation of the TLVs, "
        "sorted by type with one TLV per type, not over the received bytes: "
        + (
            "it rejects valid headers whose TLVs are not in ascending type order, such as "
            "HAProxy's (CRC32C first). So the compared TLV row has them in type order; the "
            "HAProxy-order row is timed for proxyproto-mw only. "
            if rejected
            else "here it accepted the HAProxy-order header, so it did not check its CRC32C. "
        )
        + "proxyproto-mw also checks the SSL sub-TLVs, "
        f"the AUTHORITY's UTF-8 and the UNIQUE_ID's length while decoding; {THEIRS} splits "
        "the SSL TLV only when it is read, and builds ipaddress objects for the addresses.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write Markdown")
    parser.add_argument(
        "--pure", action="store_true", help="time the pure-Python decoder, not the C accelerator"
    )
    args = parser.parse_args(argv)
    repeats, seconds = (7, 0.01) if args.quick else (40, 0.05)
    ours: Decode = _decode_python if args.pure else decode

    if CASES[0].data != V1_TCP4:
        raise AssertionError(f"encode_v1 gave {CASES[0].data!r}")
    checked = [(case, check(case, ours)) for case in CASES]
    rejected = [case.name for case, accepted in checked if not accepted]
    if any("HAProxy order" not in name for name in rejected):
        raise AssertionError(f"{THEIRS} rejects {rejected}")
    ours_crc, theirs_crc = crc32c_checked(ours)
    if not ours_crc:
        raise AssertionError("proxyproto-mw accepted a header with a wrong CRC32C")

    rows = run(checked, repeats, seconds, ours)
    head = environment(args.pure)
    notes = footnotes(repeats, ours_crc, theirs_crc, bool(rejected))
    print("\n".join(head))
    print()
    print(text_table(rows))
    print()
    print("\n\n".join(notes))
    if args.markdown is not None:
        markdown = [
            "# PROXY header decode time",
            "",
            *(f"- {item}" for item in head),
            "",
            markdown_table(rows),
            "",
            "\n\n".join(notes),
            "",
        ]
        args.markdown.write_text("\n".join(markdown), encoding="utf-8")
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
