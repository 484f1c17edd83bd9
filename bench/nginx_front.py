"""nginx in front of uvicorn, against uvicorn reading the PROXY header itself, behind one HAProxy.

    python bench/nginx_front.py [--duration SECONDS] [--rounds N]

HAProxy (mode tcp, ``send-proxy-v2``, ``nbthread 1``) stands for the load balancer. Behind it,
on the "app host" (CPU 1), four paths serve ``bench.app:app``:

- ``proxyproto-mw``: ``uvicorn --http proxyproto_mw.uvicorn:HttpToolsProtocol``;
- ``nginx``: one nginx worker, ``listen ... proxy_protocol``, ``real_ip_header
  proxy_protocol``, ``proxy_pass`` to an ``upstream`` with ``keepalive 32`` (connections to
  uvicorn are reused), ``X-Forwarded-For $proxy_protocol_addr``; behind it plain ``uvicorn
  --http httptools`` believing that header from 127.0.0.1;
- ``proxyproto-mw TLS``: ``proxyproto-mw serve --ssl-keyfile ... --ssl-certfile ...`` (TLS
  after the header, terminated in the Python process);
- ``nginx TLS``: the same nginx with ``listen ... ssl proxy_protocol``, the same uvicorn.

All use uvloop and a 2048-bit RSA certificate for TLS. wrk (``-t1 -c32``) and HAProxy share
CPU 0. Two client patterns: keep-alive, and ``Connection: close`` (every request a new client
connection: a new connection from HAProxy, a new PROXY header and, with TLS, a new
handshake). Each round runs every pattern and path in turn. The report gives, per pattern and
path, the median over rounds of: requests/s; the app host's CPU time per request (uvicorn,
plus nginx); and the Python process's share of it, which is what limits a uvicorn worker.
Before measuring, each path must report the benchmark's own loopback address (127.0.0.2),
not HAProxy's. A run with a non-2xx response, or with read errors above 0.1 % of requests
(any, with keep-alive), aborts with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.uvicorn_wrk import (
    CLIENT_CPU,
    CLK_TCK,
    CONNECTIONS,
    READ_ERROR_TOLERANCE,
    REPO,
    SERVER_CPU,
    BenchError,
    _free_ports,
    _parse_wrk,
    _session_cpu,
    _stop,
)

PATTERNS: Final = ("keep-alive", "new-conn")


@dataclass(frozen=True)
class Route:
    """One way from HAProxy to the app: the processes on the app host that serve it."""

    name: str
    tls: bool
    app_host: tuple[str, ...]
    """Names of the processes whose CPU time counts, the Python one last."""


ROUTES: Final = (
    Route("proxyproto-mw", False, ("uvicorn-p",)),
    Route("nginx", False, ("nginx", "uvicorn-n")),
    Route("proxyproto-mw TLS", True, ("serve-tls",)),
    Route("nginx TLS", True, ("nginx", "uvicorn-n")),
)


@dataclass
class Result:
    """One wrk run through one route."""

    route: str
    pattern: str
    rps: float
    requests: int
    app_cpu_us: float
    """CPU time of the app host's processes per request, in microseconds."""
    python_cpu_us: float
    """The Python server's part of it."""


def _uvicorn(port: int, http: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "bench.app:app", "--host", "127.0.0.1",
        "--port", str(port), "--http", http, "--loop", "uvloop", "--no-access-log", *extra,
    ]  # fmt: skip


def _nginx_config(ports: tuple[int, int], upstream: int, workdir: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    location = """
        set_real_ip_from 127.0.0.1;
        real_ip_header proxy_protocol;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_protocol_addr;
        }"""
    return f"""\
{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{ports[0]} proxy_protocol;{location}
    }}
    server {{
        listen 127.0.0.1:{ports[1]} ssl proxy_protocol;
        ssl_certificate {workdir}/cert.pem;
        ssl_certificate_key {workdir}/key.pem;{location}
    }}
}}
"""


def _haproxy_config(backends: dict[int, int]) -> str:
    """HAProxy's front port to its backend port, each with ``send-proxy-v2``."""
    sections = [
        "global\n    nbthread 1\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
        "    timeout server 30s\n"
    ]
    for front, backend in backends.items():
        sections.append(
            f"listen front{front}\n    bind 127.0.0.1:{front}\n"
            f"    server app 127.0.0.1:{backend} send-proxy-v2\n"
        )
    return "".join(sections)


class Processes:
    """Processes started in their own session, pinned to a CPU, stopped at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: Sequence[str], cpu: int, env: dict[str, str]) -> None:
        """Start ``argv`` on ``cpu``; its output goes to ``<workdir>/<name>.log``."""
        with (self.workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[name] = process

    def cpu_seconds(self, name: str) -> float:
        """utime + stime so far of the session of ``name``."""
        return sum(_session_cpu(self.started[name].pid).values()) / CLK_TCK

    def stop_all(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        for process in self.started.values():
            _stop(process)


def _client_seen(port: int, tls: bool) -> str:
    """``GET /client`` from 127.0.0.2 through ``port``: the address the app reports."""
    with socket.create_connection(("127.0.0.1", port), 2, ("127.0.0.2", 0)) as raw:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # our own throwaway certificate
        sock = context.wrap_socket(raw) if tls else raw
        sock.sendall(b"GET /client HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        response = b""
        with contextlib.suppress(ssl.SSLEOFError):
            while chunk := sock.recv(65536):
                response += chunk
    return response.rpartition(b"\r\n\r\n")[2].decode()


def _wait_ready(port: int, tls: bool, deadline: float) -> None:
    while True:
        with contextlib.suppress(OSError):
            if _client_seen(port, tls).startswith("127.0.0.2:"):
                return
        if time.monotonic() > deadline:
            raise BenchError(f"port {port} did not report the client's address 127.0.0.2")
        time.sleep(0.2)


def _run(processes: Processes, route: Route, pattern: str, port: int, duration: float) -> Result:
    argv = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{CONNECTIONS}"]
    argv += [f"-d{duration:g}s"]
    if pattern == "new-conn":
        argv += ["-H", "Connection: close"]
    scheme = "https" if route.tls else "http"
    before = [processes.cpu_seconds(name) for name in route.app_host]
    done = subprocess.run(
        [*argv, f"{scheme}://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    after = [processes.cpu_seconds(name) for name in route.app_host]
    wrk = _parse_wrk(done.stdout)
    errors = sum(wrk.errors.values())
    tolerated = 0 if pattern == "keep-alive" else READ_ERROR_TOLERANCE * wrk.requests
    if wrk.non2xx or errors > tolerated:
        raise BenchError(f"{route.name} {pattern}: {wrk.non2xx} non-2xx, errors {wrk.errors}")
    spent = [end - start for start, end in zip(before, after, strict=True)]
    per_request = 1e6 / wrk.requests
    return Result(
        route.name,
        pattern,
        wrk.rps,
        wrk.requests,
        sum(spent) * per_request,
        spent[-1] * per_request,
    )


def _certificate(workdir: Path) -> None:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-days", "2", "-keyout", str(workdir / "key.pem"), "-out", str(workdir / "cert.pem"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip


@contextlib.contextmanager
def _topology(workdir: Path) -> Iterator[tuple[Processes, dict[str, int]]]:
    """Every route running: the processes, and HAProxy's front port of each route."""
    _certificate(workdir)
    uvicorn_p, serve_tls, uvicorn_n, nginx_http, nginx_tls, *fronts = _free_ports(9)
    processes = Processes(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXYPROTO_")}
    trusting = {**env, "PROXYPROTO_TRUSTED": "127.0.0.1"}
    try:
        processes.spawn(
            "uvicorn-p",
            _uvicorn(uvicorn_p, "proxyproto_mw.uvicorn:HttpToolsProtocol"),
            SERVER_CPU,
            trusting,
        )
        serve = [
            sys.executable, "-m", "proxyproto_mw.cli", "serve", "bench.app:app",
            "--host", "127.0.0.1", "--port", str(serve_tls), "--http", "httptools",
            "--loop", "uvloop", "--no-access-log",
            "--ssl-keyfile", str(workdir / "key.pem"), "--ssl-certfile", str(workdir / "cert.pem"),
        ]  # fmt: skip
        processes.spawn("serve-tls", serve, SERVER_CPU, trusting)
        processes.spawn(
            "uvicorn-n",
            _uvicorn(uvicorn_n, "httptools", ["--forwarded-allow-ips", "127.0.0.1"]),
            SERVER_CPU,
            env,
        )
        config = workdir / "nginx.conf"
        config.write_text(_nginx_config((nginx_http, nginx_tls), uvicorn_n, workdir))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-c", str(config), "-p", f"{workdir}/", "-e", f"{workdir}/nginx-error.log"]
        processes.spawn("nginx", [*argv, "-g", "daemon off;"], SERVER_CPU, env)
        backends = dict(zip(fronts, (uvicorn_p, nginx_http, serve_tls, nginx_tls), strict=True))
        haproxy_config = workdir / "haproxy.cfg"
        haproxy_config.write_text(_haproxy_config(backends))
        haproxy = ["haproxy", "-f", str(haproxy_config), "-db"]
        processes.spawn("haproxy", haproxy, CLIENT_CPU, env)
        ports = {route.name: port for route, port in zip(ROUTES, fronts, strict=True)}
        deadline = time.monotonic() + 30
        for route in ROUTES:
            _wait_ready(ports[route.name], route.tls, deadline)
        yield processes, ports
    finally:
        processes.stop_all()


def measure(duration: float, rounds: int, workdir: Path) -> list[Result]:
    """Every round: each pattern, each route in turn."""
    results = []
    with _topology(workdir) as (processes, ports):
        for _ in range(rounds):
            for pattern in PATTERNS:
                for route in ROUTES:
                    result = _run(processes, route, pattern, ports[route.name], duration)
                    results.append(result)
                    print(result, file=sys.stderr)
    return results


def report(results: list[Result]) -> str:
    """Markdown: per pattern and route, the medians over rounds."""
    lines = [
        "| pattern | route | req/s | app host CPU per request (us) | of which Python (us) |",
        "|---|---|---:|---:|---:|",
    ]
    for pattern in PATTERNS:
        for route in ROUTES:
            runs = [r for r in results if (r.route, r.pattern) == (route.name, pattern)]
            rps = statistics.median(r.rps for r in runs)
            cpu = statistics.median(r.app_cpu_us for r in runs)
            python = statistics.median(r.python_cpu_us for r in runs)
            lines.append(f"| {pattern} | {route.name} | {rps:,.0f} | {cpu:.0f} | {python:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description="nginx in front of uvicorn, or proxyproto-mw")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every route")
    args = parser.parse_args(argv)
    for tool in ("wrk", "haproxy", "nginx", "taskset", "openssl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="nginx-front-") as directory:
        try:
            results = measure(args.duration, args.rounds, Path(directory))
        except BenchError as error:
            print(f"benchmark aborted: {error}", file=sys.stderr)
            return 1
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
