"""Instructions per connection of a live uvicorn server: plain, and with PROXY v1 / v2.

``python bench/live_cost.py`` (needs valgrind; about 3 minutes) starts
``uvicorn bench.app:app --loop uvloop`` under ``valgrind --tool=callgrind`` once per kind
and connection count, sends that many sequential connections from loopback (the header,
if any, and the request in one write; each read to the end), and stops the server. The
difference between two counts, divided by their difference, is what one connection costs
in user-space instructions, start-up excluded. Instruction counts (with a fixed hash seed)
repeat closely where the wall clock of a shared VM does not; system calls are not counted
(strace counts them). ``--keep-alive`` counts per request instead: that many requests one
after the other on one connection (the header, if any, with the first).
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.connection_cost import HEADERS, REQUEST  # noqa: E402  (the in-memory harness's bytes)
from bench.uvicorn_wrk import SERVERS, _free_ports  # noqa: E402

START_TIMEOUT = 120.0


def _wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            # An empty connection: the server sees it close before any header or request.
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no server on port {port} after {START_TIMEOUT:g} s")


def _connect_many(port: int, first_bytes: bytes, count: int) -> None:
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(first_bytes)
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        if not response.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected response: {response[:80]!r}")


KEEP_ALIVE_REQUEST = REQUEST.replace(b"Connection: close\r\n", b"")


def _requests_on_one_connection(port: int, first_bytes: bytes, count: int) -> None:
    """``count`` keep-alive requests, one after the other, on one connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for number in range(count):
            sock.sendall(first_bytes + KEEP_ALIVE_REQUEST if number == 0 else KEEP_ALIVE_REQUEST)
            response = b""
            while not response.endswith(b"\r\n\r\nok"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"closed after {number} requests: {response[:80]!r}")
                response += chunk
            if not response.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"unexpected response: {response[:80]!r}")


def instructions(
    kind: str, count: int, workdir: Path, http: str | None = None, keep_alive: bool = False
) -> int:
    """Total instructions of a server that served ``count`` connections of ``kind``
    (``http``: another ``--http`` class than the benchmark's, for a PROXY kind), or with
    ``keep_alive`` ``count`` requests on one connection."""
    (port,) = _free_ports(1)
    out = workdir / f"callgrind.{kind}.{count}"
    server_kind = SERVERS["a" if kind == "plain" else "b"]  # the benchmark's own commands
    env = dict(server_kind.env(), PYTHONHASHSEED="0")
    command = server_kind.command(port)
    if http is not None and kind != "plain":
        command[command.index("--http") + 1] = http
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]
    with (workdir / f"server.{kind}.{count}.log").open("wb") as log:
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            _wait_ready(port, server)
            if keep_alive:
                _requests_on_one_connection(port, HEADERS[kind], count)
            else:
                _connect_many(port, HEADERS[kind] + REQUEST, count)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no callgrind summary in {out}")
    return int(match.group(1))


def main() -> None:
    """Print the instructions per connection of each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--counts", type=int, nargs=2, default=(300, 1300), metavar=("N1", "N2"))
    parser.add_argument("--kinds", nargs="+", choices=sorted(HEADERS), default=list(HEADERS))
    parser.add_argument(
        "--http", help="the --http class of the PROXY kinds (default: the benchmark's (b))"
    )
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="per keep-alive request on one connection instead of per connection",
    )
    options = parser.parse_args()
    low, high = options.counts
    plain = None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in options.kinds:
            counts = [
                instructions(kind, n, Path(tmp), options.http, options.keep_alive)
                for n in (high, low)
            ]
            cost = (counts[0] - counts[1]) / (high - low)
            plain = cost if kind == "plain" else plain
            extra = "" if plain is None or kind == "plain" else f"  ({cost / plain - 1:+.1%})"
            unit = "keep-alive request" if options.keep_alive else "connection"
            print(f"{kind:6} {cost / 1000:7.1f}k instructions per {unit}{extra}", flush=True)


if __name__ == "__main__":
    main()
