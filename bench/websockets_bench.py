"""websockets' servers, plain and behind a PROXY header: messages/s and CPU per connection.

``python bench/websockets_bench.py`` (about 3.5 minutes; ``--quick``: one short round)
starts four echo servers, each pinned to CPU 1 with ``taskset``:

- ``asyncio plain``: ``websockets.asyncio.server.serve(echo, ...)``;
- ``asyncio proxied``: ``proxyproto_mw.websockets.serve(echo, ..., policy=...)``;
- ``sync plain`` and ``sync proxied``: the same with ``websockets.sync.server`` and
  ``proxyproto_mw.websockets.sync``.

All use ``compression=None`` and ``ping_interval=None``. The client (this process, pinned to
CPU 0) speaks WebSocket itself on raw asyncio streams, with frames built once, so that it
costs little next to the server. Two patterns per server and round:

- ``messages``: 16 connections, each sending 32 masked 16-byte text frames at a time and
  reading their 32 echoes, for ``--duration`` seconds: messages echoed per second, and the
  server's CPU per message;
- ``connections``: one loop of connect, (PROXY v2 header,) opening handshake, one echo,
  closing handshake, for ``--duration`` seconds: connections per second and the server's
  CPU per connection. Sources rotate over 127.0.0.2-127.0.0.201 so that TIME_WAIT never
  runs out of ports.

Each server calls ``gc.freeze()`` once started. The server's CPU is its own ``getrusage``
(user + system, every thread, exited ones too), which it writes on SIGUSR1 before and after
each run. Proxied connections start with a
PROXY v2 TCP4 header (no TLVs, as from an NLB) in the same write as the opening
handshake. Each round runs plain and proxied back to back, in an order that alternates
between rounds; the summary gives the median of the per-round ratios (proxied / plain) and
their range. The goals: message throughput at least 0.99 of plain, CPU per connection
within 3 %.

``--instructions N1 N2`` (about 5 minutes for 50 and 250; needs valgrind) counts instead the
user-space instructions of each server under callgrind: for N1 and then N2 sequential
connections from 127.0.0.1 (the difference over N2 - N1 is one connection's cost, start-up
cancelled out), and for one connection echoing 64 and then 640 messages. Instruction
counts repeat (within about 0.2 %) where the CPU time of a shared machine does not.
``--kinds sync`` (or ``asyncio``) counts one server only, ``--no-messages`` per connection
only (about 35 s for one server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import websockets.asyncio.server
import websockets.sync.server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import proxyproto_mw.websockets  # noqa: E402
import proxyproto_mw.websockets.sync  # noqa: E402
from proxyproto_mw import TrustPolicy, encode_v2  # noqa: E402

SERVER_CPU = 1
CLIENT_CPU = 0

PAYLOAD = b"0123456789abcdef"
MASK = b"\x12\x34\x56\x78"
BATCH = 32
MESSAGE_CONNECTIONS = 16
CHURN_LOOPS = 1
SOURCES = [f"127.0.0.{n}" for n in range(2, 202)]

KINDS = ("asyncio", "sync")
VARIANTS = ("plain", "proxied")


def _masked(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload shorter than 126 bytes)."""
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + MASK + masked


MESSAGE = _masked(0x1, PAYLOAD)
ECHO_SIZE = 2 + len(PAYLOAD)
MESSAGES = MESSAGE * BATCH
CLOSE = _masked(0x8, struct.pack("!H", 1000))
KEY = base64.b64encode(b"proxyproto-bench").decode()


def _upgrade(port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _v2_header(source: tuple[str, int]) -> bytes:
    return encode_v2(("198.51.100.22", source[1]), ("203.0.113.7", 443))


# --- the servers -------------------------------------------------------------------------


def _report_cpu(path: Path) -> None:
    """Write this process's CPU seconds so far (every thread, exited ones too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    previous = path.read_text().split() if path.exists() else ["0"]
    path.write_text(f"{int(previous[0]) + 1} {usage.ru_utime + usage.ru_stime!r}\n")


def serve(kind: str, variant: str, port: int, cpu_file: Path) -> None:
    """Run one echo server until killed (``--serve KIND VARIANT PORT CPU_FILE``); on SIGUSR1
    it writes its CPU time to ``cpu_file``."""
    policy = TrustPolicy("127.0.0.0/8")
    # Start-up's objects out of the collector's way, in both variants: a full collection
    # then costs what the connections left, not the whole heap, so that one collection
    # more or less in a run does not swamp a difference of a few thousand instructions.
    gc.freeze()
    options: dict[str, Any] = {"compression": None, "ping_interval": None}
    if kind == "asyncio":

        async def echo(connection: websockets.asyncio.server.ServerConnection) -> None:
            async for message in connection:
                await connection.send(message)

        async def main() -> None:
            if variant == "plain":
                server = websockets.asyncio.server.serve(echo, "127.0.0.1", port, **options)
            else:
                server = proxyproto_mw.websockets.serve(
                    echo, "127.0.0.1", port, policy=policy, **options
                )
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, _report_cpu, cpu_file)
            async with server:
                await asyncio.Future()

        asyncio.run(main())
    else:

        def sync_echo(connection: websockets.sync.server.ServerConnection) -> None:
            for message in connection:
                connection.send(message)

        if variant == "plain":
            sync_server = websockets.sync.server.serve(sync_echo, "127.0.0.1", port, **options)
        else:
            sync_server = proxyproto_mw.websockets.sync.serve(
                sync_echo, "127.0.0.1", port, policy=policy, **options
            )
        signal.signal(signal.SIGUSR1, lambda *_: _report_cpu(cpu_file))
        with sync_server:
            sync_server.serve_forever()


@dataclass
class Server:
    """One running echo server."""

    kind: str
    variant: str
    port: int
    process: subprocess.Popen[bytes]
    cpu_file: Path

    @property
    def name(self) -> str:
        return f"{self.kind} {self.variant}"

    def cpu(self) -> float:
        """Seconds of CPU the server used so far, every thread included (its getrusage,
        microseconds where /proc/PID/stat counts 10 ms ticks)."""
        before = self._read_cpu()[0]
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sequence, seconds = self._read_cpu()
            if sequence > before:
                return seconds
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} did not report its CPU time")

    def _read_cpu(self) -> tuple[int, float]:
        try:
            sequence, seconds = self.cpu_file.read_text().split()
        except (OSError, ValueError):
            return 0, 0.0
        return int(sequence), float(seconds)

    def first_bytes(self, source: tuple[str, int]) -> bytes:
        """What a client sends first: the header (when proxied) and the opening handshake."""
        header = _v2_header(source) if self.variant == "proxied" else b""
        return header + _upgrade(self.port)


def start_servers(workdir: Path) -> list[Server]:
    """The four servers, on CPU 1, each listening."""
    servers = []
    for kind in KINDS:
        for variant in VARIANTS:
            port = _free_port()
            cpu_file = workdir / f"{kind}-{variant}.cpu"
            process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), sys.executable, __file__, "--serve",
                 kind, variant, str(port), str(cpu_file)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            servers.append(Server(kind, variant, port, process, cpu_file))
    for server in servers:
        deadline = time.monotonic() + 30
        while not _listening(server.port):
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start")
            time.sleep(0.05)
    return servers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _listening(port: int) -> bool:
    wanted = f":{port:04X} "
    with open("/proc/net/tcp") as table:
        return any(wanted in line and line.split()[3] == "0A" for line in table)


# --- the client --------------------------------------------------------------------------

_next_source = 0


def _source() -> str:
    global _next_source  # noqa: PLW0603
    _next_source = (_next_source + 1) % len(SOURCES)
    return SOURCES[_next_source]


async def _open(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection past its opening handshake."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, local_addr=(_source(), 0)
    )
    host, port = writer.get_extra_info("sockname")[:2]
    writer.write(server.first_bytes((host, port)))
    response = await reader.readuntil(b"\r\n\r\n")
    if not response.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"{server.name}: {response[:60]!r}")
    return reader, writer


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(CLOSE)
    await reader.readexactly(4)  # the server's close frame
    await reader.read()  # then the server closes the TCP connection
    writer.close()


async def messages(server: Server, duration: float) -> int:
    """Messages echoed in ``duration`` s by ``MESSAGE_CONNECTIONS`` pipelining connections."""
    streams = [await _open(server) for _ in range(MESSAGE_CONNECTIONS)]
    deadline = time.monotonic() + duration
    expected = ECHO_SIZE * BATCH

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        count = 0
        while time.monotonic() < deadline:
            writer.write(MESSAGES)
            await reader.readexactly(expected)
            count += BATCH
        return count

    counts = await asyncio.gather(*(pump(*stream) for stream in streams))
    for stream in streams:
        await _close(*stream)
    return sum(counts)


async def connections(server: Server, duration: float) -> int:
    """Connections opened, used once and closed in ``duration`` s by ``CHURN_LOOPS`` loops."""
    deadline = time.monotonic() + duration

    async def loop() -> int:
        count = 0
        while time.monotonic() < deadline:
            reader, writer = await _open(server)
            writer.write(MESSAGE)
            await reader.readexactly(ECHO_SIZE)
            await _close(reader, writer)
            count += 1
        return count

    return sum(await asyncio.gather(*(loop() for _ in range(CHURN_LOOPS))))


@dataclass
class Run:
    """One measurement of one server."""

    server: str
    pattern: str
    round_no: int
    count: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def cpu_us(self) -> float:
        """Server CPU per message or per connection, in microseconds."""
        return self.cpu / self.count * 1e6


def measure(server: Server, pattern: str, duration: float, round_no: int) -> Run:
    """One run of ``pattern`` against ``server``."""
    time.sleep(0.3)  # let the previous run's connections finish closing
    cpu_before = server.cpu()
    started = time.monotonic()
    work = messages if pattern == "messages" else connections
    count = asyncio.run(work(server, duration))
    seconds = time.monotonic() - started
    return Run(server.name, pattern, round_no, count, seconds, server.cpu() - cpu_before)


# --- the report --------------------------------------------------------------------------


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(runs: list[Run], rounds: int, duration: float) -> tuple[str, bool]:
    """The Markdown summary and whether every goal is met."""
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, websockets {_version('websockets')}, "
        f"{_cpu_model()}; {rounds} rounds of {duration:g} s per run; server on CPU "
        f"{SERVER_CPU}, client on CPU {CLIENT_CPU}.",
        "Ratios are proxied / plain: the median over rounds (min-max). Goals: messages per "
        "server CPU-second (1 / CPU ratio of the messages rows) at least 0.99, CPU per "
        "connection ratio at most 1.03.",
        "",
        "| server | pattern | plain: rate/s | proxied: rate/s | rate ratio | "
        "plain: server CPU µs | proxied: server CPU µs | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for kind in KINDS:
        for pattern, unit in (("messages", "per message"), ("connections", "per connection")):

            def select(variant: str, kind: str = kind, pattern: str = pattern) -> list[Run]:
                name = f"{kind} {variant}"
                return [r for r in runs if r.server == name and r.pattern == pattern]

            plain, proxied = select("plain"), select("proxied")
            rate_ratios = [p.rate / q.rate for p, q in zip(proxied, plain, strict=True)]
            cpu_ratios = [p.cpu_us / q.cpu_us for p, q in zip(proxied, plain, strict=True)]
            lines.append(
                f"| {kind} | {pattern} ({unit}) "
                f"| {statistics.median(r.rate for r in plain):,.0f} "
                f"| {statistics.median(r.rate for r in proxied):,.0f} "
                f"| {_median_range(rate_ratios)} "
                f"| {statistics.median(r.cpu_us for r in plain):.1f} "
                f"| {statistics.median(r.cpu_us for r in proxied):.1f} "
                f"| {_median_range(cpu_ratios)} |"
            )
            # Throughput on a saturated server core is 1 / CPU per message: the goal is
            # judged on that, since a shared machine rarely leaves the core to the server.
            if pattern == "messages" and 1 / statistics.median(cpu_ratios) < 0.99:
                ok = False
            if pattern == "connections" and statistics.median(cpu_ratios) > 1.03:
                ok = False
    lines += ["", "Every run:", "", "| round | server | pattern | count | s | rate/s | CPU µs |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in runs:
        lines.append(
            f"| {r.round_no} | {r.server} | {r.pattern} | {r.count} | {r.seconds:.2f} "
            f"| {r.rate:,.0f} | {r.cpu_us:.1f} |"
        )
    return "\n".join(lines) + "\n", ok


def _version(distribution: str) -> str:
    return metadata.version(distribution)


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --- instructions per connection, under callgrind -----------------------------------------


def _connect_sequentially(
    port: int, first_bytes: Callable[[tuple[str, int]], bytes], n: int, batches: int = 0
) -> None:
    """``n`` connections, one after the other: handshake, one echo (or ``batches`` of
    ``BATCH`` echoes), closing handshake."""
    for _ in range(n):
        with socket.socket() as sock:
            sock.settimeout(60)
            # From one address, as the balancer connects: the policy's answer for it is
            # cached after the first connection, as in production.
            sock.connect(("127.0.0.1", port))
            sock.sendall(first_bytes(sock.getsockname()[:2]))
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError(f"closed during the handshake: {response[:60]!r}")
                response += chunk
            if not response.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"no upgrade: {response[:60]!r}")
            for frames, size in [(MESSAGES, BATCH * ECHO_SIZE)] * batches or [(MESSAGE, ECHO_SIZE)]:
                sock.sendall(frames)
                echoed = 0
                while echoed < size:
                    echoed += len(sock.recv(size - echoed))
            sock.sendall(CLOSE)
            while sock.recv(4096):  # the close frame, then the end of the stream
                pass


def instructions(kind: str, variant: str, count: int, workdir: Path, batches: int = 0) -> int:
    """User-space instructions of a server (start-up included) that served ``count``
    connections (each with ``batches`` of ``BATCH`` messages), counted by callgrind."""
    port = _free_port()
    out = workdir / f"callgrind.{kind}.{variant}.{count}.{batches}"
    argv = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--serve", kind, variant, str(port), str(workdir / "cpu"),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    with (workdir / f"{kind}.{variant}.{count}.{batches}.log").open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 180
            while not _listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} {variant} did not start under valgrind")
                time.sleep(0.2)
            server = Server(kind, variant, port, process, workdir / "cpu")
            _connect_sequentially(port, server.first_bytes, count, batches)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no callgrind summary in {out}")
    return int(match.group(1))


def instructions_report(
    counts: tuple[int, int],
    batches: tuple[int, int],
    kinds: tuple[str, ...] = KINDS,
    per_message: bool = True,
) -> str:
    """Instructions per connection and per message, plain and proxied, each server of
    ``kinds``: the difference between two runs over the difference of their counts, so that
    start-up cancels out. Per message (unless ``per_message`` is false): one connection with
    one or the other number of batches."""
    low, high = counts
    few, many = batches
    lines = [
        f"Instructions, by callgrind: per connection from {low} and {high} sequential "
        f"connections (one echo each); per message from one connection echoing "
        f"{few * BATCH} and {many * BATCH} messages ({BATCH} at a time).",
        "",
        "| server | per connection, plain | proxied | ratio "
        "| per message, plain | proxied | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for kind in kinds:
            costs: tuple[dict[str, float], ...] = ({}, {}) if per_message else ({},)
            for variant in VARIANTS:
                spent = instructions(kind, variant, high, workdir)
                spent -= instructions(kind, variant, low, workdir)
                costs[0][variant] = spent / (high - low)
                if per_message:
                    spent = instructions(kind, variant, 1, workdir, many)
                    spent -= instructions(kind, variant, 1, workdir, few)
                    costs[1][variant] = spent / ((many - few) * BATCH)
            cells = []
            for cost in costs:
                plain, proxied = cost["plain"], cost["proxied"]
                cells.append(f"{plain:,.0f} | {proxied:,.0f} | {proxied / plain:.3f}")
            if not per_message:
                cells.append("- | - | -")
            lines.append(f"| {kind} | {' | '.join(cells)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark; exit status 1 if a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s runs")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--instructions",
        type=int,
        nargs=2,
        metavar=("N1", "N2"),
        help="instead: instructions per connection under callgrind (needs valgrind)",
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="with --instructions: count only these servers",
    )
    parser.add_argument(
        "--no-messages",
        action="store_true",
        help="with --instructions: count per connection only",
    )
    parser.add_argument("--serve", nargs=4, help="internal: run one server")
    arguments = parser.parse_args()
    if arguments.serve:
        kind, variant, port, cpu_file = arguments.serve
        with contextlib.suppress(KeyboardInterrupt):  # the end of a callgrind run
            serve(kind, variant, int(port), Path(cpu_file))
        return 0
    if arguments.instructions:
        low, high = arguments.instructions
        text = instructions_report(
            (low, high), (2, 20), tuple(arguments.kinds), not arguments.no_messages
        )
        print(text)
        if arguments.out:
            arguments.out.write_text(text)
        return 0
    rounds, duration = (1, 1.0) if arguments.quick else (arguments.rounds, arguments.duration)
    os.sched_setaffinity(0, {CLIENT_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="websockets-bench-"))
    servers = start_servers(workdir)
    runs: list[Run] = []
    try:
        for round_no in range(1, rounds + 1):
            for kind in KINDS:
                pair = [s for s in servers if s.kind == kind]
                if round_no % 2 == 0:
                    pair.reverse()  # plain first in odd rounds, proxied first in even ones
                for pattern in ("messages", "connections"):
                    for server in pair:
                        run = measure(server, pattern, duration, round_no)
                        runs.append(run)
                        print(json.dumps(run.__dict__), file=sys.stderr, flush=True)
    finally:
        for server in servers:
            server.process.kill()
            server.process.wait()
    text, ok = report(runs, rounds, duration)
    print(text)
    if arguments.out:
        arguments.out.write_text(text)
    if not ok:
        print("*** BENCHMARK GOAL MISSED ***", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
