"""Slow headers do not starve gunicorn's ThreadWorker: honest clients are served meanwhile.

``gunicorn -k proxyproto_mw.gunicorn.ThreadWorker -w 2 --threads 4``: 300 connections
from a trusted peer send a PROXY header one byte per second, as a slowloris attack does,
while 100 honest clients each send a whole header and a request. The header of a slow
connection is read in the worker's main thread as its bytes arrive, so the 8 pool threads
stay free for the honest clients: every one of them is answered within 10 s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proxyproto_mw import encode_v1
from tests.clients import CLIENT, DESTINATION, WARNING, HttpReader, open_from, request
from tests.gunicorn_server import WsgiGunicorn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SLOW = 300
HONEST = 100
WITHIN = 10.0
"""Seconds within which every honest client must have its answer (the issue's goal)."""
ATTACKER = "127.0.0.1"
BALANCER = "127.0.0.5"
HEADER = encode_v1(CLIENT, DESTINATION)


class Slowloris(threading.Thread):
    """``count`` connections from ``source``, each sent one more byte of ``HEADER`` every
    second until stopped; ``closed`` counts those the server has closed."""

    def __init__(self, address: tuple[str, int], source: str, count: int) -> None:
        super().__init__(daemon=True)
        self.sockets = [open_from(source, address) for _ in range(count)]
        self.stopped = threading.Event()
        self.closed = 0

    def run(self) -> None:
        sent = 0
        while not self.stopped.is_set() and sent < len(HEADER) - 2:  # never the CRLF
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.send(HEADER[sent : sent + 1])
            sent += 1
            self.stopped.wait(1.0)

    def count_closed(self) -> int:
        """How many of the connections the server has closed (without a byte)."""
        closed = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        return closed

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def gthread(tmp_path: Path) -> Iterator[WsgiGunicorn]:
    """``-k proxyproto_mw.gunicorn.ThreadWorker -w 2 --threads 4``, the default header
    timeout (10 s), trusting the attacker's address and the balancer's."""
    with WsgiGunicorn(tmp_path, "proxyproto_mw.gunicorn.ThreadWorker", threads=4) as server:
        yield server


def _honest(address: tuple[str, int], number: int) -> float:
    """One honest request through the balancer; the seconds it took to be answered."""
    started = time.monotonic()
    with open_from(BALANCER, address, timeout=WITHIN + 5) as sock:
        sock.sendall(HEADER + request(f"/honest{number}"))
        response = HttpReader(sock).response()
    assert response.status == 200
    assert response.json()["remote_addr"] == CLIENT[0]
    return time.monotonic() - started


def test_honest_clients_are_served_while_300_headers_trickle(gthread: WsgiGunicorn) -> None:
    slowloris = Slowloris(gthread.address, ATTACKER, SLOW)
    slowloris.start()
    try:
        time.sleep(1.5)  # every slow connection accepted and holding part of a header
        mark = gthread.mark()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=50) as pool:
            durations = list(
                pool.map(lambda number: _honest(gthread.address, number), range(HONEST))
            )
        elapsed = time.monotonic() - started
        still_open = SLOW - slowloris.count_closed()
    finally:
        slowloris.stop()
    assert len(durations) == HONEST
    assert elapsed < WITHIN, f"{HONEST} honest clients took {elapsed:.1f} s"
    assert max(durations) < WITHIN, sorted(durations)[-5:]
    # The attack was still going on: its connections were open, none refused yet.
    assert still_open == SLOW, f"only {still_open} slow connections were still open"
    assert mark.lines(WARNING) == []
    assert gthread.errors() == []
