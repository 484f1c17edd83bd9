"""The rejection log: each distinct peer and reason in full, a flood as a line of counts.

The unit tests drive :class:`~proxyproto_mw.rejections.RejectionLog` with a clock the test
advances, so that windows end exactly where the test says; the log lines go through a real
:mod:`logging` handler. The end-to-end test floods a werkzeug server (a subprocess) with
bad headers from two loopback peers and weighs its log.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyproto_mw import InvalidHeader, MissingHeader, UntrustedHeader, encode_v1
from proxyproto_mw.rejections import BUDGET, BURST, MAX_TRACKED, SUMMARIES, WINDOW, RejectionLog
from tests.clients import CLIENT, DESTINATION, WARNING, open_from, request
from tests.servers import AppServer
from tests.test_werkzeug import Werkzeug

PLAIN_UVICORN_BYTES = 41
"""What plain uvicorn writes per invalid HTTP request (``WARNING:  Invalid HTTP request
received.`` and its newline): the budget per rejected connection under a flood."""


class Clock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[tuple[RejectionLog, Clock, io.StringIO]]:
    """A rejection log on its own logger, writing to a string; its clock."""
    stream = io.StringIO()
    logger = logging.getLogger(f"proxyproto_mw.test.{id(stream)}")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    clock = Clock()
    try:
        yield RejectionLog(logger, clock=clock), clock, stream
    finally:
        logger.removeHandler(handler)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_distinct_peers_and_reasons_are_each_written_in_full(
    logged: tuple[RejectionLog, Clock, io.StringIO],
) -> None:
    log, _, stream = logged
    for host in ("10.0.0.1", "10.0.0.2"):
        for error in (InvalidHeader("bad port"), MissingHeader("no header"), UntrustedHeader("x")):
            log.reject(f"{host}:1234", host, type(error).__name__, error)
    assert lines_of(stream) == [
        f"closing connection from {host}:1234: {reason}"
        for host in ("10.0.0.1", "10.0.0.2")
        for reason in ("bad port", "no header", "x")
    ]


def test_a_flood_from_one_peer_is_counted_then_summed_up(
    logged: tuple[RejectionLog, Clock, io.StringIO],
) -> None:
    log, clock, stream = logged
    for number in range(5000):
        log.reject(f"10.0.0.1:{number}", "10.0.0.1", "InvalidHeader", "bad port")
    lines = lines_of(stream)
    assert len(lines) == BURST
    assert lines[-1].endswith(f"(more such lines within {WINDOW:g} s are counted, not written)")
    clock.now += WINDOW
    log.reject("10.0.0.1:1", "10.0.0.1", "InvalidHeader", "bad port")
    lines = lines_of(stream)
    assert lines[BURST:] == [
        f"suppressed {5000 - BURST} more rejections from 10.0.0.1 (InvalidHeader) "
        f"in the last {WINDOW:.0f} s",
        # The flood goes on in the next window: one full line, then counts.
        "closing connection from 10.0.0.1:1: bad port (more such lines within 10 s are "
        "counted, not written)",
    ]
    for number in range(999):
        log.reject(f"10.0.0.1:{number}", "10.0.0.1", "InvalidHeader", "bad port")
    clock.now += WINDOW
    log.reject("10.0.0.1:2", "10.0.0.1", "InvalidHeader", "bad port")
    assert lines_of(stream)[BURST + 2 :] == [
        "suppressed 999 more rejections from 10.0.0.1 (InvalidHeader) in the last 10 s",
        "closing connection from 10.0.0.1:2: bad port (more such lines within 10 s are "
        "counted, not written)",
    ]


def test_after_a_quiet_window_a_peer_gets_its_first_lines_again(
    logged: tuple[RejectionLog, Clock, io.StringIO],
) -> None:
    log, clock, stream = logged
    for _ in range(BURST + 5):
        log.reject("10.0.0.1:1", "10.0.0.1", "MissingHeader", "no PROXY header")
    clock.now += 3 * WINDOW  # a window without a rejection in between
    for _ in range(BURST):
        log.reject("10.0.0.1:1", "10.0.0.1", "MissingHeader", "no PROXY header")
    lines = lines_of(stream)
    assert lines[BURST] == (
        "suppressed 5 more rejections from 10.0.0.1 (MissingHeader) in the last 30 s"
    )
    assert len(lines) == 2 * BURST + 1


def test_flush_writes_the_counts_of_the_window(
    logged: tuple[RejectionLog, Clock, io.StringIO],
) -> None:
    log, clock, stream = logged
    for _ in range(BURST + 7):
        log.reject("10.0.0.1:1", "10.0.0.1", "HeaderTimeout", "no complete PROXY header")
    clock.now += 3
    log.flush()
    assert lines_of(stream)[-1] == (
        "suppressed 7 more rejections from 10.0.0.1 (HeaderTimeout) in the last 3 s"
    )
    log.flush()  # nothing more to say
    assert len(lines_of(stream)) == BURST + 1


def test_a_spray_from_many_peers_stays_within_the_budget(
    logged: tuple[RejectionLog, Clock, io.StringIO],
) -> None:
    """Peers beyond the table are summed, not tracked; full lines stop at the budget."""
    log, clock, stream = logged
    peers = MAX_TRACKED * 3
    for number in range(peers):
        host = f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}"
        for _ in range(2):
            log.reject(f"{host}:1", host, "UntrustedHeader", "not trusted")
    assert len(log._per_key) <= MAX_TRACKED
    clock.now += WINDOW
    log.flush()
    lines = lines_of(stream)
    full = [line for line in lines if line.startswith("closing connection")]
    summaries = [line for line in lines if line.startswith("suppressed")]
    assert len(full) == BUDGET
    assert len(summaries) == SUMMARIES + 1
    counted = sum(int(line.split()[1]) for line in summaries)
    assert counted == 2 * peers - BUDGET
    assert re.fullmatch(
        r"suppressed \d+ more rejections from at least \d+ other peers and reasons in the "
        r"last 10 s",
        summaries[-1],
    ), summaries[-1]


def test_threads_lose_no_count(logged: tuple[RejectionLog, Clock, io.StringIO]) -> None:
    log, _, stream = logged

    def flood() -> None:
        for _ in range(2000):
            log.reject("10.0.0.1:1", "10.0.0.1", "InvalidHeader", "bad")

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    log.flush()
    lines = lines_of(stream)
    assert len(lines) == BURST + 1
    assert lines[-1].startswith(f"suppressed {8 * 2000 - BURST} more rejections from 10.0.0.1 ")


# --- end to end: a flooded werkzeug server -----------------------------------------------


def _flood(server: AppServer, source: str, payload: bytes, count: int) -> None:
    """``count`` connections from ``source``, each sending ``payload``, one after another;
    each waits for the server to close it."""
    for _ in range(count):
        with open_from(source, server.address) as sock:
            sock.sendall(payload)
            try:
                while sock.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass


@pytest.mark.timeout(120)
def test_a_flooded_server_writes_less_than_plain_uvicorn(tmp_path: Path) -> None:
    """Three peers, each refused for its own reason 600 times: every peer and reason has
    its line in full, every rejection is written or counted, and the log holds at most
    41 bytes per rejected connection (plain uvicorn's line per invalid request)."""
    env = {"PROXYPROTO_TRUSTED": "127.0.0.1,127.0.0.2", "PROXYPROTO_TIMEOUT": "3"}
    floods = {
        "127.0.0.1": b"PROXY TCP4 198.51.100.022 203.0.113.7 1 2\r\n" + request(),
        "127.0.0.2": request(),
        "127.0.0.3": encode_v1(CLIENT, DESTINATION) + request(),
    }
    count = 600
    with Werkzeug(tmp_path, env=env) as server:
        mark = server.mark()
        threads = [
            threading.Thread(target=_flood, args=(server, source, payload, count))
            for source, payload in floods.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
        # The counts of a window are written with the first rejection after it.
        time.sleep(WINDOW)
        _flood(server, "127.0.0.1", floods["127.0.0.1"], 1)
        mark.wait_for("^suppressed ", count=len(floods))
        text = mark.text()
    rejected = count * len(floods) + 1
    ours = [line for line in text.splitlines() if line.startswith((WARNING, "suppressed "))]
    warnings = [line for line in ours if line.startswith(WARNING)]
    for source, reason in (
        ("127.0.0.1", "invalid IPv4 address"),
        ("127.0.0.2", "no PROXY header from trusted peer"),
        ("127.0.0.3", "not trusted"),
    ):
        assert [line for line in warnings if f" {source}:" in line and reason in line], reason
    summed = sum(int(line.split()[1]) for line in ours if line.startswith("suppressed"))
    assert len(warnings) + summed == rejected, ours
    logged_bytes = sum(len(line) + 1 for line in ours)
    assert logged_bytes <= PLAIN_UVICORN_BYTES * rejected, (logged_bytes, rejected)
