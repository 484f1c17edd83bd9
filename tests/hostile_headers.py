"""Hostile PROXY headers from a seeded generator, sent over real connections, and what a
server must have done with each.

:func:`hostile_attempts` builds a reproducible list of connections: valid v1 and v2
headers (TCP4, TCP6, UNKNOWN, LOCAL, TLVs, with and without CRC32C) claiming
documentation addresses (203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32), most of them
mutated (bytes flipped, cut short, lying v2 lengths, bad CRC32C, a TLV running past the
header, bad version or family bytes, overlong v1 lines, random garbage, a second header),
each followed by a valid HTTP request and sent in random pieces with small delays. A
share of them comes from an untrusted source.

:func:`judge` says what a server with ``PROXYPROTO_TRUSTED=127.0.0.1`` (mode require)
must have done, with the project's engine (:func:`proxyproto_mw.decoder.decode`) as the
oracle of what a header means: a trusted peer's bad or incomplete header closes the
connection without a byte; a good one is served with the header's client (or the
socket's for LOCAL / UNKNOWN); an untrusted peer's header closes the connection, and
nothing an untrusted peer claims ever appears in what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from proxyproto_mw import Command, TLVType, encode_v1, encode_v2
from proxyproto_mw.decoder import NEED_DATA, decode, match_signature
from proxyproto_mw.errors import ProxyProtocolError
from tests.clients import HttpReader
from tests.haproxy import Address
from tests.load_fleet import bound_socket

__all__ = [
    "TRUSTED_SOURCE",
    "UNTRUSTED_SOURCE",
    "Attempt",
    "Outcome",
    "hostile_attempts",
    "judge",
    "run_attempts",
]

TRUSTED_SOURCE = "127.0.0.1"
UNTRUSTED_SOURCE = "127.0.0.9"
READ_TIMEOUT = 10.0
"""Seconds a connection waits for the server to answer or close (header timeout 3 s)."""


@dataclass(frozen=True)
class Attempt:
    """One hostile connection: where from, what it sends, in which pieces."""

    number: int
    source: str
    kind: str
    """The header's version and mutation, e.g. ``v2-bad-crc32c``."""
    header: bytes
    """The (possibly mutated) header, as sent before the request."""
    request: bytes
    claims: tuple[str, ...]
    """The addresses the header was built to claim."""
    cuts: tuple[int, ...]
    """Offsets in the payload where it is split; a pause follows each piece."""
    pauses: tuple[float, ...]

    @property
    def payload(self) -> bytes:
        """Everything the connection sends."""
        return self.header + self.request

    def pieces(self) -> Iterator[tuple[bytes, float]]:
        """The payload's pieces, each with the pause after it."""
        payload = self.payload
        start = 0
        for cut, pause in zip((*self.cuts, len(payload)), (*self.pauses, 0.0), strict=True):
            if cut > start:
                yield payload[start:cut], pause
                start = cut


@dataclass
class Outcome:
    """What the server did with an :class:`Attempt`."""

    attempt: Attempt
    local: Address
    """The connection's own address (our socket's)."""
    received: bytes
    end: str
    """``eof``, ``reset`` or ``timeout``."""
    sent_after: float
    """Seconds from connecting until the last piece was sent."""
    ended_after: float
    """Seconds from connecting until the server closed (or the wait ended)."""


# --- the generator -----------------------------------------------------------------------


def _claimed(rng: random.Random, inet6: bool) -> Address:
    if inet6:
        host = ipaddress.ip_address(
            f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"
        )
    else:
        host = ipaddress.ip_address(
            f"{rng.choice(('203.0.113', '198.51.100'))}.{rng.randrange(1, 255)}"
        )
    return str(host), rng.randrange(1, 0x10000)


def _tlvs(rng: random.Random) -> list[tuple[int, bytes]]:
    choices: list[tuple[int, bytes]] = [
        (TLVType.ALPN, b"http/1.1"),
        (TLVType.AUTHORITY, b"app.example.com"),
        (TLVType.UNIQUE_ID, rng.randbytes(rng.randrange(1, 129))),
        (TLVType.NOOP, bytes(rng.randrange(0, 40))),
        (0xEA, b"\x01vpce-0123456789abcdef0"),
    ]
    return rng.sample(choices, rng.randrange(0, len(choices) + 1))


def _valid_header(rng: random.Random, version: int) -> tuple[bytes, tuple[str, ...], bool]:
    """A valid header, the addresses it claims, and whether it ends with a CRC32C."""
    inet6 = rng.random() < 0.3
    source, destination = _claimed(rng, inet6), _claimed(rng, inet6)
    claims = (source[0], destination[0])
    if version == 1:
        if rng.random() < 0.1:
            return encode_v1(), (), False
        return encode_v1(source, destination), claims, False
    if rng.random() < 0.1:
        return encode_v2(command=Command.LOCAL), (), False
    checksum = rng.random() < 0.5
    header = encode_v2(source, destination, tlvs=_tlvs(rng), checksum=checksum)
    return header, claims, checksum


_CHECKSUMMED = (("203.0.113.9", 40000), ("198.51.100.9", 443))
"""The addresses of the header a ``bad-crc32c`` mutation starts from when the valid header
it was given carries no CRC32C."""


def _set_length(header: bytes, length: int) -> bytes:
    return header[:14] + length.to_bytes(2, "big") + header[16:]


def _mutate(rng: random.Random, version: int, header: bytes, checksum: bool) -> tuple[str, bytes]:
    """A mutation of a valid header (``valid`` keeps it): its name and the bytes."""
    common = ["valid", "valid", "flipped", "truncated", "garbage", "signature-garbage", "doubled"]
    specific = (
        ["overlong-line", "bare-lf"]
        if version == 1
        else [
            "length-short",
            "length-long",
            "bad-crc32c",
            "tlv-overrun",
            "bad-version",
            "bad-family",
        ]
    )
    kind = rng.choice(common + specific)
    mutated = bytearray(header)
    if kind == "flipped":
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    elif kind == "truncated":
        del mutated[rng.randrange(1, len(mutated)) :]
    elif kind == "garbage":
        mutated = bytearray(rng.randbytes(rng.randrange(1, 200)))
    elif kind == "signature-garbage":
        signature = b"PROXY " if version == 1 else header[:12]
        mutated = bytearray(signature + rng.randbytes(rng.randrange(1, 200)))
    elif kind == "doubled":
        mutated += header
    elif kind == "overlong-line":
        at = rng.randrange(6, len(mutated) - 2)
        mutated[at:at] = rng.choice((b" ", b"1", b"f")) * rng.randrange(60, 300)
    elif kind == "bare-lf":
        del mutated[-2]
    elif kind == "length-short":
        mutated = bytearray(_set_length(header, rng.randrange(0, max(len(header) - 16, 1))))
    elif kind == "length-long":
        longer = rng.choice((rng.randrange(1, 64), rng.randrange(64, 0x10000 - len(header) + 16)))
        mutated = bytearray(_set_length(header, len(header) - 16 + longer))
    elif kind == "bad-crc32c":
        if not checksum:
            mutated = bytearray(encode_v2(*_CHECKSUMMED, checksum=True))
        mutated[-rng.randrange(1, 5)] ^= 1 << rng.randrange(8)
    elif kind == "tlv-overrun":
        mutated += bytes((TLVType.NOOP, 0x01, 0x00)) + bytes(rng.randrange(0, 8))
        mutated = bytearray(_set_length(bytes(mutated), len(mutated) - 16))
    elif kind == "bad-version":
        mutated[12] = rng.choice((0x00, 0x11, 0x12, 0x31, 0xF1, 0x22))
    elif kind == "bad-family":
        mutated[13] = rng.choice((0x03, 0x41, 0x51, 0xF1, 0x13, 0x14))
    return f"v{version}-{kind}", bytes(mutated)


def hostile_attempts(count: int, seed: int, *, untrusted_share: float = 1 / 3) -> list[Attempt]:
    """``count`` hostile connections, the same for the same seed."""
    rng = random.Random(seed)
    attempts = []
    for number in range(count):
        version = rng.choice((1, 2))
        valid, claims, checksum = _valid_header(rng, version)
        kind, header = _mutate(rng, version, valid, checksum)
        if kind.endswith("bad-crc32c") and not checksum:
            claims = (_CHECKSUMMED[0][0], _CHECKSUMMED[1][0])
        request = (
            f"GET /hostile/{number} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        )
        total = len(header) + len(request)
        if rng.random() < 0.05:  # the header byte by byte
            cuts = tuple(range(1, len(header) + 1))
            pauses = tuple(0.001 for _ in cuts)
        else:
            cuts = tuple(sorted(rng.sample(range(1, total), min(rng.randrange(0, 5), total - 1))))
            pauses = tuple(rng.choice((0.0, 0.0, 0.001, 0.005, 0.02)) for _ in cuts)
        source = UNTRUSTED_SOURCE if rng.random() < untrusted_share else TRUSTED_SOURCE
        attempts.append(Attempt(number, source, kind, header, request, claims, cuts, pauses))
    return attempts


# --- the oracle --------------------------------------------------------------------------


def _silent(outcome: Outcome) -> str | None:
    if outcome.received or outcome.end == "timeout":
        return (
            f"should be closed without a byte, got {outcome.end} after {outcome.received[:200]!r}"
        )
    return None


def _served(outcome: Outcome, client: Address) -> str | None:
    try:
        response = HttpReader(None, outcome.received).response()
        scope = json.loads(response.body)
    except (EOFError, ValueError, IndexError) as error:
        received = outcome.received[:300]
        return f"should be served as {client}, got {outcome.end} after {received!r} ({error})"
    if response.status != 200 or scope.get("client") != list(client):
        return f"should be served as {client}, got {response.status} {scope}"
    if scope.get("path") != f"/hostile/{outcome.attempt.number}":
        return f"answered another request: {scope}"
    return None


def _only_as_itself(outcome: Outcome) -> str | None:
    """Anything the server answered names the connection's own address as its client."""
    if not outcome.received.startswith(b"HTTP/1.1 200"):
        return None
    return _served(outcome, outcome.local)


def judge(outcome: Outcome, header_timeout: float) -> str | None:
    """What is wrong with ``outcome`` (None: the server did the right thing), for a server
    whose header timeout is ``header_timeout`` seconds."""
    attempt = outcome.attempt
    text = outcome.received.decode("latin-1")
    if attempt.source == UNTRUSTED_SOURCE:
        leaked = [claim for claim in attempt.claims if claim in text]
        if leaked:
            return f"an untrusted peer's claim {leaked} appears in {text[:300]!r}"
        if match_signature(attempt.payload) is not False:
            return _silent(outcome)
        return _only_as_itself(outcome)
    try:
        decoded = decode(attempt.payload)
    except ProxyProtocolError:
        return _silent(outcome)
    if decoded is NEED_DATA:
        return _silent(outcome)  # at the header timeout
    header = decoded.header
    client = header.source if header.source is not None else outcome.local
    if decoded.rest == attempt.request:
        if not outcome.received and outcome.sent_after >= header_timeout:
            # Sent too slowly (a busy machine, a header in many pieces): the server's clock
            # starts after ours, so it closes only a header that took us this long.
            return _silent(outcome)
        return _served(outcome, client)
    # A second header or the leftovers of a lying length reach HTTP as data: the request is
    # refused as bad HTTP or served, but never with another client than the header's.
    if outcome.received.startswith(b"HTTP/1.1 200"):
        return _served(outcome, client)
    return None


# --- the runner --------------------------------------------------------------------------


async def attempt_connection(attempt: Attempt, address: Address) -> Outcome:
    """Send ``attempt`` to ``address`` and read until the server closes (bounded)."""
    loop = asyncio.get_running_loop()
    sock = bound_socket(attempt.source)
    with sock:
        await asyncio.wait_for(loop.sock_connect(sock, address), READ_TIMEOUT)
        connected = time.monotonic()
        host, port = sock.getsockname()[:2]
        with contextlib.suppress(OSError):  # the server may close before everything is sent
            for piece, pause in attempt.pieces():
                await loop.sock_sendall(sock, piece)
                if pause:
                    await asyncio.sleep(pause)
        sent = time.monotonic()
        received = bytearray()

        async def read_to_end() -> None:
            while chunk := await loop.sock_recv(sock, 65536):
                received.extend(chunk)

        end = "eof"
        try:
            await asyncio.wait_for(read_to_end(), READ_TIMEOUT)
        except ConnectionResetError:
            end = "reset"
        except asyncio.TimeoutError:
            end = "timeout"
    ended = time.monotonic()
    return Outcome(attempt, (host, port), bytes(received), end, sent - connected, ended - connected)


async def run_attempts(
    attempts: Sequence[Attempt], address: Address, *, concurrency: int = 200
) -> list[Outcome | BaseException]:
    """Every attempt against ``address``, ``concurrency`` connections at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def bounded(attempt: Attempt) -> Outcome:
        async with gate:
            return await attempt_connection(attempt, address)

    return await asyncio.gather(*(bounded(a) for a in attempts), return_exceptions=True)
