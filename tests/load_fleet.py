"""Many WebSocket clients on many loopback sources, HAProxy built for them, and what a
server process holds: for the load and fault tests.

Every client socket is bound to its own loopback source (127.0.0.2 to 127.0.0.250, round
robin) before it connects, so that HAProxy sees many clients and the address the app
reports can be checked against the socket that sent it. The app is
:data:`tests.gunicorn_server.app`: on a WebSocket it sends the JSON of its scope (whose
``client`` is the address it saw), then echoes every message; the handshake response
names the worker (``X-Worker-Pid``).

Nothing here waits without a bound, and every address is a loopback one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect

from tests.gunicorn_server import WORKER_PID, Gunicorn
from tests.haproxy import STATS_SOCKET, Address, HAProxy

__all__ = [
    "LOAD_SOURCES",
    "Fleet",
    "Session",
    "bound_socket",
    "close_all",
    "connections_on_port",
    "haproxy_for_load",
    "lingering",
    "open_descriptors",
    "raise_open_files",
    "reload_haproxy",
    "resident_kib",
    "wait_until_released",
]

LOAD_SOURCES = tuple(f"127.0.0.{host}" for host in range(2, 251))
"""The loopback sources clients connect from, round robin."""

BACKEND = "app"
"""The name of the HAProxy backend (and of its one server, ``app``)."""

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# --- process limits and figures ------------------------------------------------------------


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (at most the hard
    limit); the new soft limit. Servers started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def open_descriptors(pid: int) -> int:
    """How many file descriptors process ``pid`` holds (``/proc/PID/fd``)."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def resident_kib(pid: int) -> int:
    """Process ``pid``'s resident set size in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def connections_on_port(port: int) -> list[tuple[str, str]]:
    """The kernel's IPv4 TCP sockets whose local port is ``port`` (the server side):
    (state, remote ``host:port``) for each, from ``/proc/net/tcp``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) != port:
            continue
        raw_host, raw_port = remote.split(":")
        host = socket.inet_ntoa(bytes.fromhex(raw_host)[::-1])
        found.append((_TCP_STATES.get(state, state), f"{host}:{int(raw_port, 16)}"))
    return found


def lingering(port: int) -> list[tuple[str, str]]:
    """Server-side sockets on ``port`` that are neither listening nor in TIME_WAIT (which
    holds no descriptor): connections not yet closed, or half closed (CLOSE_WAIT)."""
    return [
        (state, peer)
        for state, peer in connections_on_port(port)
        if state not in ("LISTEN", "TIME_WAIT")
    ]


def wait_until_released(server: Gunicorn, idle: int, timeout: float = 15.0) -> None:
    """Wait (bounded) until no socket lingers on the server's port and every worker holds
    ``idle`` descriptors, as a worker without connections does."""
    deadline = time.monotonic() + timeout
    while True:
        left = lingering(server.port)
        descriptors = {pid: open_descriptors(pid) for pid in server.worker_pids()}
        if not left and set(descriptors.values()) == {idle}:
            return
        assert time.monotonic() < deadline, (
            f"{timeout} s after the peers went away: sockets {left[:10]}, "
            f"descriptors {descriptors} (idle: {idle})"
        )
        time.sleep(0.1)


def bound_socket(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to ``source`` (the port is chosen at connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


# --- HAProxy for thousands of tunnels ------------------------------------------------------


def haproxy_for_load(
    workdir: Path, frontend_port: int, backend_port: int, *, maxconn: int = 8000
) -> str:
    """HAProxy in TCP mode for long-lived WebSockets: ``maxconn`` in ``global`` and on the
    frontend, tunnels idle for up to 2 minutes, ``send-proxy-v2`` with a CRC32C to the
    server at 127.0.0.1:``backend_port`` with HTTP health checks every 500 ms, and a
    reload (``-sf``) that ends the old process's tunnels after 3 s (``hard-stop-after``)."""
    return f"""\
global
    maxconn {maxconn}
    stats socket {workdir}/{STATS_SOCKET} mode 600 level admin
    hard-stop-after 3s
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 120s
    timeout check 5s
frontend ws
    bind 127.0.0.1:{frontend_port}
    maxconn {maxconn}
    default_backend {BACKEND}
backend {BACKEND}
    option httpchk GET /check
    server app 127.0.0.1:{backend_port} send-proxy-v2 proxy-v2-options crc32c check inter 500ms
"""


def reload_haproxy(old: HAProxy, workdir: Path) -> HAProxy:
    """A soft reload: a new HAProxy with the same configuration takes the listeners, then
    tells the old one (``-sf PID``) to stop accepting and finish its connections. The new
    process logs into ``workdir``; the caller stops it."""
    new = HAProxy(old.config, workdir)
    new.argv += ["-sf", str(old.pid)]
    new.start()
    return new


# --- the WebSocket fleet -----------------------------------------------------------------


@dataclass
class Session:
    """One WebSocket connection a client opened: where from, what the app saw."""

    number: int
    """The client that opened it."""
    local: Address
    """The client socket's address: its true source."""
    seen: Address | None
    """The client address the app reported in its greeting."""
    reached: Address | None
    """The server address the app reported: the balancer's frontend the client reached."""
    worker: int
    """The pid of the gunicorn worker that accepted it."""
    opened: float
    """``time.monotonic()`` when its greeting arrived."""
    echoed: int = 0
    """Messages echoed back unchanged."""
    wrong: list[str] = field(default_factory=list)
    """Echoes that differ from what was sent."""


class Fleet:
    """WebSocket clients of ``frontend``, client ``n`` connecting from
    ``LOAD_SOURCES[n % len(LOAD_SOURCES)]``; every opened connection is a :class:`Session`.

    ``handshakes`` bounds how many opening handshakes are in flight at once.
    """

    def __init__(self, frontend: Address, *, handshakes: int = 100, seed: int = 11) -> None:
        self.frontend = frontend
        self.uri = f"ws://{frontend[0]}:{frontend[1]}/ws"
        self.sessions: list[Session] = []
        self.failures: list[str] = []
        self._handshakes = asyncio.Semaphore(handshakes)
        self._random = random.Random(seed)

    def source(self, number: int) -> str:
        """The loopback address client ``number`` connects from."""
        return LOAD_SOURCES[number % len(LOAD_SOURCES)]

    async def open(self, number: int, timeout: float = 30.0) -> tuple[ClientConnection, Session]:
        """Open client ``number``'s connection and read the app's greeting."""
        sock = bound_socket(self.source(number))
        try:
            async with self._handshakes:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, self.frontend), timeout
                )
                host, port = sock.getsockname()[:2]
                websocket = await websocket_connect(
                    self.uri,
                    sock=sock,
                    proxy=None,
                    open_timeout=timeout,
                    close_timeout=2,
                    ping_interval=None,
                    max_queue=4,
                )
        except BaseException:
            sock.close()
            raise
        try:
            greeting = json.loads(await asyncio.wait_for(websocket.recv(), timeout))
        except BaseException:
            await websocket.close()
            raise
        seen, reached = (
            (value[0], value[1]) if isinstance(value, list) else None
            for value in (greeting.get("client"), greeting.get("server"))
        )
        response = websocket.response
        assert response is not None  # set once the opening handshake is done
        worker = int(response.headers[WORKER_PID])
        session = Session(number, (host, port), seen, reached, worker, time.monotonic())
        self.sessions.append(session)
        return websocket, session

    def message(self, session: Session, index: int) -> str | bytes:
        """The ``index``-th message of a session: text and binary in turn, each unique."""
        text = f"{session.number}:{session.local[1]}:{index}:{self._random.getrandbits(64):x}"
        return text if index % 2 == 0 else text.encode() + bytes(range(256))[::-17]

    async def exchange(
        self, websocket: ClientConnection, session: Session, count: int, timeout: float = 30.0
    ) -> None:
        """Send ``count`` messages one after another; check each echo."""
        for index in range(count):
            sent = self.message(session, session.echoed + len(session.wrong) + index)
            await websocket.send(sent)
            echoed = await asyncio.wait_for(websocket.recv(), timeout)
            if echoed == sent:
                session.echoed += 1
            else:
                session.wrong.append(f"sent {sent!r}, echoed {echoed!r}")

    def misaddressed(self, sessions: Sequence[Session] | None = None) -> list[Session]:
        """The sessions whose greeting named another client than their own socket, or
        another server than the frontend they connected to."""
        return [
            s
            for s in (self.sessions if sessions is None else sessions)
            if s.seen != s.local or s.reached != self.frontend
        ]


async def close_all(websockets: Sequence[ClientConnection], timeout: float = 30.0) -> None:
    """Close every connection (the closing handshakes run concurrently), bounded."""

    async def close(websocket: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await websocket.close()

    await asyncio.wait_for(asyncio.gather(*(close(ws) for ws in websockets)), timeout)
