"""Faults: a worker killed and HAProxy reloaded under WebSocket load; peers that reset.

1. 500 ``websockets`` clients, each on its own loopback source (127.0.0.2 onwards), keep
   a connection open through HAProxy (``send-proxy-v2``, health checks) to ``gunicorn -k
   proxyproto_mw.gunicorn.UvicornWorker -w 2`` and exchange a message every 0.1 to 0.3 s;
   a client whose connection drops opens a new one. Under that load one worker is killed
   (``SIGKILL``), then HAProxy is reloaded (a new process with ``-sf OLDPID``; the old one
   ends its tunnels after ``hard-stop-after 3s``); between the two, 120 peers from
   127.0.1.0/24 (trusted) go away as in 2. The user's checks: the clients of the killed
   worker, then every client, reconnect; no connection, first or reopened, ever saw
   another address than its own socket's; every echo is right; gunicorn logs no
   traceback and refuses no header; afterwards every worker, the replacement too, holds
   the descriptors of an idle worker and no server-side socket is left open.
2. Peers that reset (``SO_LINGER`` 0, then close) or close (FIN) in the middle of the
   header, right after it, and in the middle of the request (in both ASGI workers, on
   uvloop with httptools and on asyncio with h11) leave nothing behind: no
   server-side socket in any state but LISTEN and TIME_WAIT, every worker back to the
   descriptors it held before, and the workers still serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxyproto_mw import encode_v2
from tests.clients import CLIENT, DESTINATION, exchange, open_from, request
from tests.gunicorn_server import Gunicorn
from tests.haproxy import (
    STATS_SOCKET,
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_stats,
    wait_until_healthy,
)
from tests.load_fleet import (
    BACKEND,
    Fleet,
    Session,
    haproxy_for_load,
    open_descriptors,
    raise_open_files,
    reload_haproxy,
    wait_until_released,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

WARNING = "closing connection from"
CLIENTS = 500
BOUND = 30.0
"""Seconds any one phase (all connected, all reconnected) may take."""


def has_exited(pid: int) -> bool:
    """Whether process ``pid`` has ended (it is gone, or a zombie its parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def no_traceback(server: Gunicorn) -> None:
    """gunicorn logged no traceback, no error but the killed worker's, no refused header."""
    output = server.output()
    assert "Traceback" not in output, output[-5000:]
    assert server.errors() == [], server.errors()
    assert WARNING not in output, [line for line in output.splitlines() if WARNING in line]


# --- peers that reset or close mid-header, after it, mid-request ----------------------------

HEADER = encode_v2(CLIENT, DESTINATION, checksum=True)
STAGES = {
    "mid-header": HEADER[:20],
    "after-header": HEADER,
    "mid-request": HEADER + request("/half")[:25],
}
"""What each peer sends before it goes away, by the moment it goes away."""
PEERS_PER_CASE = 40
HALF_OPEN_SOURCES = tuple(f"127.0.1.{host}" for host in range(1, 21))
"""Where the peers that go away under load come from: the balancer's neighbours, trusted."""


def go_away(sock: socket.socket, reset: bool) -> None:
    """Close ``sock``: with a reset (``SO_LINGER`` 0) or a FIN."""
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_peers(
    address: tuple[str, int], sources: tuple[str, ...], per_case: int
) -> list[tuple[str, bool, socket.socket]]:
    """``per_case`` connections per stage and way of going away, from ``sources`` in turn,
    each having sent its stage's bytes: (stage, whether it will reset, the socket)."""
    peers = []
    for stage, payload in STAGES.items():
        for reset in (True, False):
            for number in range(per_case):
                sock = open_from(sources[number % len(sources)], address)
                sock.sendall(payload)
                peers.append((stage, reset, sock))
    return peers


# --- 1. a killed worker and a reloaded HAProxy under load -----------------------------------


class Churn:
    """``CLIENTS`` clients that stay connected: each reopens its connection when it drops."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.stop = asyncio.Event()
        self.drops: list[str] = []
        self._random = random.Random(3)

    async def keep_connected(self, number: int) -> None:
        """Client ``number``: connect, exchange messages, reconnect after a drop."""
        while not self.stop.is_set():
            try:
                websocket, session = await self.fleet.open(number, timeout=10)
            except Exception as error:  # refused during a reload, reset by a dying worker
                self.drops.append(f"client {number} could not open: {error!r}")
                await asyncio.sleep(0.2)
                continue
            try:
                while not self.stop.is_set():
                    await self.fleet.exchange(websocket, session, 1, timeout=10)
                    await asyncio.sleep(self._random.uniform(0.1, 0.3))
            except Exception as error:  # the worker or the old HAProxy went away
                self.drops.append(f"client {number} dropped: {error!r}")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(websocket.close(), 5)

    def latest(self) -> dict[int, Session]:
        """Each client's most recent connection."""
        latest: dict[int, Session] = {}
        for session in self.fleet.sessions:
            latest[session.number] = session
        return latest

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (at most ``BOUND`` s) until ``condition`` holds."""
        deadline = time.monotonic() + BOUND
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {BOUND} s; drops: {self.drops[-5:]}"
            await asyncio.sleep(0.1)

    def reconnected_since(self, moment: float, clients: set[int]) -> bool:
        """Whether every one of ``clients`` has opened a connection after ``moment``."""
        fresh = {s.number for s in self.fleet.sessions if s.opened > moment}
        return clients <= fresh


@pytest.mark.timeout(150)
@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
def test_killed_worker_and_reloaded_haproxy_under_load(tmp_path: Path) -> None:
    if raise_open_files(20_000) < 4 * CLIENTS:
        pytest.skip(f"RLIMIT_NOFILE cannot be raised to {4 * CLIENTS}")
    # HAProxy at 127.0.0.1 and the peers that go away from 127.0.1.0/24 are trusted; a
    # header timeout of 120 s leaves the peers' going away as the only thing that frees them.
    server = Gunicorn(
        tmp_path,
        proxy_protocol=("--proxy-protocol", "v2"),
        allow_from="127.0.0.1,127.0.1.0/24",
        env={"PROXYPROTO_TIMEOUT": "120"},
    )
    frontend_port = free_port()
    config = haproxy_for_load(tmp_path, frontend_port, server.port)
    stats_socket = tmp_path / STATS_SOCKET
    with contextlib.ExitStack() as stack, server, HAProxy(config, tmp_path) as first:
        wait_until_healthy(stats_socket, [BACKEND], timeout=15)
        (idle,) = {open_descriptors(pid) for pid in server.worker_pids()}
        churn = Churn(Fleet(("127.0.0.1", frontend_port)))
        everyone = set(range(CLIENTS))
        events: dict[str, object] = {}

        async def run() -> None:
            tasks = [asyncio.create_task(churn.keep_connected(n)) for n in everyone]
            try:
                await churn.until(lambda: set(churn.latest()) == everyone, "all connected")
                # Kill the worker that holds the most connections.
                latest = churn.latest().values()
                workers = [session.worker for session in latest]
                victim = max(set(workers), key=workers.count)
                on_victim = {s.number for s in latest if s.worker == victim}
                killed = events["killed"] = time.monotonic()
                events["replaced"] = await asyncio.to_thread(server.kill_worker, victim)
                events["victim"], events["on_victim"] = victim, on_victim
                await churn.until(
                    lambda: churn.reconnected_since(killed, on_victim),
                    f"the {len(on_victim)} clients of the killed worker reconnected",
                )
                # Peers that reset or close mid-header, after it, mid-request, under load.
                peers = await asyncio.to_thread(
                    open_peers, server.address, HALF_OPEN_SOURCES, PEERS_PER_CASE // 2
                )
                events["peers"] = len(peers)
                await asyncio.sleep(0.5)
                for _, reset, sock in peers:
                    go_away(sock, reset)
                # Reload HAProxy: the old process ends its tunnels after 3 s. A connection
                # opened once the reload began goes through the new process (the old one no
                # longer listens); a client may reconnect before this loop sees the old
                # process gone, so that is not the moment to count from.
                reloading = time.monotonic()
                second = await asyncio.to_thread(reload_haproxy, first, tmp_path / "reload")
                stack.callback(second.stop)
                await churn.until(lambda: has_exited(first.pid), "the old HAProxy exited")
                await churn.until(
                    lambda: churn.reconnected_since(reloading, everyone),
                    "every client reconnected after the reload",
                )
                await asyncio.to_thread(wait_until_healthy, stats_socket, [BACKEND], 15)
                await asyncio.sleep(1)  # messages keep flowing on the new connections
            finally:
                churn.stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)

        asyncio.run(asyncio.wait_for(run(), 130))
        health = haproxy_stats(stats_socket)[(BACKEND, "app")]
        # Nothing is left of the peers that went away, nor of any client's connection:
        # every worker, the replacement too, holds what an idle worker holds.
        wait_until_released(server, idle)

    sessions = churn.fleet.sessions
    print(
        f"\n{len(sessions)} connections opened by {CLIENTS} clients, "
        f"{len(events['on_victim'])} on the killed worker, {len(churn.drops)} drops; "  # type: ignore[arg-type]
        f"{events['peers']} peers went away under load"
    )
    # No connection, first or reopened, ever saw another address than its own socket's.
    assert churn.fleet.misaddressed() == [], churn.fleet.misaddressed()[:10]
    assert [s for s in sessions if s.wrong] == []
    # Reconnections happened: the killed worker's clients, then everyone after the reload.
    assert len(sessions) >= 2 * CLIENTS + len(events["on_victim"])  # type: ignore[arg-type]
    assert all(s.echoed >= 1 for s in churn.latest().values())
    replaced = events["replaced"]
    assert isinstance(replaced, set)
    # After the kill, no connection reached the dead worker.
    killed = events["killed"]
    assert isinstance(killed, float)
    assert events["victim"] not in {s.worker for s in sessions if s.opened > killed}
    assert {s.worker for s in churn.latest().values()} <= replaced
    assert health["status"] == "UP", health
    no_traceback(server)


# --- 2. peers that go away, on an idle server ----------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker", ["UvicornWorker", "UvicornH11Worker"])
def test_peers_that_go_away_leave_nothing_half_open(tmp_path: Path, worker: str) -> None:
    # A header timeout far longer than the wait below: only the peer's going away can be
    # what frees each connection.
    server = Gunicorn(
        tmp_path,
        worker=worker,
        proxy_protocol=("--proxy-protocol", "v2"),
        allow_from="127.0.0.1",
        env={"PROXYPROTO_TIMEOUT": "120"},
    )
    with server:
        workers = server.worker_pids()
        # One request per worker first, so that each holds what it keeps between requests.
        for _ in range(20):
            response, _ = exchange(server.address, "127.0.0.1", HEADER + request("/warm"))
            assert response.status == 200
        time.sleep(0.5)
        baseline = {pid: open_descriptors(pid) for pid in workers}
        peers = open_peers(server.address, ("127.0.0.1",), PEERS_PER_CASE)
        # Every peer's connection is held by a worker before any goes away.
        deadline = time.monotonic() + 10
        while (
            held := sum(open_descriptors(pid) for pid in workers) - sum(baseline.values())
        ) < len(peers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held == len(peers), f"the workers hold {held} of {len(peers)} connections"
        time.sleep(0.3)  # and has read what each sent
        for _, reset, sock in peers:
            go_away(sock, reset)

        (idle,) = set(baseline.values())
        wait_until_released(server, idle)
        # The workers still serve, and are the same workers.
        response, _ = exchange(server.address, "127.0.0.1", HEADER + request())
        assert response.status == 200
        assert response.json()["client"] == list(CLIENT)
        assert server.worker_pids() == workers
    output = server.output()
    assert "Traceback" not in output, output[-5000:]
    assert server.errors() == [], server.errors()
