"""Honest clients under a slowloris attack, per gunicorn WSGI worker; CPU of waiting readers.

``python bench/slowloris.py`` starts each worker class in turn (``-w 2``; the thread
workers with ``--threads 4``), all with ``--proxy-protocol auto --proxy-allow-from
127.0.0.1,127.0.0.5``: this package's ``ThreadWorker`` and ``SyncWorker``, and
gunicorn's own ``gthread`` and ``sync``. 300 connections from 127.0.0.1 send a v1 header
one byte per second; after 1.5 s, 100 honest clients (50 at a time, from 127.0.0.5) each
send a whole header and a request. It prints, per worker, how many honest clients were
answered within 10 s, and their median and slowest time.

``python bench/slowloris.py --cpu`` measures the CPU a server spends while 16 connections
hold part of a header for 5 s: this package's werkzeug ``run_simple`` (16 threads waiting
in the blocking reader), this ``ThreadWorker`` (``--threads 16``), and gunicorn's own
``gthread`` (``--threads 16``). ``PYTHONPATH=<another checkout>`` measures another version
of the package the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEADER = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 443\r\n"
ATTACKER = "127.0.0.1"
BALANCER = "127.0.0.5"
WITHIN = 10.0
WORKERS = {
    "ours ThreadWorker": ("proxyproto_mw.gunicorn.ThreadWorker", 4),
    "ours SyncWorker": ("proxyproto_mw.gunicorn.SyncWorker", 1),
    "gunicorn gthread": ("gthread", 4),
    "gunicorn sync": ("sync", 1),
}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app served: the client's address."""
    body = environ["REMOTE_ADDR"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited at start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            time.sleep(1.0)  # every worker booted, not only the first
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def _server(argv: Sequence[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXYPROTO_")}
    process = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, process)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(8)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _gunicorn(worker: str, threads: int, port: int, workers: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-k", worker, "-w", str(workers),
        "--threads", str(threads), "--proxy-protocol", "auto",
        "--proxy-allow-from", f"{ATTACKER},{BALANCER}", "-b", f"127.0.0.1:{port}",
        "--no-control-socket", "--graceful-timeout", "1", "bench.slowloris:app",
    ]  # fmt: skip


def _connect(source: str, port: int, timeout: float) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class Trickle(threading.Thread):
    """``count`` connections, each sent one more byte of a header every second."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.sockets = []
        for _ in range(count):
            with contextlib.suppress(OSError):
                self.sockets.append(_connect(ATTACKER, port, 5))
        self.stopped = threading.Event()

    def run(self) -> None:
        for sent in range(len(HEADER) - 2):  # never the CRLF
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.send(HEADER[sent : sent + 1])
            if self.stopped.wait(1.0):
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        for sock in self.sockets:
            sock.close()


def _honest(port: int) -> float | None:
    """Seconds until an honest client's answer; None if it got none within 15 s."""
    started = time.monotonic()
    try:
        with _connect(BALANCER, port, 15) as sock:
            sock.sendall(HEADER + b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return None
    if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(b"198.51.100.22"):
        return None
    return time.monotonic() - started


def under_slowloris(slow: int = 300, honest: int = 100) -> None:
    print(f"{slow} slow headers (1 byte/s) and {honest} honest clients, -w 2")
    print(f"| worker | threads | answered within {WITHIN:g} s | median s | slowest s |")
    print("|---|---|---|---|---|")
    for name, (worker, threads) in WORKERS.items():
        port = _free_port()
        with _server(_gunicorn(worker, threads, port), port):
            trickle = Trickle(port, slow)
            trickle.start()
            try:
                time.sleep(1.5)
                with ThreadPoolExecutor(max_workers=50) as pool:
                    times = list(pool.map(_honest, [port] * honest))
            finally:
                trickle.stop()
        answered = sorted(t for t in times if t is not None)
        within = sum(t <= WITHIN for t in answered)
        median = f"{statistics.median(answered):.2f}" if answered else "-"
        slowest = f"{answered[-1]:.2f}" if answered else "-"
        print(f"| {name} | {threads} | {within} / {honest} | {median} | {slowest} |")


def _cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the processes so far (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _session(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[3]) == sid:
                    pids.append(int(entry.name))
    return pids


def waiting_cpu(connections: int = 16, seconds: float = 5.0) -> None:
    werkzeug = (
        "from proxyproto_mw.werkzeug import run_simple\n"
        "from bench.slowloris import app\n"
        "run_simple('127.0.0.1', {port}, app, threaded=True)\n"
    )
    servers: dict[str, Callable[[int], list[str]]] = {
        "ours werkzeug run_simple (threads)": lambda port: [
            sys.executable, "-c", werkzeug.format(port=port)
        ],
        "ours ThreadWorker": lambda port: _gunicorn(
            "proxyproto_mw.gunicorn.ThreadWorker", connections, port, workers=1
        ),
        "gunicorn gthread": lambda port: _gunicorn("gthread", connections, port, workers=1),
    }  # fmt: skip
    print(f"{connections} connections holding 14 bytes of a header, {seconds:g} s")
    print("| server | CPU seconds | share of a core |")
    print("|---|---|---|")
    for name, command in servers.items():
        port = _free_port()
        with _server(command(port), port) as process:
            stalled = [_connect(ATTACKER, port, 5) for _ in range(connections)]
            try:
                for sock in stalled:
                    sock.sendall(HEADER[:14])
                time.sleep(1.0)  # every reader has its 14 bytes; from now on it only waits
                pids = _session(process.pid)
                before = _cpu_seconds(pids)
                time.sleep(seconds)  # within the header timeout (10 s)
                used = _cpu_seconds(pids) - before
            finally:
                for sock in stalled:
                    sock.close()
        print(f"| {name} | {used:.3f} | {used / seconds:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU of readers waiting instead")
    arguments = parser.parse_args()
    if arguments.cpu:
        waiting_cpu()
    else:
        under_slowloris()


if __name__ == "__main__":
    main()
