"""What reading a PROXY header costs a blocking server, piece by piece, per connection.

``python bench/header_read_cost.py`` (about 1.5 minutes; needs valgrind) accepts connections
on loopback, each from a client that sent a PROXY v2 header and an HTTP request in one write,
and runs on each accepted socket one of these steps, the threaded websockets server's before
the library's connection starts:

- ``getpeername``: the peer's address, which the trust policy needs;
- ``receive_header``: that, and :func:`proxyproto_mw.blocking.receive_header` (the policy's
  decision, the peek and the take);
- ``with state``: that, and the :class:`~proxyproto_mw.websockets.ProxiedState` the
  connection keeps.

For each step it gives the user-space instructions per connection under callgrind (the
difference between runs of N1 and N2 connections, over N2 - N1, less the same for accepting
and closing alone) and the CPU time of the step itself in this thread (``thread_time``, the
median of three runs, system calls included). ``bench/websockets_bench.py`` measures whole
connections; this says where the header's share goes.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxyproto_mw import TrustPolicy, encode_v2  # noqa: E402
from proxyproto_mw.blocking import receive_header  # noqa: E402
from proxyproto_mw.header import Address  # noqa: E402
from proxyproto_mw.websockets import ProxiedState  # noqa: E402

POLICY = TrustPolicy("127.0.0.0/8")
FIRST_BYTES = encode_v2(("198.51.100.22", 40000), ("203.0.113.7", 443)) + (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: cHJveHlwcm90by1iZW5jaA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _peer(sock: socket.socket) -> Address | None:
    name = sock.getpeername()
    return (name[0], name[1]) if isinstance(name, tuple) else None


def _receive(sock: socket.socket) -> object:
    return receive_header(sock, POLICY, _peer(sock))


def _with_state(sock: socket.socket) -> object:
    peer = _peer(sock)
    header = receive_header(sock, POLICY, peer)
    return None if header is None else ProxiedState(header, peer, False)


STEPS: dict[str, Callable[[socket.socket], object] | None] = {
    "accept": None,
    "getpeername": _peer,
    "receive_header": _receive,
    "with state": _with_state,
}


def run(step: str, count: int) -> float:
    """Accept ``count`` connections, running ``step`` on each; its CPU seconds in total."""
    work = STEPS[step]
    spent = 0.0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        for _ in range(count):
            with socket.create_connection(listener.getsockname()) as client:
                client.sendall(FIRST_BYTES)
                accepted, _ = listener.accept()
                with accepted:
                    if work is not None:
                        started = time.thread_time()
                        work(accepted)
                        spent += time.thread_time() - started
    return spent


def instructions(step: str, count: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{step.replace(' ', '_')}.{count}"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--run", step, str(count)]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(argv, check=True, env=env, capture_output=True, timeout=600)
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no callgrind summary in {out}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs=2, default=(100, 500), metavar=("N1", "N2"))
    parser.add_argument("--cpu-count", type=int, default=20000, help="connections per CPU run")
    parser.add_argument("--run", nargs=2, help="internal: one run under callgrind")
    arguments = parser.parse_args()
    if arguments.run:
        run(arguments.run[0], int(arguments.run[1]))
        return 0
    low, high = arguments.counts
    per_connection: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for step in STEPS:
            spent = instructions(step, high, Path(tmp)) - instructions(step, low, Path(tmp))
            per_connection[step] = spent / (high - low)
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{sys.version.split()[0]}; instructions from {low} and {high} connections, CPU from "
        f"{arguments.cpu_count} (median of 3 runs).",
        "",
        "| step | instructions per connection | CPU per connection |",
        "|---|---|---|",
    ]
    base = per_connection["accept"]
    for step in STEPS:
        if step == "accept":
            continue
        cpu = statistics.median(run(step, arguments.cpu_count) for _ in range(3))
        lines.append(
            f"| {step} | {per_connection[step] - base:,.0f} "
            f"| {cpu / arguments.cpu_count * 1e6:.2f} µs |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
