"""Real senders for tests: HAProxy (or any server) in a subprocess, and a recording TCP server.

Everything here listens and connects on loopback addresses only (127.0.0.0/8 and ::1), and
every wait is bounded: a test that goes wrong fails with a message, it never hangs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = [
    "Address",
    "HAProxy",
    "Recorder",
    "Recording",
    "ServerProcess",
    "connect_from",
    "free_port",
    "haproxy_available",
    "haproxy_defaults",
    "haproxy_proxied_pair",
    "haproxy_stats",
    "ipv6_available",
    "is_listening",
    "wait_until_healthy",
]

Address = tuple[str, int]

_LISTEN = "0A"
"""TCP_LISTEN, as ``/proc/net/tcp`` writes the state column."""


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host!r} is not a loopback address; tests stay on 127.0.0.0/8 and ::1")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may take it later)."""
    _check_loopback(host)
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def ipv6_available() -> bool:
    """Whether this machine has the IPv6 loopback address ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def haproxy_available() -> bool:
    """Whether an ``haproxy`` executable is on the PATH."""
    return shutil.which("haproxy") is not None


def connect_from(
    source_host: str, destination: Address, payload: bytes, timeout: float = 5.0
) -> Address:
    """Connect from ``source_host`` to ``destination``, send ``payload``, wait for the close.

    Returns the client socket's own address: the source a proxy in between must report.
    The wait for the other end to close (at most ``timeout`` seconds) lets the payload
    travel through a proxy before this side goes away.
    """
    _check_loopback(source_host)
    _check_loopback(destination[0])
    with socket.socket(_family(source_host), socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.bind((source_host, 0))
        client.connect(destination)
        host, port = client.getsockname()[:2]
        client.sendall(payload)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and client.recv(4096):
                pass
    return host, port


def _proc_net_addresses(hex_address: str) -> str:
    """Turn a ``/proc/net/tcp*`` address (32-bit words in host byte order) into text."""
    raw = b"".join(
        struct.pack("=I", int(hex_address[i : i + 8], 16)) for i in range(0, len(hex_address), 8)
    )
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def is_listening(host: str, port: int) -> bool:
    """Whether some socket listens on ``host:port`` (or on the wildcard address at ``port``).

    On Linux this reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` rather than connecting:
    a probe connection through a proxy would reach the proxy's backend, which records it.
    Elsewhere it falls back to a probe connection.
    """
    wanted = ipaddress.ip_address(host)
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _LISTEN:
                continue
            hex_address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port:
                continue
            address = ipaddress.ip_address(_proc_net_addresses(hex_address))
            if address == wanted or address.is_unspecified:
                return True
    return False


_Server = TypeVar("_Server", bound="ServerProcess")


class ServerProcess:
    """A server in a subprocess, started on entry and ready once its ports listen.

    ``addresses`` are the (loopback) addresses to wait for. Its output goes to
    ``<workdir>/<name>.stdout`` and ``.stderr``, files rather than pipes, so that a
    chatty server never blocks on a full pipe; a failed start raises with that stderr.
    """

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path,
        addresses: Sequence[Address],
        *,
        name: str,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        for host, _ in addresses:
            _check_loopback(host)
        self.argv = list(argv)
        self.workdir = workdir
        self.addresses = list(addresses)
        self.name = name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.cwd = cwd or workdir
        self.env = env
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id (it must be running)."""
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._process.pid

    def output(self) -> str:
        """What the server wrote to stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        """Start the server and wait until every address listens; raise if it does not."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        waiting = list(self.addresses)
        while waiting:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise RuntimeError(
                    f"{self.name} exited with status {code} while starting "
                    f"({' '.join(self.argv)}):\n{self.output()}"
                )
            waiting = [address for address in waiting if not is_listening(*address)]
            if not waiting:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not listen on {waiting} within {self.start_timeout} s "
                    f"({' '.join(self.argv)}):\n{self.output()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the server; kill it if it has not exited within ``stop_timeout``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(self.stop_timeout)

    def __enter__(self: _Server) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


_BIND = re.compile(r"^\s*bind\s+(\S+)", re.MULTILINE)


def _bind_address(spec: str) -> Address | None:
    """The address of an HAProxy ``bind`` argument, or None for one without a port (UNIX)."""
    for prefix in ("ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"):
        spec = spec.removeprefix(prefix)
    host, separator, port = spec.rpartition(":")
    if not separator or not port.isdigit():
        return None
    host = host.strip("[]")
    if not host or host in ("*", "0.0.0.0", "::"):
        raise ValueError(f"bind {spec!r} listens on every interface; tests bind loopback only")
    return host, int(port)


class HAProxy(ServerProcess):
    """``haproxy -f <workdir>/haproxy.cfg -db`` (foreground) for the duration of a ``with``.

    Waits until every ``bind host:port`` of ``config`` listens, or only for ``ports``
    when given (a bare port means 127.0.0.1). Every bind address must be a loopback one.
    """

    def __init__(
        self,
        config: str,
        workdir: Path,
        ports: Sequence[int | Address] | None = None,
        *,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        executable = shutil.which("haproxy")
        if executable is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        binds = [_bind_address(spec) for spec in _BIND.findall(config)]
        if ports is None:
            addresses = [address for address in binds if address is not None]
        else:
            addresses = [("127.0.0.1", p) if isinstance(p, int) else p for p in ports]
        self.config = config
        self.config_path = workdir / "haproxy.cfg"
        super().__init__(
            [executable, "-f", str(self.config_path), "-db"],
            workdir,
            addresses,
            name="haproxy",
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )

    def start(self) -> None:
        """Write the configuration, then start HAProxy and wait for its listeners."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        super().start()

    def __enter__(self) -> HAProxy:
        self.start()
        return self


# --- HAProxy configurations for the end-to-end tests, and its stats socket --------------------

STATS_SOCKET = "stats.sock"
"""The name of the stats socket :func:`haproxy_defaults` puts in the working directory."""


def haproxy_defaults(workdir: Path) -> str:
    """The ``global`` section, with an admin stats socket at ``workdir/stats.sock``, and
    ``defaults`` for TCP mode with short timeouts and patient health checks."""
    return f"""\
global
    stats socket {workdir}/{STATS_SOCKET} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    # Health checks may be slow on a loaded 2-core CI machine; the default is "inter".
    timeout check 5s
"""


def haproxy_proxied_pair(
    name: str,
    ports: tuple[int, int],
    backend_port: int,
    *,
    check: str = "/check",
    v2_source: str | None = None,
    v2_options: bool = True,
) -> str:
    """A frontend and backend ``{name}_v1`` (``send-proxy``) on 127.0.0.1:``ports[0]`` and
    ``{name}_v2`` (``send-proxy-v2``) on 127.0.0.1:``ports[1]``, both to the server at
    127.0.0.1:``backend_port`` with HTTP health checks every 500 ms on ``{check}-v1`` and
    ``{check}-v2``. The v2 backend connects from ``v2_source`` when given; with
    ``v2_options`` its headers carry a CRC32C and a unique ID."""
    source = f" source {v2_source}" if v2_source else ""
    unique_id = "    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid\n" if v2_options else ""
    options = " proxy-v2-options crc32c,unique-id" if v2_options else ""
    return f"""\
frontend {name}_v1
    bind 127.0.0.1:{ports[0]}
    default_backend {name}_v1
backend {name}_v1
    option httpchk GET {check}-v1
    server app 127.0.0.1:{backend_port} send-proxy check inter 500ms
frontend {name}_v2
    bind 127.0.0.1:{ports[1]}
{unique_id}    default_backend {name}_v2
backend {name}_v2
    option httpchk GET {check}-v2
    server app 127.0.0.1:{backend_port}{source} send-proxy-v2{options} check inter 500ms
"""


def haproxy_stats(socket_path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """``show stat`` on HAProxy's stats socket, by (proxy, server); ``check_status`` is the
    last finished check's (without the ``* `` of a check in progress)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
        stats.settimeout(5)
        stats.connect(str(socket_path))
        stats.sendall(b"show stat\n")
        raw = b""
        while chunk := stats.recv(65536):
            raw += chunk
    lines = raw.decode().splitlines()
    columns = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line]
    for row in rows:
        # "* L7OK": the last check passed and the next one is running; the result is L7OK.
        if "check_status" in row:
            row["check_status"] = row["check_status"].removeprefix("* ")
    return {(row["pxname"], row["svname"]): row for row in rows}


def wait_until_healthy(socket_path: Path, backends: Sequence[str], timeout: float = 10.0) -> None:
    """Wait until the health checks of server ``app`` pass in every one of ``backends``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stats = haproxy_stats(socket_path)
            states = [stats[(name, "app")]["check_status"] for name in backends]
        except OSError:
            states = []
        if states == ["L7OK"] * len(backends):
            return
        assert time.monotonic() < deadline, f"health checks did not pass: {states}"
        time.sleep(0.1)


@dataclass(frozen=True)
class Recording:
    """What one connection to a :class:`Recorder` delivered."""

    peer: Address
    """The connecting socket's address."""
    local: Address
    """The address the connection reached (the recorder's)."""
    data: bytes
    """Every byte received, in order."""
    end: str
    """Why recording stopped: ``eof``, ``complete``, ``limit``, ``timeout``, ``stopped``
    or ``error: ...`` (a reset after some bytes keeps those bytes)."""


class Recorder:
    """A TCP server on a loopback address that records what each connection sends.

    A connection is recorded until the peer closes, ``complete(data)`` says the bytes so
    far are all that is wanted, ``limit`` bytes arrived, or ``timeout`` seconds passed.
    When ``complete`` ended it, ``reply`` is sent (a client such as curl waits for a
    response); then the connection is closed. Accepting and recording run in background
    threads, one per connection.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        complete: Callable[[bytes], bool] | None = None,
        reply: bytes = b"",
        timeout: float = 5.0,
        limit: int = 1 << 20,
    ) -> None:
        _check_loopback(host)
        self.complete = complete
        self.reply = reply
        self.timeout = timeout
        self.limit = limit
        self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        bound = self._listener.getsockname()
        self.address: Address = (bound[0], bound[1])
        self._recordings: list[Recording] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="recorder", daemon=True)

    @property
    def port(self) -> int:
        """The port the recorder listens on."""
        return self.address[1]

    @property
    def recordings(self) -> list[Recording]:
        """The connections recorded so far, in the order they ended."""
        with self._changed:
            return list(self._recordings)

    def wait_for(
        self,
        count: int = 1,
        *,
        where: Callable[[Recording], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[Recording]:
        """The first ``count`` recordings (that satisfy ``where``), once they have ended.

        Raises ``TimeoutError``, listing what was recorded, after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self._recordings if where is None or where(r)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(found)} of {count} wanted connections to {self.address} "
                        f"within {timeout} s; recorded: {self._recordings!r}"
                    )
                self._changed.wait(remaining)

    def start(self) -> None:
        """Start accepting connections."""
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, end the recordings in progress and close the listener."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(2.0)
        self._listener.close()
        for thread in self._threads:
            thread.join(2.0)

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(
                target=self._record, args=(connection, peer), name="recording", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _record(self, connection: socket.socket, peer: tuple[str, int]) -> None:
        # A health check may be reset before this thread runs: take the peer's address
        # from accept(), as getpeername() then fails; the bytes that came first stay readable.
        with connection:
            try:
                local = connection.getsockname()
            except OSError:
                local = self.address
            received = bytearray()
            end = self._receive(connection, received)
            if self.reply and end == "complete":
                with contextlib.suppress(OSError):
                    connection.sendall(self.reply)
        recording = Recording((peer[0], peer[1]), (local[0], local[1]), bytes(received), end)
        with self._changed:
            self._recordings.append(recording)
            self._changed.notify_all()

    def _receive(self, connection: socket.socket, received: bytearray) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._stopping.is_set():
                return "stopped"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            connection.settimeout(min(remaining, 0.05))
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError as error:
                return f"error: {error}"
            if not chunk:
                return "eof"
            received += chunk
            if self.complete is not None and self.complete(bytes(received)):
                return "complete"
            if len(received) >= self.limit:
                return "limit"
