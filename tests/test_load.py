"""Load: 2,000 WebSockets open at once through HAProxy to gunicorn with this project's workers.

``gunicorn -k proxyproto_mw.gunicorn.UvicornWorker -w 2 --proxy-protocol v2
--proxy-allow-from 127.0.0.1`` serves :mod:`tests.gunicorn_server` behind HAProxy
(``send-proxy-v2`` with a CRC32C, HTTP health checks every 500 ms). 2,000 ``websockets``
clients connect from 249 loopback sources (127.0.0.2 to 127.0.0.250, round robin, Linux's
ephemeral ports on each), all open at the same time, then each sends twenty messages (text
and binary in turn, each unique) and checks every echo. The user's checks: every
connection's app saw exactly the socket it came from (source and port) and the frontend
it reached, every message came back, once, in order, unchanged; both workers served; no
worker died, no health check failed, nothing was logged as an error or a refused header;
once the clients closed, the workers hold the descriptors they held before.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

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
    LOAD_SOURCES,
    Fleet,
    Session,
    close_all,
    haproxy_for_load,
    open_descriptors,
    raise_open_files,
    wait_until_released,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it"),
]

CONNECTIONS = 2000
MESSAGES = 20
WARNING = "closing connection from"


async def _load(fleet: Fleet, stats_socket: Path) -> tuple[list[str], int, int]:
    """Open every connection, hold them all, exchange the messages, close: the failures,
    and HAProxy's current sessions on the frontend and to the server while all were open."""
    opened = await asyncio.gather(
        *(fleet.open(number) for number in range(CONNECTIONS)), return_exceptions=True
    )
    connections: list[tuple[ClientConnection, Session]] = []
    failures: list[str] = []
    for number, outcome in enumerate(opened):
        if isinstance(outcome, BaseException):
            failures.append(f"client {number} did not open: {outcome!r}")
        else:
            connections.append(outcome)
    try:
        stats = await asyncio.to_thread(haproxy_stats, stats_socket)
        frontend = int(stats[("ws", "FRONTEND")]["scur"])
        server = int(stats[(BACKEND, "app")]["scur"])
        exchanged = await asyncio.gather(
            *(fleet.exchange(websocket, session, MESSAGES) for websocket, session in connections),
            return_exceptions=True,
        )
        failures += [
            f"client {session.number} failed in the exchange: {outcome!r}"
            for (_, session), outcome in zip(connections, exchanged, strict=True)
            if isinstance(outcome, BaseException)
        ]
    finally:
        await close_all([websocket for websocket, _ in connections])
    return failures, frontend, server


def test_two_thousand_websockets_each_see_their_own_source(tmp_path: Path) -> None:
    # Each tunnel holds two descriptors in HAProxy and one here; gunicorn's two workers
    # share the connections between them.
    if raise_open_files(20_000) < 3 * CONNECTIONS:
        pytest.skip(f"RLIMIT_NOFILE cannot be raised to {3 * CONNECTIONS}")
    server = Gunicorn(tmp_path, proxy_protocol=("--proxy-protocol", "v2"), allow_from="127.0.0.1")
    frontend_port = free_port()
    config = haproxy_for_load(tmp_path, frontend_port, server.port)
    stats_socket = tmp_path / STATS_SOCKET
    with server, HAProxy(config, tmp_path):
        wait_until_healthy(stats_socket, [BACKEND], timeout=15)
        workers = server.worker_pids()
        (idle,) = {open_descriptors(pid) for pid in workers}
        fleet = Fleet(("127.0.0.1", frontend_port))
        started = time.monotonic()
        failures, frontend_sessions, server_sessions = asyncio.run(
            asyncio.wait_for(_load(fleet, stats_socket), 110)
        )
        elapsed = time.monotonic() - started
        health = haproxy_stats(stats_socket)[(BACKEND, "app")]
        assert server.worker_pids() == workers, "a worker died or was replaced under load"
        # Once the clients have closed, the workers hold what they held before.
        wait_until_released(server, idle)

    print(f"\n{CONNECTIONS} WebSockets, {MESSAGES} messages each: {elapsed:.1f} s")
    assert failures == [], failures[:10]
    sessions = fleet.sessions
    assert len(sessions) == CONNECTIONS
    # All were open at once, each through HAProxy to gunicorn.
    assert frontend_sessions >= CONNECTIONS
    assert server_sessions >= CONNECTIONS
    # Every connection's app saw the socket it came from (its source and its port) and the
    # frontend it reached.
    assert fleet.misaddressed() == [], fleet.misaddressed()[:10]
    assert {session.local[0] for session in sessions} == set(LOAD_SOURCES)
    assert len({session.local for session in sessions}) == CONNECTIONS
    # Every message came back unchanged, by count and content.
    assert [s for s in sessions if s.wrong] == []
    assert all(session.echoed == MESSAGES for session in sessions)
    # Both workers served; none was replaced; HAProxy never saw the server fail.
    assert {session.worker for session in sessions} == workers
    assert health["status"] == "UP", health
    assert health["chkdown"] == "0", health
    output = server.output()
    assert "Traceback" not in output, output[-5000:]
    assert server.errors() == [], server.errors()
    assert WARNING not in output
