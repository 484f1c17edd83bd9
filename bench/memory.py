"""Memory per open connection: plain uvicorn against this project's protocol (PROXY v1 / v2).

``python bench/memory.py [--connections 2000] [--rounds 5]`` starts
``uvicorn bench.app:app --http httptools --loop uvloop`` (plain) and the same with
``--http proxyproto_mw.uvicorn:HttpToolsProtocol`` (ours), each fresh for every
measurement, opens ``--connections`` connections to it from eight loopback sources
(127.0.0.2 to 127.0.0.9) and holds them open in one of three states:

- ``waiting``: connected, nothing sent (plain) or only the PROXY header sent (ours): a
  connection before its first request;
- ``keep-alive``: (header and) one request answered, the connection idle;
- ``websocket``: (header and) a WebSocket upgrade answered with 101, the socket open.

Per connection: the growth of the server process's anonymous resident memory
(``RssAnon`` in ``/proc/PID/status``) from before the first connection to after the
last one (and a settling pause), divided by the count. Each round measures every
server in a rotated order; the report gives the median over rounds, the range, and ours
minus plain in KiB. uvicorn's keep-alive timeout and our header timeout are raised so
that nothing closes during a measurement.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxyproto_mw import encode_v1, encode_v2  # noqa: E402

SOURCES = tuple(f"127.0.0.{host}" for host in range(2, 10))
CLIENT = ("198.51.100.22", 35646)
DESTINATION = ("203.0.113.7", 443)
HEADERS = {
    "plain": b"",
    "v1": encode_v1(CLIENT, DESTINATION),
    "v2": encode_v2(CLIENT, DESTINATION),
}
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
STATES = ("waiting", "keep-alive", "websocket")
START_TIMEOUT = 30.0
SETTLE = 1.0


@dataclass(frozen=True)
class Measurement:
    kind: str
    state: str
    round: int
    bytes_per_connection: float


def _command(kind: str, port: int, ws: str) -> list[str]:
    http = "httptools" if kind == "plain" else "proxyproto_mw.uvicorn:HttpToolsProtocol"
    return [
        sys.executable, "-m", "uvicorn", "bench.app:app", "--host", "127.0.0.1",
        "--port", str(port), "--http", http, "--ws", ws, "--loop", "uvloop",
        "--no-access-log", "--timeout-keep-alive", "600", "--log-level", "warning",
    ]  # fmt: skip


def _environment(kind: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXYPROTO_", "UVICORN_"))}
    if kind != "plain":
        env.update(PROXYPROTO_TRUSTED="127.0.0.0/8", PROXYPROTO_TIMEOUT="600")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_anon(pid: int) -> int:
    """Anonymous resident memory of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RssAnon for {pid}")


def _wait_ready(port: int, server: subprocess.Popen[bytes], header: bytes) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            error = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise RuntimeError(f"the server exited: {error}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(header)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                while sock.recv(65536):
                    pass
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no server on port {port} after {START_TIMEOUT:g} s")


def _read_head(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed after {received!r}")
        received += chunk
    return received


def _open(port: int, header: bytes, state: str, count: int) -> list[socket.socket]:
    sockets = []
    for index in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((SOURCES[index % len(SOURCES)], 0))
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
        if state == "waiting":
            if header:
                sock.sendall(header)
        elif state == "keep-alive":
            sock.sendall(header + REQUEST)
            head = _read_head(sock)
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"unexpected answer {head[:60]!r}")
        else:
            sock.sendall(header + UPGRADE)
            head = _read_head(sock)
            if not head.startswith(b"HTTP/1.1 101 "):
                raise RuntimeError(f"unexpected answer {head[:60]!r}")
    return sockets


def measure(kind: str, state: str, count: int, ws: str) -> float:
    """Bytes of server memory per open connection of ``kind`` in ``state``."""
    port = _free_port()
    server = subprocess.Popen(
        _command(kind, port, ws),
        cwd=ROOT,
        env=_environment(kind),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    sockets: list[socket.socket] = []
    try:
        _wait_ready(port, server, HEADERS[kind])
        time.sleep(SETTLE)
        before = _rss_anon(server.pid)
        sockets = _open(port, HEADERS[kind], state, count)
        time.sleep(SETTLE)
        if server.poll() is not None:
            raise RuntimeError("the server exited during the measurement")
        after = _rss_anon(server.pid)
        return (after - before) / count
    finally:
        for sock in sockets:
            sock.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if server.stderr is not None:
            server.stderr.close()


def report(measurements: Sequence[Measurement], kinds: Sequence[str]) -> str:
    """A Markdown table: KiB per connection (median, range) and ours minus plain."""
    rows = [
        "| state | " + " | ".join(f"{kind} KiB (range)" for kind in kinds)
        + " | " + " | ".join(f"{kind} - plain" for kind in kinds if kind != "plain") + " |",
        "|---|" + "---:|" * (2 * len(kinds) - 1),
    ]  # fmt: skip
    for state in STATES:
        medians = {}
        cells = []
        for kind in kinds:
            values = [
                m.bytes_per_connection / 1024
                for m in measurements
                if (m.kind, m.state) == (kind, state)
            ]
            if not values:
                break
            medians[kind] = statistics.median(values)
            cells.append(f"{medians[kind]:.2f} ({min(values):.2f}-{max(values):.2f})")
        else:
            deltas = [f"{medians[k] - medians['plain']:+.2f}" for k in kinds if k != "plain"]
            rows.append(f"| {state} | " + " | ".join(cells + deltas) + " |")
    return "\n".join(rows)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--states", nargs="+", choices=STATES, default=list(STATES))
    parser.add_argument("--kinds", nargs="+", choices=sorted(HEADERS), default=list(HEADERS))
    parser.add_argument(
        "--ws", default="websockets-sansio", help="uvicorn's --ws (default websockets-sansio)"
    )
    options = parser.parse_args()
    if "plain" not in options.kinds:
        parser.error("--kinds must include plain")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = options.connections + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        parser.error(f"the open-file limit ({hard}) is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # the servers inherit it
    kinds = list(options.kinds)
    measurements = []
    for round_number in range(options.rounds):
        shift = round_number % len(kinds)
        order = kinds[shift:] + kinds[:shift]  # rotated every round
        for state in options.states:
            for kind in order:
                value = measure(kind, state, options.connections, options.ws)
                measurements.append(Measurement(kind, state, round_number, value))
                print(
                    f"round {round_number + 1} {state:10} {kind:5} {value / 1024:6.2f} KiB",
                    flush=True,
                )
    print()
    print(
        f"{options.connections} connections, {options.rounds} rounds, uvloop, httptools, "
        f"--ws {options.ws}; KiB of RssAnon per open connection"
    )
    print(report(measurements, kinds))


if __name__ == "__main__":
    main()
