"""wrk through one HAProxy (mode tcp) against plain uvicorn, proxyproto_mw's uvicorn protocol and
gunicorn's own ASGI worker with PROXY protocol.

    python bench/uvicorn_wrk.py [--duration SECONDS] [--rounds N] [--quick] [--out DIR]

Servers, each one process serving ``bench.app:app`` (200 ``ok``), pinned to CPU 1:

- (a) ``uvicorn --http httptools --loop uvloop``; HAProxy backend without ``send-proxy``;
- (b) ``uvicorn --http proxyproto_mw.uvicorn:HttpToolsProtocol`` with
  ``PROXYPROTO_TRUSTED=127.0.0.1``; HAProxy ``send-proxy`` (v1);
- (c) the same as (b), HAProxy ``send-proxy-v2``;
- (d) ``gunicorn -k asgi --proxy-protocol v1 --proxy-allow-from 127.0.0.1 -w 1``; ``send-proxy``.
- (e) opt-in (``--servers abcde``): gunicorn's ASGI worker without PROXY protocol, a reference
  for (d).

wrk (``-t1 -c32``) and HAProxy (``nbthread 1``) share CPU 0. Two client patterns: keep-alive, and
``Connection: close`` (a new client connection per request; in mode tcp HAProxy ties each client
connection to one backend connection, so every request is a new backend connection carrying a new
PROXY header; the script checks this with HAProxy's own connection counters). Runs alternate
between servers (for each round, for each pattern: a, b, c, d, the order rotated by one every
round) so drift affects all of them alike; the report gives per server the median requests/s
over rounds and its ratio to (a), and the server's CPU per request with its per-round ratio to
(a)'s (min / median / max).

Every run must have zero non-2xx responses and zero socket errors (with ``Connection: close`` a
handful of read errors, at most 0.1 % of the requests, are tolerated and reported: wrk counts an
EOF/RST that races its reconnect as a read error). Anything else aborts with exit status 1.
All processes are started in their own session and killed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
SERVER_CPU: Final = 1
"""The server under test gets a core of its own ..."""
CLIENT_CPU: Final = 0
"""... wrk, HAProxy and this script share the other one."""
CONNECTIONS: Final = 32
GOAL_KEEPALIVE: Final = 0.99
GOAL_NEWCONN: Final = 0.97
READ_ERROR_TOLERANCE: Final = 0.001
"""Share of requests that may end in a wrk read error with ``Connection: close``."""
IDLE_THRESHOLD: Final = 0.15
"""Busy share of a core above which the machine counts as loaded by someone else."""
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PATTERNS: Final = ("keep-alive", "new-conn")


class BenchError(Exception):
    """Something that makes the measurement invalid."""


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    send_proxy: str
    """HAProxy server option: "", "send-proxy" or "send-proxy-v2"."""
    kind: str
    """"uvicorn", "proxyproto" or "gunicorn"."""
    gunicorn_proxy: bool = False

    def command(self, port: int) -> list[str]:
        if self.kind == "gunicorn":
            cmd = [sys.executable, "-m", "gunicorn", "-k", "asgi", "--asgi-loop", "uvloop"]
            if self.gunicorn_proxy:
                cmd += ["--proxy-protocol", "v1", "--proxy-allow-from", "127.0.0.1"]
            return [*cmd, "-w", "1", "-b", f"127.0.0.1:{port}", "bench.app:app"]
        http = "httptools" if self.kind == "uvicorn" else "proxyproto_mw.uvicorn:HttpToolsProtocol"
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            http,
            "--loop",
            "uvloop",
            "--no-access-log",
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PROXYPROTO_MODE", None)
        env.pop("PROXYPROTO_TIMEOUT", None)
        if self.kind == "proxyproto":
            env["PROXYPROTO_TRUSTED"] = "127.0.0.1"
        else:
            env.pop("PROXYPROTO_TRUSTED", None)
        return env

    @property
    def proxied(self) -> bool:
        return bool(self.send_proxy)


SERVERS: Final = {
    "a": Server("a", "(a) uvicorn httptools", "", "uvicorn"),
    "b": Server("b", "(b) proxyproto_mw v1", "send-proxy", "proxyproto"),
    "c": Server("c", "(c) proxyproto_mw v2", "send-proxy-v2", "proxyproto"),
    "d": Server("d", "(d) gunicorn asgi v1", "send-proxy", "gunicorn", gunicorn_proxy=True),
    "e": Server("e", "(e) gunicorn asgi, no PROXY", "", "gunicorn"),
}


@dataclass
class Run:
    round: int
    pattern: str
    server: str
    rps: float
    requests: int
    seconds: float
    non2xx: int
    errors: dict[str, int]
    backend_conns: int
    frontend_conns: int
    cpu_busy: dict[int, float]
    server_cpu: float
    """Seconds of CPU the server's processes used during the run."""
    haproxy_cpu: float
    client_cpu: float
    """Seconds of CPU wrk, HAProxy and this script used during the run."""
    attempts: int = 1

    @property
    def us_per_request(self) -> float:
        return 1e6 * self.server_cpu / self.requests if self.requests else float("nan")

    @property
    def haproxy_us_per_request(self) -> float:
        return 1e6 * self.haproxy_cpu / self.requests if self.requests else float("nan")

    @property
    def foreign_cpu1(self) -> float:
        """Busy share of the server's core not spent by the server (other processes)."""
        return max(0.0, self.cpu_busy[SERVER_CPU] - self.server_cpu / self.seconds)

    @property
    def foreign_cpu0(self) -> float:
        """Busy share of the client core not spent by wrk, HAProxy or this script."""
        return max(0.0, self.cpu_busy[CLIENT_CPU] - self.client_cpu / self.seconds)

    @property
    def other_load(self) -> float:
        """The larger share of a core that other processes took during the run."""
        return max(self.foreign_cpu0, self.foreign_cpu1)


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Bench:
    workdir: Path
    servers: list[Server]
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)
    """server key -> (frontend port, backend port)."""
    procs: dict[str, Managed] = field(default_factory=dict)
    stats_socket: Path = Path()

    # --- processes -------------------------------------------------------------------------

    def spawn(self, name: str, cmd: Sequence[str], cpu: int, env: dict[str, str]) -> Managed:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), *cmd],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        managed = Managed(name, proc, log)
        self.procs[name] = managed
        return managed

    def stop_all(self) -> None:
        for managed in reversed(list(self.procs.values())):
            _stop(managed.proc)

    def check_alive(self) -> None:
        for managed in self.procs.values():
            if managed.proc.poll() is not None:
                raise BenchError(
                    f"{managed.name} exited with status {managed.proc.returncode}:\n"
                    + _tail(managed.log)
                )

    # --- set-up ----------------------------------------------------------------------------

    def start(self) -> None:
        ports = _free_ports(2 * len(self.servers))
        for i, server in enumerate(self.servers):
            self.ports[server.key] = (ports[2 * i], ports[2 * i + 1])
        self.stats_socket = self.workdir / "haproxy.sock"
        config = self.workdir / "haproxy.cfg"
        config.write_text(self.haproxy_config())
        check = subprocess.run(
            ["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise BenchError(f"haproxy -c failed:\n{check.stdout.decode()}{check.stderr.decode()}")
        for server in self.servers:
            backend = self.ports[server.key][1]
            self.spawn(server.key, server.command(backend), SERVER_CPU, server.env())
        self.spawn("haproxy", ["haproxy", "-db", "-f", str(config)], CLIENT_CPU, dict(os.environ))
        deadline = time.monotonic() + START_TIMEOUT
        for server in self.servers:
            self.wait_ready(server, deadline)
            self.check_client_address(server)

    def haproxy_config(self) -> str:
        lines = [
            "global",
            "    nbthread 1",
            "    maxconn 8000",
            f"    stats socket {self.stats_socket} mode 600 level user",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
        ]
        for server in self.servers:
            frontend, backend = self.ports[server.key]
            option = f" {server.send_proxy}" if server.send_proxy else ""
            lines += [
                f"frontend f_{server.key}",
                f"    bind 127.0.0.1:{frontend}",
                f"    default_backend b_{server.key}",
                f"backend b_{server.key}",
                f"    server s_{server.key} 127.0.0.1:{backend}{option}",
            ]
        return "\n".join(lines) + "\n"

    def wait_ready(self, server: Server, deadline: float) -> None:
        frontend = self.ports[server.key][0]
        while True:
            self.check_alive()
            try:
                status, _ = _get(frontend, "/")
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{server.label} not ready through HAProxy after {START_TIMEOUT:g} s:\n"
                    + _tail(self.procs[server.key].log)
                )
            time.sleep(0.1)

    def check_client_address(self, server: Server) -> None:
        """A server behind send-proxy must report our own socket as the client."""
        frontend = self.ports[server.key][0]
        with socket.create_connection(("127.0.0.1", frontend), timeout=5) as sock:
            own = "{}:{}".format(*sock.getsockname()[:2])
            sock.sendall(b"GET /client HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"{server.label}: GET /client answered {head[:80]!r}")
        seen = body.decode()
        if server.proxied and seen != own:
            raise BenchError(
                f"{server.label}: the app sees client {seen}, expected {own} from the PROXY header"
            )
        if not server.proxied and seen == own:
            raise BenchError(f"{server.label}: without PROXY header the app cannot see {own}")

    # --- measurement -----------------------------------------------------------------------

    def wait_idle(self, limit: float) -> float:
        """Wait (up to ``limit`` seconds) until other processes leave both cores nearly idle.

        The machine may be shared; the servers are idle between runs, so any load now is
        someone else's. Returns the busiest core's share in the last sample.
        """
        deadline = time.monotonic() + limit
        while True:
            before = _cpu_times()
            time.sleep(0.3)
            after = _cpu_times()
            busiest = max(_busy_share(before[cpu], after[cpu]) for cpu in before)
            if busiest <= IDLE_THRESHOLD or time.monotonic() >= deadline:
                return busiest

    def backend_counters(self) -> dict[str, dict[str, int]]:
        """HAProxy's per-proxy counters: {"f_a"|"b_a": {"stot", "connect", "econ", ...}}."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        names = lines[0].lstrip("# ").split(",")
        result: dict[str, dict[str, int]] = {}
        for line in lines[1:]:
            row = dict(zip(names, line.split(","), strict=False))
            if row.get("svname") not in ("FRONTEND", "BACKEND"):
                continue
            counters = {
                key: int(row[key])
                for key in ("stot", "connect", "econ", "eresp", "srv_abrt", "cli_abrt")
                if row.get(key, "").isdigit()
            }
            result[row["pxname"]] = counters
        return result

    def run(self, server: Server, pattern: str, duration: float, round_no: int) -> Run:
        self.check_alive()
        frontend = self.ports[server.key][0]
        cmd = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{CONNECTIONS}"]
        cmd += [f"-d{duration:g}s", "--timeout", "2s"]
        if pattern == "new-conn":
            cmd += ["-H", "Connection: close"]
        cmd.append(f"http://127.0.0.1:{frontend}/")
        before_stats = self.backend_counters()
        before_cpu = _cpu_times()
        before_server = _session_cpu(self.procs[server.key].proc.pid)
        before_haproxy = _session_cpu(self.procs["haproxy"].proc.pid)
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        before_self = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, timeout=duration + 30, check=False)
        elapsed = time.monotonic() - started
        after_self = resource.getrusage(resource.RUSAGE_SELF)
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        after_haproxy = _session_cpu(self.procs["haproxy"].proc.pid)
        after_server = _session_cpu(self.procs[server.key].proc.pid)
        after_cpu = _cpu_times()
        after_stats = self.backend_counters()
        output = result.stdout.decode() + result.stderr.decode()
        if result.returncode != 0:
            raise BenchError(f"wrk failed ({result.returncode}):\n{output}")
        parsed = _parse_wrk(output)
        backend = after_stats[f"b_{server.key}"]
        frontend_counters = after_stats[f"f_{server.key}"]
        old_backend = before_stats[f"b_{server.key}"]
        old_frontend = before_stats[f"f_{server.key}"]
        conns = backend.get("connect", backend["stot"]) - old_backend.get(
            "connect", old_backend["stot"]
        )
        busy = {
            cpu: _busy_share(before_cpu[cpu], after_cpu[cpu]) for cpu in (CLIENT_CPU, SERVER_CPU)
        }
        run = Run(
            round=round_no,
            pattern=pattern,
            server=server.key,
            rps=parsed.rps,
            requests=parsed.requests,
            seconds=parsed.seconds,
            non2xx=parsed.non2xx,
            errors=parsed.errors,
            backend_conns=conns,
            frontend_conns=frontend_counters["stot"] - old_frontend["stot"],
            cpu_busy=busy,
            server_cpu=_delta_cpu(before_server, after_server),
            haproxy_cpu=(haproxy_cpu := _delta_cpu(before_haproxy, after_haproxy)),
            client_cpu=haproxy_cpu
            + _rusage_seconds(before_children, after_children)
            + _rusage_seconds(before_self, after_self),
        )
        econ = backend.get("econ", 0) - old_backend.get("econ", 0)
        self.validate(server, run, econ, output, elapsed)
        return run

    def validate(self, server: Server, run: Run, econ: int, output: str, elapsed: float) -> None:
        problems = []
        if run.requests == 0:
            problems.append("no request completed")
        if run.non2xx:
            problems.append(f"{run.non2xx} non-2xx responses")
        hard = {kind: n for kind, n in run.errors.items() if n and kind != "read"}
        if hard:
            problems.append(f"socket errors {hard}")
        read = run.errors.get("read", 0)
        if read and (run.pattern == "keep-alive" or read > READ_ERROR_TOLERANCE * run.requests):
            problems.append(f"{read} read errors")
        if econ:
            problems.append(f"HAProxy counted {econ} failed backend connections")
        errors = sum(run.errors.values())
        if run.pattern == "keep-alive":
            # wrk opens one probe connection before its CONNECTIONS clients.
            if not 1 <= run.backend_conns <= CONNECTIONS + 1 + errors:
                problems.append(
                    f"{run.backend_conns} backend connections for {CONNECTIONS} keep-alive clients"
                )
        # new-conn: every completed request had its own backend connection (and PROXY
        # header); add wrk's probe and one connection per client in flight when wrk stops.
        elif not run.requests < run.backend_conns <= run.requests + CONNECTIONS + 1 + errors:
            problems.append(
                f"{run.backend_conns} backend connections for {run.requests} requests: "
                "not one new backend connection per request"
            )
        if run.frontend_conns != run.backend_conns:
            problems.append(
                f"{run.frontend_conns} client connections but {run.backend_conns} backend ones"
            )
        if problems:
            raise BenchError(
                f"{server.label}, {run.pattern}, round {run.round}: "
                + "; ".join(problems)
                + f"\n--- wrk output ({elapsed:.1f} s) ---\n{output}"
            )

    def check_logs(self) -> None:
        """No rejected connection, traceback or error line in any server log."""
        bad = re.compile(r"Traceback|closing connection|\bERROR\b|CRITICAL|WORKER TIMEOUT")
        for server in self.servers:
            log = self.procs[server.key].log
            hits = [
                line for line in log.read_text(errors="replace").splitlines() if bad.search(line)
            ]
            if hits:
                raise BenchError(f"{server.label} logged errors:\n" + "\n".join(hits[:20]))


# --- helpers -----------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's session, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            # The leader is gone; members of its group may remain.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy jiffies, total jiffies) from /proc/stat."""
    result = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = [int(v) for v in fields[:8]]
                idle = values[3] + values[4]
                result[int(name[3:])] = (sum(values) - idle, sum(values))
    return result


def _busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def _session_cpu(session: int) -> dict[int, int]:
    """utime + stime (jiffies) of every process in ``session``."""
    result = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            result[int(entry.name)] = int(fields[11]) + int(fields[12])
    return result


def _rusage_seconds(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _delta_cpu(before: dict[int, int], after: dict[int, int]) -> float:
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / CLK_TCK


@dataclass
class WrkResult:
    rps: float
    requests: int
    seconds: float
    non2xx: int
    errors: dict[str, int]


_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _parse_wrk(output: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rate is None:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors = dict(zip(errors, map(int, socket_errors.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        rps=float(rate.group(1)),
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _UNITS[total.group(3)],
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=errors,
    )


# --- report ------------------------------------------------------------------------------------


@dataclass
class Summary:
    server: Server
    median: dict[str, float]
    ratio: dict[str, float]
    spread: dict[str, tuple[float, float]]
    """Lowest and highest req/s over the rounds."""
    round_ratios: dict[str, list[float]]
    """Per round: req/s over (a)'s req/s in the same round (they ran next to each other)."""
    us_per_request: dict[str, float]
    haproxy_us_per_request: dict[str, float]
    cpu_ratios: dict[str, list[float]]
    """Per round: server CPU per request over (a)'s in the same round."""


def summarize(servers: list[Server], runs: list[Run]) -> list[Summary]:
    medians = {
        (s.key, p): statistics.median(r.rps for r in runs if r.server == s.key and r.pattern == p)
        for s in servers
        for p in PATTERNS
    }
    base = {(r.round, r.pattern): r.rps for r in runs if r.server == "a"}
    base_cpu = {(r.round, r.pattern): r.us_per_request for r in runs if r.server == "a"}
    result = []
    for server in servers:
        mine = {p: [r for r in runs if r.server == server.key and r.pattern == p] for p in PATTERNS}
        result.append(
            Summary(
                server=server,
                median={p: medians[server.key, p] for p in PATTERNS},
                ratio={p: medians[server.key, p] / medians["a", p] for p in PATTERNS},
                spread={
                    p: (min(r.rps for r in mine[p]), max(r.rps for r in mine[p])) for p in PATTERNS
                },
                round_ratios={p: [r.rps / base[r.round, p] for r in mine[p]] for p in PATTERNS},
                us_per_request={
                    p: statistics.median(r.us_per_request for r in mine[p]) for p in PATTERNS
                },
                haproxy_us_per_request={
                    p: statistics.median(r.haproxy_us_per_request for r in mine[p])
                    for p in PATTERNS
                },
                cpu_ratios={
                    p: [r.us_per_request / base_cpu[r.round, p] for r in mine[p]] for p in PATTERNS
                },
            )
        )
    return result


def summary_table(summaries: list[Summary]) -> str:
    rows = [
        "| server | keep-alive req/s | ratio | new-conn req/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        rows.append(
            f"| {s.server.label} | {s.median['keep-alive']:,.0f} | {s.ratio['keep-alive']:.3f} "
            f"| {s.median['new-conn']:,.0f} | {s.ratio['new-conn']:.3f} |"
        )
    return "\n".join(rows)


def detail_table(servers: list[Server], runs: list[Run]) -> str:
    labels = {s.key: s.label for s in servers}
    rows = [
        "| round | pattern | server | req/s | requests | backend conns | server CPU us/req "
        "| server core busy | client core busy | HAProxy CPU | other load server / client core "
        "| attempts | read errors |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        rows.append(
            f"| {r.round} | {r.pattern} | {labels[r.server]} | {r.rps:,.0f} | {r.requests:,} "
            f"| {r.backend_conns:,} | {r.us_per_request:.1f} | {r.cpu_busy[SERVER_CPU]:.0%} "
            f"| {r.cpu_busy[CLIENT_CPU]:.0%} | {r.haproxy_cpu / r.seconds:.0%} "
            f"| {r.foreign_cpu1:.0%} / {r.foreign_cpu0:.0%} | {r.attempts} "
            f"| {r.errors.get('read', 0)} |"
        )
    return "\n".join(rows)


def spread_table(summaries: list[Summary]) -> str:
    rows = [
        "| server | keep-alive req/s min-max | per-round ratio min / median / max "
        "| new-conn req/s min-max | per-round ratio min / median / max |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summaries:
        cells = []
        for p in PATTERNS:
            low, high = s.spread[p]
            ratios = s.round_ratios[p]
            cells.append(f"{low:,.0f}-{high:,.0f}")
            cells.append(f"{min(ratios):.3f} / {statistics.median(ratios):.3f} / {max(ratios):.3f}")
        rows.append(f"| {s.server.label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cost_table(summaries: list[Summary]) -> str:
    rows = [
        "| server | keep-alive us/req | delta to (a) | per-round CPU ratio min / median / max "
        "| new-conn us/req | delta to (a) | per-round CPU ratio min / median / max "
        "| HAProxy new-conn us/req | delta to (a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = summaries[0].us_per_request
    haproxy_base = summaries[0].haproxy_us_per_request["new-conn"]
    for s in summaries:
        k, n = s.us_per_request["keep-alive"], s.us_per_request["new-conn"]
        h = s.haproxy_us_per_request["new-conn"]
        spread = {
            p: f"{min(r):.3f} / {statistics.median(r):.3f} / {max(r):.3f}"
            for p, r in s.cpu_ratios.items()
        }
        rows.append(
            f"| {s.server.label} | {k:.1f} | {k - base['keep-alive']:+.1f} "
            f"| {spread['keep-alive']} | {n:.1f} | {n - base['new-conn']:+.1f} "
            f"| {spread['new-conn']} | {h:.1f} | {h - haproxy_base:+.1f} |"
        )
    return "\n".join(rows)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _first_line(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"? ({error})"
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "?"


def environment() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    revision = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "proxyproto_mw"],
        capture_output=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return {
        "CPU": f"{cpu}, {os.cpu_count()} CPUs",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "proxyproto-mw": f"{_version('proxyproto-mw')} (git {revision}"
        + (", proxyproto_mw/ modified)" if dirty else ")"),
        "uvicorn": _version("uvicorn"),
        "httptools": _version("httptools"),
        "uvloop": _version("uvloop"),
        "gunicorn": _version("gunicorn"),
        "gunicorn_h1c": _version("gunicorn_h1c"),
        "HAProxy": _first_line(["haproxy", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
    }


def write_markdown(
    path: Path,
    *,
    servers: list[Server],
    runs: list[Run],
    summaries: list[Summary],
    args: argparse.Namespace,
    env: dict[str, str],
    bench: Bench,
) -> None:
    commands = "\n".join(
        f"- {s.label}: `{' '.join(['taskset', '-c', str(SERVER_CPU), *_display(s)])}`"
        + (" (env `PROXYPROTO_TRUSTED=127.0.0.1`)" if s.kind == "proxyproto" else "")
        + f"; HAProxy backend `{s.send_proxy or 'no send-proxy'}`"
        for s in servers
    )
    worst_load = max((r.other_load for r in runs), default=0.0)
    retried = sum(r.attempts > 1 for r in runs)
    text = f"""# uvicorn behind HAProxy: plain vs proxyproto_mw vs gunicorn's ASGI worker

Generated by `python bench/uvicorn_wrk.py --duration {args.duration:g} --rounds {args.rounds}` on
{datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}.

{chr(10).join(f"- {k}: {v}" for k, v in env.items())}

Set-up: one HAProxy (mode tcp, `nbthread 1`, frontend and backend on 127.0.0.1), wrk
`-t1 -c{CONNECTIONS} -d{args.duration:g}s` (keep-alive) or the same with `-H "Connection: close"`
(new-conn: every request is a new client connection, so a new backend connection with a new PROXY
header; checked with HAProxy's connection counters). wrk and HAProxy on CPU {CLIENT_CPU}, the server
(one process / worker) on CPU {SERVER_CPU}. Servers alternate within each round and pattern, in an
order rotated every round; values are medians over {args.rounds} round(s) of {args.duration:g} s,
ratios are to (a).

{commands}

## Summary

{summary_table(summaries)}

Goals for proxyproto_mw: ratio >= {GOAL_KEEPALIVE} keep-alive, >= {GOAL_NEWCONN} new-conn.

## Spread over rounds

The per-round ratio compares runs that were next to each other in time; when it and the ratio of
medians disagree, or the req/s range is wide, the machine was noisy.

{spread_table(summaries)}

## Server CPU per request (median over rounds, and the per-round ratio to (a))

Server-process CPU time divided by completed requests (from /proc). Less sensitive than req/s to
other load on the machine, though not immune (shared caches, and a starved server batches more
requests per wake-up). The last two columns are HAProxy's CPU time per request with a new
connection per request: what sending the PROXY header costs the balancer, on the core it shares
with wrk. When that core is close to 100 % busy (see "client core busy" below), the new-conn
req/s is bounded by the client side, and that cost lowers the ratios of (b) to (d) whatever the
server does.

{cost_table(summaries)}

## Every run

"Other load": the share of each core that neither the server (CPU {SERVER_CPU}) nor wrk, HAProxy
and this script (CPU {CLIENT_CPU}) used, that is other processes on the machine (and some kernel
network work). A run with more than {args.max_other_load:.0%} was repeated up to {args.retries}
time(s), keeping the least disturbed attempt; {retried} of {len(runs)} runs were repeated, and the
largest other load kept was {worst_load:.0%}. A server core near 100 % busy with the client core
below 100 % means the server is the bottleneck, as intended; with the client core at 100 % the
ratio understates the server's own difference (see the CPU per request table).

{detail_table(servers, runs)}

## HAProxy configuration

```
{bench.haproxy_config()}```
"""
    path.write_text(text)


def _display(server: Server) -> list[str]:
    cmd = server.command(0)
    cmd[0:1] = ["python"]
    return [{"0": "PORT", "127.0.0.1:0": "127.0.0.1:PORT"}.get(part, part) for part in cmd]


def write_chart(path: Path, summaries: list[Summary]) -> None:
    # Imported here: bench/live_cost.py borrows this module's servers without matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    labels = [s.server.label for s in summaries]
    keep = [s.ratio["keep-alive"] for s in summaries]
    new = [s.ratio["new-conn"] for s in summaries]
    fig = Figure(figsize=(13, 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    zoom = [i for i, s in enumerate(summaries) if s.server.kind != "gunicorn"]
    for ax, index, title in (
        (axes[0], list(range(len(summaries))), "all servers"),
        (axes[1], zoom, "zoom: uvicorn and proxyproto_mw"),
    ):
        xs = list(range(len(index)))
        width = 0.38
        bars_keep = ax.bar(
            [x - width / 2 for x in xs],
            [keep[i] for i in index],
            width,
            label="keep-alive",
            color="#4c72b0",
        )
        bars_new = ax.bar(
            [x + width / 2 for x in xs],
            [new[i] for i in index],
            width,
            label="new connection per request",
            color="#dd8452",
        )
        ax.bar_label(bars_keep, fmt="%.3f", fontsize=8)
        ax.bar_label(bars_new, fmt="%.3f", fontsize=8)
        ax.axhline(
            GOAL_KEEPALIVE,
            color="#4c72b0",
            linestyle="--",
            linewidth=1,
            label=f"goal keep-alive {GOAL_KEEPALIVE}",
        )
        ax.axhline(
            GOAL_NEWCONN,
            color="#dd8452",
            linestyle=":",
            linewidth=1.5,
            label=f"goal new-conn {GOAL_NEWCONN}",
        )
        ax.set_xticks(xs, [labels[i] for i in index], rotation=15, ha="right", fontsize=9)
        ax.set_title(title)
        ax.set_ylabel("req/s relative to (a) plain uvicorn")
        values = [keep[i] for i in index] + [new[i] for i in index]
        if index is zoom:
            ax.set_ylim(min(0.9, min(values) - 0.02), max(1.03, max(values) + 0.02))
        else:
            ax.set_ylim(0, max(1.15, max(values) + 0.1))
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("PROXY protocol behind HAProxy (wrk -c32, one server process)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main --------------------------------------------------------------------------------------


def measure(
    bench: Bench, server: Server, pattern: str, round_no: int, args: argparse.Namespace
) -> Run:
    """One recorded run; repeated (up to --retries times) while other processes disturb it."""
    best: Run | None = None
    made = 0
    for attempt in range(1, args.retries + 2):
        spare = args.deadline - time.monotonic()
        if attempt > 1 and spare <= 0:
            print("time budget spent: keeping the disturbed run", flush=True)
            break
        busy = bench.wait_idle(max(0.0, min(args.wait_idle, spare)))
        if busy > IDLE_THRESHOLD:
            print(f"warning: other processes keep a core {busy:.0%} busy", flush=True)
        run = bench.run(server, pattern, args.duration, round_no)
        made = attempt
        disturbed = run.other_load > args.max_other_load
        print(
            f"round {round_no} {pattern:10} {server.label:28} "
            f"{run.rps:9,.0f} req/s  {run.us_per_request:6.1f} us/req  "
            f"server core {run.cpu_busy[SERVER_CPU]:4.0%}  "
            f"client core {run.cpu_busy[CLIENT_CPU]:4.0%}  "
            f"other load {run.other_load:4.0%}  backend conns {run.backend_conns:,}"
            + ("  (disturbed)" if disturbed else ""),
            flush=True,
        )
        if best is None or run.other_load < best.other_load:
            best = run
        if not disturbed:
            break
    assert best is not None
    best.attempts = made
    return best


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"interrupted by signal {signum}")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="uvicorn_wrk."))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="wrk through one HAProxy (mode tcp) against plain uvicorn, proxyproto_mw's "
        "uvicorn protocol (PROXY v1 and v2) and gunicorn's ASGI worker with PROXY protocol; "
        "see bench/README.md."
    )
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, help="rounds over all servers (default 8)")
    parser.add_argument("--quick", action="store_true", help="2 s runs, 1 round")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="where uvicorn.md and uvicorn.png go (default bench/results)",
    )
    parser.add_argument(
        "--servers", default="abcd", help="which servers, from abcde (default abcd; a is required)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for other load to stop (default 10)",
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.05,
        help="a run during which other processes took more than this share of a core is "
        "repeated (default 0.05)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeat a disturbed run at most this many times, keep the least disturbed one "
        "(default 2)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=2400.0,
        help="seconds after which disturbed runs are no longer repeated nor waits made "
        "(default 2400)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="copy server logs to --out")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 8
    if args.duration <= 0 or args.rounds < 1:
        parser.error("--duration must be positive and --rounds at least 1")
    keys = list(dict.fromkeys(args.servers))
    if keys[:1] != ["a"] or not set(keys) <= set(SERVERS):
        parser.error("--servers must start with a and use letters from abcde")
    for tool in ("haproxy", "wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found (apt-get install -y haproxy wrk util-linux)")
    if (os.cpu_count() or 1) < 2:
        parser.error("needs two CPUs (server on CPU 1, wrk and HAProxy on CPU 0)")
    signal.signal(signal.SIGTERM, _terminate)
    # This script only sleeps during runs; keep it off the server's core anyway.
    os.sched_setaffinity(0, {CLIENT_CPU})
    args.deadline = time.monotonic() + args.budget
    servers = [SERVERS[k] for k in keys]
    env = environment()
    runs: list[Run] = []
    with _workdir() as workdir:
        bench = Bench(workdir, servers)
        try:
            bench.start()
            print(
                f"servers ready; {args.rounds} round(s) x {len(PATTERNS)} patterns x "
                f"{len(servers)} servers x {args.duration:g} s",
                flush=True,
            )
            for server in servers:  # warm-up, not recorded
                for pattern in PATTERNS:
                    bench.run(server, pattern, min(2.0, args.duration), 0)
            for round_no in range(1, args.rounds + 1):
                # The order rotates every round: no server always runs first or last.
                shift = (round_no - 1) % len(servers)
                order = servers[shift:] + servers[:shift]
                for pattern in PATTERNS:
                    for server in order:
                        run = measure(bench, server, pattern, round_no, args)
                        runs.append(run)
            bench.check_alive()
        except BenchError as error:
            print(f"\n*** BENCHMARK FAILED ***\n{error}", file=sys.stderr)
            return 1
        finally:
            bench.stop_all()
            if args.keep_logs:
                args.out.mkdir(parents=True, exist_ok=True)
                for managed in bench.procs.values():
                    shutil.copy(managed.log, args.out / f"uvicorn_wrk.{managed.name}.log")
        try:
            bench.check_logs()
        except BenchError as error:
            print(f"\n*** BENCHMARK FAILED ***\n{error}", file=sys.stderr)
            return 1
        summaries = summarize(servers, runs)
        table = summary_table(summaries)
        print()
        print(table)
        print()
        print(spread_table(summaries))
        print()
        print(cost_table(summaries))
        args.out.mkdir(parents=True, exist_ok=True)
        write_markdown(
            args.out / "uvicorn.md",
            servers=servers,
            runs=runs,
            summaries=summaries,
            args=args,
            env=env,
            bench=bench,
        )
        try:
            write_chart(args.out / "uvicorn.png", summaries)
        except ModuleNotFoundError as error:  # matplotlib: pip install -e '.[bench]'
            print(f"\nwrote {args.out / 'uvicorn.md'}; no chart ({error})")
        else:
            print(f"\nwrote {args.out / 'uvicorn.md'} and {args.out / 'uvicorn.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
