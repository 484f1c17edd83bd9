"""gunicorn in a subprocess, started as a user starts it, and the app it serves in the tests.

:class:`Gunicorn` runs ``python -m gunicorn -k proxyproto_mw.gunicorn.UvicornWorker -w 2
--proxy-protocol ... -b 127.0.0.1:PORT tests.gunicorn_server:app`` from the repository
root, on :class:`~tests.haproxy.ServerProcess` as :class:`~tests.servers.Uvicorn` is. It
knows gunicorn's process tree: the master's pid, its workers' pids (children of the
master, read from ``/proc``), how to wait until a set of workers has booted, to reload
(``SIGHUP``) and to kill one worker. Stopping it sends ``SIGTERM`` to the master, then
``SIGKILL`` to whatever is left of the session it was started in, so that no worker
outlives a test.

:class:`WsgiGunicorn` runs a WSGI worker serving :mod:`tests.wsgi_apps` instead.

:data:`app` is :data:`tests.apps.app` that also names, in an ``X-Worker-Pid`` response
header, the worker that served the request: the tests check that every worker applies the
same settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from proxyproto_mw.wsgi import ProxyProtocolMiddleware
from tests import apps
from tests.haproxy import free_port
from tests.servers import AppServer, LogMark, run_in_session

__all__ = [
    "APP",
    "WORKER_PID",
    "WSGI_ALLOW_FROM",
    "WSGI_APP",
    "WSGI_FORWARDING_APP",
    "Gunicorn",
    "WsgiGunicorn",
    "app",
    "forwarding_app",
    "gunicorn_argv",
    "run_gunicorn_to_exit",
]

APP = "tests.gunicorn_server:app"
WSGI_APP = "tests.wsgi_apps:app"
WSGI_ALLOW_FROM = "127.0.0.1,127.0.0.5"
"""HAProxy connects from 127.0.0.1; raw sockets and curl playing the balancer from 127.0.0.5."""
WORKER_PID = "x-worker-pid"
"""The response header naming the worker process that answered."""
WORKERS = {
    "UvicornWorker": "proxyproto_mw.gunicorn.UvicornWorker",
    "UvicornH11Worker": "proxyproto_mw.gunicorn.UvicornH11Worker",
}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 8.0
GRACEFUL_TIMEOUT = 3
"""gunicorn's ``--graceful-timeout``: old workers of a reload or a stop have this long."""

_BOOTED = "Application startup complete"


async def app(scope: Any, receive: Any, send: Any) -> None:
    """:data:`tests.apps.app`, with the worker's pid in a header of every response."""
    pid = (WORKER_PID.encode(), str(os.getpid()).encode())

    async def send_with_pid(message: Any) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            message = {**message, "headers": [*message.get("headers", ()), pid]}
        await send(message)

    await apps.app(scope, receive, send_with_pid)


def gunicorn_argv(
    binds: Sequence[str],
    *,
    worker: str = "UvicornWorker",
    workers: int = 2,
    proxy_protocol: Sequence[str] = ("--proxy-protocol", "auto"),
    allow_from: str | None = None,
    extra: Sequence[str] = (),
    app: str = APP,
) -> list[str]:
    """The command line a user types, with ``python -m`` for the test's interpreter.

    The control socket is off: its default path is shared by every gunicorn of a user. The
    rejection log's bound is lifted (``tests/gunicorn_every_rejection.py``), unless ``extra``
    names another ``-c``.
    """
    argv = [sys.executable, "-m", "gunicorn", "-k", WORKERS.get(worker, worker)]
    argv += ["-w", str(workers), *proxy_protocol]
    if allow_from is not None:
        argv += ["--proxy-allow-from", allow_from]
    for bind in binds:
        argv += ["-b", bind]
    argv += ["--graceful-timeout", str(GRACEFUL_TIMEOUT), "--no-control-socket"]
    if "-c" not in extra:  # one WARNING line per refused connection, for the assertions
        argv += ["-c", str(Path(__file__).with_name("gunicorn_every_rejection.py"))]
    return [*argv, *extra, app]


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Every live process (Linux ``/proc``): its pid and the fields of its ``stat`` after
    the command name (state, ppid, pgrp, session, ...)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 3 and fields[0] != "Z":
            yield int(entry.name), fields


def _children(pid: int) -> set[int]:
    """The pids of the live processes whose parent is ``pid``."""
    return {child for child, fields in _processes() if int(fields[1]) == pid}


def _session(sid: int) -> set[int]:
    """The pids of the live processes of session ``sid``."""
    return {member for member, fields in _processes() if int(fields[3]) == sid}


class Gunicorn(AppServer):
    """``python -m gunicorn -k proxyproto_mw.gunicorn.<worker> ... tests.gunicorn_server:app``.

    ``proxy_protocol`` is the argument list that sets it (``("--proxy-protocol", "v2")``,
    a bare ``("--proxy-protocol",)``, or ``()`` for gunicorn's default); ``env`` holds the
    ``PROXYPROTO_*`` variables. ``argv`` replaces the whole command line (a
    ``gunicorn.conf.py`` run); it must bind ``port``. Entering waits until the port
    listens and ``workers`` workers have booted.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        worker: str = "UvicornWorker",
        workers: int = 2,
        proxy_protocol: Sequence[str] = ("--proxy-protocol", "auto"),
        allow_from: str | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        unix_socket: Path | None = None,
        extra: Sequence[str] = (),
        argv: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        port = port if port is not None else free_port(host)
        self.workers = workers
        self.unix_socket = unix_socket
        binds = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if unix_socket is not None:
            binds.append(f"unix:{unix_socket}")
        super().__init__(
            list(argv)
            if argv is not None
            else gunicorn_argv(
                binds,
                worker=worker,
                workers=workers,
                proxy_protocol=proxy_protocol,
                allow_from=allow_from,
                extra=extra,
            ),
            workdir,
            host=host,
            port=port,
            name=name or f"gunicorn-{worker}-{port}",
            env=env,
            start_timeout=START_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
        )

    def start(self) -> None:
        """Start gunicorn; return once it listens and its workers have booted."""
        super().start()
        try:
            self.wait_for_workers(set(), timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """``SIGTERM`` to the master (``SIGKILL`` if it lingers), then ``SIGKILL`` to any
        process left in the session it started: workers outlive a killed master."""
        process = self._process
        if process is None:
            return
        try:
            super().stop()
        finally:
            for pid in _session(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def worker_pids(self) -> set[int]:
        """The master's live children: its workers."""
        return _children(self.pid)

    def booted(self) -> set[int]:
        """The workers that have logged their application's start-up."""
        text = self.output()
        return {
            pid for pid in self.worker_pids() if re.search(rf"\[{pid}\] \[INFO\] {_BOOTED}", text)
        }

    def wait_for_workers(self, old: set[int], timeout: float = 15.0) -> set[int]:
        """Wait until exactly ``workers`` workers run, all booted and none in ``old``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.output()}")
            pids = self.worker_pids()
            if len(pids) == self.workers and not pids & old and self.booted() == pids:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: workers {sorted(pids)} (booted {sorted(self.booted())}, "
                    f"old {sorted(old)}), wanted {self.workers} new ones within {timeout} s:\n"
                    f"{self.output()}"
                )
            time.sleep(0.05)

    def reload(self) -> set[int]:
        """``kill -HUP`` the master: new workers replace every old one; their pids."""
        old = self.worker_pids()
        os.kill(self.pid, signal.SIGHUP)
        return self.wait_for_workers(old)

    def kill_worker(self, pid: int) -> set[int]:
        """``SIGKILL`` one worker; return the workers once gunicorn has replaced it."""
        if pid not in self.worker_pids():
            raise ValueError(f"{pid} is not a worker of {self.name}")
        os.kill(pid, signal.SIGKILL)
        return self.wait_for_workers({pid})

    def errors(self) -> list[str]:
        """Lines of stderr that show something went wrong (a killed worker's line aside)."""
        return [
            line
            for line in self.output().splitlines()
            if ("Traceback" in line or "[ERROR]" in line) and "was sent SIGKILL" not in line
        ]


class WsgiGunicorn(Gunicorn):
    """``python -m gunicorn -k <worker> --threads N -w WORKERS --proxy-protocol auto
    --proxy-allow-from 127.0.0.1,127.0.0.5 --access-logfile - ... tests.wsgi_apps:app``:
    a WSGI worker (ours or gunicorn's own ``sync`` / ``gthread``) serving
    :mod:`tests.wsgi_apps`."""

    def __init__(
        self,
        workdir: Path,
        worker: str,
        *,
        threads: int,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        unix_socket: Path | None = None,
        app: str = WSGI_APP,
    ) -> None:
        port = free_port()
        binds = [f"127.0.0.1:{port}"]
        if unix_socket is not None:
            binds.append(f"unix:{unix_socket}")
        argv = gunicorn_argv(
            binds,
            worker=worker,
            workers=workers,
            allow_from=WSGI_ALLOW_FROM,
            extra=["--threads", str(threads), "--access-logfile", "-", *extra],
            app=app,
        )
        short = worker.rpartition(".")[2]
        super().__init__(
            workdir, worker=worker, workers=workers, port=port, argv=argv, env=env, name=short
        )
        self.unix_socket = unix_socket

    def booted(self) -> set[int]:
        """The workers that have started (WSGI workers log no application start-up)."""
        text = self.output()
        return {
            pid
            for pid in self.worker_pids()
            if re.search(rf"\] Booting worker with pid: {pid}$", text, re.MULTILINE)
        }

    def access_mark(self) -> LogMark:
        """A mark in stdout, gunicorn's access log (``--access-logfile -``)."""
        return LogMark(self.stdout_path)


def _forwarding(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The client address and the forwarding headers the app sees, as JSON."""
    keys = ("REMOTE_ADDR", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_FOR")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


forwarding_app = ProxyProtocolMiddleware(_forwarding, x_real_ip=True, x_forwarded_for="append")
"""A WSGI app behind the WSGI middleware rewriting X-Real-IP and X-Forwarded-For as nginx."""
WSGI_FORWARDING_APP = "tests.gunicorn_server:forwarding_app"


def run_gunicorn_to_exit(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run a gunicorn command line that is expected to exit (a refused start-up).

    As :func:`tests.servers.run_to_exit`, in a session of its own whose processes are all
    killed should gunicorn start after all (workers would outlive a killed master).
    """
    completed = run_in_session(argv, env, timeout)
    if completed.returncode is None:
        raise AssertionError(f"gunicorn did not exit within {timeout} s:\n{completed.stderr}")
    return completed
