"""Log bytes per rejected connection under a flood, per adapter, against plain uvicorn.

``python bench/logs.py`` starts each server in turn on 127.0.0.1 and floods it for
``--duration`` seconds (default 4) from 4 client threads: each connects from 127.0.0.1,
sends a bad PROXY header (``PROXY TCP4 198.51.100.022 ...``, an invalid address) and a
request, and waits for the server to close the connection. Plain uvicorn gets an invalid
HTTP request instead, which it answers with its ``Invalid HTTP request received.`` line.
After the flood the benchmark waits for the rejection log's window to end
(:data:`proxyproto_mw.rejections.WINDOW`), sends one more bad connection so that the
window's counts are written, then stops the server.

It counts the rejection lines the server wrote (``closing connection from`` and
``suppressed ...`` lines; uvicorn's ``Invalid HTTP request`` lines) and their bytes,
newlines included, and prints bytes per rejected connection. The servers: this package's
uvicorn protocol (``--http proxyproto_mw.uvicorn:HttpToolsProtocol``), gunicorn
``ThreadWorker`` and ``SyncWorker`` (``-w 2``, in gunicorn's error log format), werkzeug
``run_simple``; and plain ``uvicorn --http httptools`` as the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from proxyproto_mw.rejections import WINDOW

ROOT = Path(__file__).resolve().parent.parent
BAD_HEADER = b"PROXY TCP4 198.51.100.022 203.0.113.7 35646 443\r\nGET / HTTP/1.1\r\nHost: b\r\n\r\n"
BAD_REQUEST = b"GARBAGE / HTTP/9.9 \x00\r\n\r\n"
MARKERS = ("closing connection from", "suppressed ", "Invalid HTTP request")

_UVICORN = [sys.executable, "-m", "uvicorn", "bench.app:app", "--no-access-log"]
_WERKZEUG = (
    "from proxyproto_mw.werkzeug import run_simple\n"
    "from bench.slowloris import app\n"
    "run_simple('127.0.0.1', {port}, app, threaded=True)\n"
)


def _gunicorn(worker: str, threads: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-k", worker, "-w", "2", "--threads", str(threads),
        "--proxy-protocol", "auto", "-b", f"127.0.0.1:{port}", "--no-control-socket",
        "bench.slowloris:app",
    ]  # fmt: skip


SERVERS: dict[str, tuple[Callable[[int], list[str]], bytes]] = {
    "plain uvicorn (reference)": (
        lambda port: [*_UVICORN, "--http", "httptools", "--port", str(port)],
        BAD_REQUEST,
    ),
    "ours uvicorn protocol": (
        lambda port: [
            *_UVICORN, "--http", "proxyproto_mw.uvicorn:HttpToolsProtocol", "--port", str(port)
        ],
        BAD_HEADER,
    ),
    "ours gunicorn ThreadWorker": (
        lambda port: _gunicorn("proxyproto_mw.gunicorn.ThreadWorker", 4, port),
        BAD_HEADER,
    ),
    "ours gunicorn SyncWorker": (
        lambda port: _gunicorn("proxyproto_mw.gunicorn.SyncWorker", 1, port),
        BAD_HEADER,
    ),
    "ours werkzeug run_simple": (
        lambda port: [sys.executable, "-c", _WERKZEUG.format(port=port)],
        BAD_HEADER,
    ),
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _reject_once(port: int, payload: bytes) -> bool:
    """One connection that the server closes; True when it did."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            while sock.recv(4096):
                pass
    except ConnectionResetError:
        return True
    except OSError:
        return False
    return True


def _flood(port: int, payload: bytes, seconds: float, threads: int = 4) -> int:
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def run(index: int) -> None:
        while time.monotonic() < deadline:
            counts[index] += _reject_once(port, payload)

    workers = [threading.Thread(target=run, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts)


def measure(name: str, seconds: float) -> tuple[int, int, int]:
    """(rejected connections, rejection lines, their bytes) for one server."""
    command, payload = SERVERS[name]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXYPROTO_", "UVICORN_"))}
    env["PROXYPROTO_TRUSTED"] = "127.0.0.1"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command(port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.1)
            time.sleep(1.0)  # every worker up
            rejected = _flood(port, payload, seconds)
            time.sleep(WINDOW + 0.5)  # the window ends; the next rejection writes its counts
            rejected += _reject_once(port, payload)
            time.sleep(0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.seek(0)
        lines = [
            line for line in log.read().splitlines() if any(m.encode() in line for m in MARKERS)
        ]
    return rejected, len(lines), sum(len(line) + 1 for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of flood")
    arguments = parser.parse_args()
    print(f"{arguments.duration:g} s flood from 127.0.0.1, 4 client threads")
    print("| server | rejected connections | log lines | log bytes | bytes per rejection |")
    print("|---|---|---|---|---|")
    for name in SERVERS:
        rejected, lines, size = measure(name, arguments.duration)
        per = size / rejected if rejected else float("nan")
        print(f"| {name} | {rejected} | {lines} | {size} | {per:.2f} |")


if __name__ == "__main__":
    main()
