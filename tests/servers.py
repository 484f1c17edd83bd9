"""uvicorn in a subprocess, started exactly as a user starts it, for end-to-end tests.

:class:`Uvicorn` runs ``python -m uvicorn tests.apps:app --http proxyproto_mw.uvicorn:...``
from the repository root with the environment it is given (the ``PROXYPROTO_*``
variables of the test process are never inherited), waits at most 15 s for its port,
writes its stdout (uvicorn's access log) and stderr (start-up lines and the
``proxyproto_mw`` warnings) to files the tests read, and stops it with SIGTERM, then
SIGKILL. Every address is a loopback one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.haproxy import ServerProcess, free_port

__all__ = [
    "REPOSITORY",
    "LogMark",
    "Uvicorn",
    "clean_environment",
    "run_to_exit",
    "uvicorn_in_process",
]

REPOSITORY = Path(__file__).resolve().parent.parent
"""The repository root: uvicorn runs there so that ``tests.apps:app`` imports."""

APP = "tests.apps:app"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

_INHERITED_PREFIXES = ("PROXYPROTO_", "UVICORN_", "FORWARDED_ALLOW_IPS", "WEB_CONCURRENCY")


def clean_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without settings that change how uvicorn or we behave,
    plus ``env``."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_INHERITED_PREFIXES)
    }
    clean["PYTHONUNBUFFERED"] = "1"
    clean.update(env or {})
    return clean


def uvicorn_argv(
    port: int,
    *,
    http: str = "HttpToolsProtocol",
    ws: str = "websockets",
    loop: str = "asyncio",
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line a user types, with ``python -m`` for the test's interpreter."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        APP,
        "--host",
        host,
        "--port",
        str(port),
        "--http",
        f"proxyproto_mw.uvicorn:{http}",
        "--ws",
        ws,
        "--loop",
        loop,
        "--lifespan",
        "on",
        *extra,
    ]


def run_to_exit(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run a command that is expected to exit (a failed start-up) from the repository root."""
    return subprocess.run(
        list(argv),
        cwd=REPOSITORY,
        env=clean_environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_in_session(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run a command that should exit, from the repository root, in a session of its own:
    if it has not exited after ``timeout`` seconds, every process of the session is killed
    (workers would outlive a killed parent) and the result's ``returncode`` is None."""
    with subprocess.Popen(
        list(argv),
        cwd=REPOSITORY,
        env=clean_environment(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            returncode: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            returncode = None
    return subprocess.CompletedProcess(list(argv), returncode, stdout, stderr)  # type: ignore[arg-type]


class LogMark:
    """A position in a log file: what was written after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        """Everything written since the mark."""
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def lines(self, pattern: str = "") -> list[str]:
        """The complete lines written since the mark that match the regular expression."""
        found = re.compile(pattern)
        return [line for line in self.text().splitlines() if found.search(line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait (at most ``timeout`` s) until ``count`` lines match; return every match."""
        deadline = time.monotonic() + timeout
        while True:
            matches = self.lines(pattern)
            if len(matches) >= count:
                return matches
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} line(s) matching {pattern!r} expected in {self.path.name} "
                    f"within {timeout} s; written since the mark:\n{self.text()}"
                )
            time.sleep(0.02)


class AppServer(ServerProcess):
    """A server under test, run from the repository root, listening on one loopback port.

    ``env`` holds the ``PROXYPROTO_*`` variables (the rest of the environment is cleaned);
    its stderr carries the ``proxyproto_mw`` warnings.
    """

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path,
        *,
        host: str,
        port: int,
        name: str,
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        super().__init__(
            argv,
            workdir,
            [(host, port)],
            name=name,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            cwd=REPOSITORY,
            env=clean_environment(env),
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens."""
        return self.host, self.port

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout(self) -> str:
        """Everything the server wrote to stdout so far (uvicorn's access log)."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def mark(self) -> LogMark:
        """A mark in stderr: the ``proxyproto_mw`` warnings written after it."""
        return LogMark(self.stderr_path)

    def access_mark(self) -> LogMark:
        """A mark in stdout: the access log lines written after it."""
        return LogMark(self.stdout_path)


class Uvicorn(AppServer):
    """``python -m uvicorn tests.apps:app --http proxyproto_mw.uvicorn:<http> ...``.

    ``env`` holds the ``PROXYPROTO_*`` variables; ``port`` defaults to a free one.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        http: str = "HttpToolsProtocol",
        ws: str = "websockets",
        loop: str = "asyncio",
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra: Sequence[str] = (),
        argv: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        port = port if port is not None else free_port(host)
        super().__init__(
            list(argv)
            if argv is not None
            else uvicorn_argv(port, http=http, ws=ws, loop=loop, host=host, extra=extra),
            workdir,
            host=host,
            port=port,
            name=name or f"uvicorn-{http}-{ws}-{loop}-{port}",
            env=env,
        )

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None


@contextlib.asynccontextmanager
async def uvicorn_in_process(protocol_class: type) -> AsyncIterator[tuple[int, Any]]:
    """uvicorn's serving of ``tests.apps:app`` with the ``--http`` class ``protocol_class``
    on the running loop of this process, on a free loopback port: (port, uvicorn's
    ``ServerState``, whose ``connections`` show what serves each connection)."""
    from uvicorn.config import Config  # noqa: PLC0415  (uvicorn: only for the tests that serve)
    from uvicorn.server import ServerState  # noqa: PLC0415

    from tests.apps import app  # noqa: PLC0415

    config = Config(app=app, http=protocol_class, lifespan="off", access_log=False)
    config.load()
    state = ServerState()

    def factory() -> Any:
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state={}
        )

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], state
    finally:
        server.close()
        await server.wait_closed()
