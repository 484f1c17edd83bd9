"""Test an app as it runs behind a PROXY protocol sender: in process, or over a real socket.

In process, without a socket (fast; for most tests of what the app does with the address):

- :class:`ProxyProtocolTransport` and :class:`AsyncProxyProtocolTransport`, httpx
  transports that call an ASGI app with the scope uvicorn and this package's protocol
  give it for a connection that came with a PROXY header: ``scope["client"]`` and
  ``scope["server"]`` from the header, ``scope["extensions"]["proxy_protocol"]`` as
  :meth:`ProxyHeader.as_dict <proxyproto_mw.header.ProxyHeader.as_dict>` builds it, and
  ``https`` when the header's SSL TLV says the client connected over TLS;
- :func:`proxied_test_client`, Starlette's ``TestClient`` with the same scope, for
  WebSockets;
- :func:`proxy_header`, the header a test chooses (built with the encoder and read back
  with the decoder, so it is exactly what the server would decode).

Over a real socket, as in production: :func:`serve_uvicorn` starts uvicorn with this
package's protocol on a free loopback port; :class:`ServedUvicorn` opens connections that
send the chosen header first, then an HTTP request or a WebSocket handshake.

Example (``app`` is your ASGI app)::

    transport = ProxyProtocolTransport(app, proxy_header(client=("198.51.100.22", 35646)))
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        client.get("/")  # the app saw request.client.host == "198.51.100.22"

    with serve_uvicorn("myapp:app") as server:
        server.request("GET", "/", header=proxy_header(client=("198.51.100.22", 35646)))
        with server.websocket("/ws", header=proxy_header(version=1)) as websocket:
            websocket.recv()

Needs ``httpx`` (and ``starlette`` for :func:`proxied_test_client`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio.from_thread
import h11
import httpx
import uvicorn
from websockets.sync.client import ClientConnection, connect

from . import uvicorn as protocols
from .decoder import NEED_DATA, decode
from .encoder import encode, encode_v1, encode_v2
from .header import TLV, Address, Command, ProxyHeader
from .policy import MODE_VARIABLE, TIMEOUT_VARIABLE, TRUSTED_VARIABLE, TrustPolicy

if TYPE_CHECKING:
    from starlette.testclient import TestClient

__all__ = [
    "DEFAULT_HEADER",
    "AsyncProxyProtocolTransport",
    "ProxiedApp",
    "ProxyProtocolTransport",
    "ServedUvicorn",
    "proxied_test_client",
    "proxy_header",
    "serve_uvicorn",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT: Address = ("198.51.100.22", 35646)
"""The client address of :data:`DEFAULT_HEADER` (AWS's documentation example)."""
SERVER: Address = ("203.0.113.7", 443)
"""The address the client reached, as :data:`DEFAULT_HEADER` says."""
PEER: Address = ("127.0.0.1", 50000)
"""The balancer's own address in process: the connection's peer, ``extension["peer"]``."""


def proxy_header(
    client: Address | None = CLIENT,
    server: Address | None = SERVER,
    *,
    version: Literal[1, 2] = 2,
    command: Command | str = Command.PROXY,
    tlvs: Iterable[TLV | tuple[int, bytes]] = (),
    checksum: bool = False,
) -> ProxyHeader:
    """The header a balancer would send for a client at ``client`` that reached ``server``.

    ``client=None, server=None`` gives v1 ``UNKNOWN`` or a v2 header without addresses;
    ``command="LOCAL"`` a v2 health check. Both make the server keep the socket's
    addresses. ``tlvs`` and ``checksum`` (a CRC32C TLV) are for v2 only.
    """
    command = Command(command)
    if version == 1:
        if command is Command.LOCAL or checksum or tuple(tlvs):
            raise ValueError("LOCAL, TLVs and checksums exist in v2 headers only")
        raw = encode_v1(client, server)
    else:
        raw = encode_v2(client, server, command=command, tlvs=tlvs, checksum=checksum)
    return _decoded(raw)


def _decoded(raw: bytes) -> ProxyHeader:
    """``raw``, which must be exactly one complete header, as the decoder reads it."""
    result = decode(raw)
    if result is NEED_DATA or result.rest:
        raise ValueError(f"not exactly one complete PROXY header: {raw!r}")
    return result.header


def _as_header(header: ProxyHeader | bytes) -> ProxyHeader:
    return _decoded(header) if isinstance(header, bytes) else header


def _wire(header: ProxyHeader | bytes | None) -> bytes:
    """What to send first: the header's bytes (``bytes`` as given, even broken ones)."""
    if header is None:
        return b""
    return header if isinstance(header, bytes) else encode(header)


DEFAULT_HEADER: ProxyHeader = proxy_header()
"""v2, from :data:`CLIENT` to :data:`SERVER`, without TLVs."""


class ProxiedApp:
    """``app`` called with the scope of a connection that came from ``peer`` with ``header``.

    For ``http`` and ``websocket`` scopes, as this package's uvicorn protocol sets them:
    ``client`` and ``server`` are the header's addresses (a header without addresses
    keeps ``peer`` as the client and the scope's own server), ``scheme`` is ``https`` /
    ``wss`` only when ``tls`` (the server terminates TLS) or the header's SSL TLV says so,
    and ``extensions["proxy_protocol"]`` is ``header.as_dict(peer, tls=tls)``. Other
    scopes (``lifespan``) pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        header: ProxyHeader | bytes = DEFAULT_HEADER,
        *,
        peer: Address = PEER,
        tls: bool = False,
    ) -> None:
        self.app = app
        self.header = _as_header(header)
        self.peer = peer
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app with the scope rewritten as the server would have built it."""
        kind = scope["type"]
        if kind in ("http", "websocket"):
            header = self.header
            info = header.as_dict(self.peer, tls=self.tls)
            scope = dict(scope)
            scope["client"] = header.source if header.source is not None else self.peer
            if header.destination is not None:
                scope["server"] = header.destination
            if kind == "websocket":
                scope["scheme"] = "wss" if info["tls"] else "ws"
            else:
                scope["scheme"] = "https" if info["tls"] else "http"
            scope["extensions"] = {**scope.get("extensions", {}), "proxy_protocol": info}
        await self.app(scope, receive, send)


class AsyncProxyProtocolTransport(httpx.AsyncBaseTransport):
    """An httpx transport that calls an ASGI app in process, as if each request had come
    through a load balancer that sent ``header`` (a :class:`ProxyHeader`, or its bytes).

    The scope is :class:`ProxiedApp`'s. As in production, the URL's scheme and host do not
    set ``scope["scheme"]`` or ``scope["server"]``: the header (and ``tls``) do. The
    response body is read whole before it is returned, as with ``httpx.ASGITransport``;
    lifespan events are not sent.
    """

    def __init__(
        self,
        app: ASGIApp,
        header: ProxyHeader | bytes = DEFAULT_HEADER,
        *,
        peer: Address = PEER,
        tls: bool = False,
        raise_app_exceptions: bool = True,
        root_path: str = "",
    ) -> None:
        self.app = ProxiedApp(app, header, peer=peer, tls=tls)
        self._asgi = httpx.ASGITransport(
            self.app, raise_app_exceptions=raise_app_exceptions, root_path=root_path
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run the app for ``request``."""
        return await self._asgi.handle_async_request(request)


class ProxyProtocolTransport(httpx.BaseTransport):
    """:class:`AsyncProxyProtocolTransport` for ``httpx.Client``.

    Each request runs the app in a new event loop in a worker thread (anyio's blocking
    portal, as Starlette's ``TestClient`` does outside a ``with`` block), so nothing the
    app binds to a loop may outlive a request.
    """

    def __init__(
        self,
        app: ASGIApp,
        header: ProxyHeader | bytes = DEFAULT_HEADER,
        *,
        peer: Address = PEER,
        tls: bool = False,
        raise_app_exceptions: bool = True,
        root_path: str = "",
    ) -> None:
        self._async = AsyncProxyProtocolTransport(
            app,
            header,
            peer=peer,
            tls=tls,
            raise_app_exceptions=raise_app_exceptions,
            root_path=root_path,
        )
        self.app = self._async.app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Run the app for ``request`` and return its complete response."""
        body = request.read()
        replayed = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            stream=httpx.ByteStream(body),
            extensions=request.extensions,
        )
        with anyio.from_thread.start_blocking_portal() as portal:
            status, headers, content = portal.call(self._respond, replayed)
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))

    async def _respond(
        self, request: httpx.Request
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._async.handle_async_request(request)
        content = await response.aread()
        return response.status_code, response.headers.raw, content


def proxied_test_client(
    app: ASGIApp,
    header: ProxyHeader | bytes = DEFAULT_HEADER,
    *,
    peer: Address = PEER,
    tls: bool = False,
    **kwargs: Any,
) -> TestClient:
    """Starlette's ``TestClient`` (HTTP and ``websocket_connect``) for :class:`ProxiedApp`.

    ``kwargs`` go to ``TestClient``; use it in a ``with`` block to run lifespan events.
    """
    from starlette.testclient import TestClient  # noqa: PLC0415 - an optional dependency

    return TestClient(ProxiedApp(app, header, peer=peer, tls=tls), **kwargs)


# --- a real uvicorn ------------------------------------------------------------------------

_RUNNING = re.compile(r"Uvicorn running on https?://(\S+):(\d+) ")
_PROTOCOLS = {"httptools": "HttpToolsProtocol", "h11": "H11Protocol"}
"""``http=``: the name of the class in :mod:`proxyproto_mw.uvicorn`."""
"""The ``http=`` choices: this package's uvicorn protocol classes."""
_LOGGERS = ("uvicorn.error", "uvicorn.access", "proxyproto_mw")
"""Each named, not their parent: uvicorn's ``access_log=False`` stops ``uvicorn.access``
propagating, for the whole process."""


class ServedUvicorn:
    """A running uvicorn (see :func:`serve_uvicorn`), and a client for it.

    Every connection is a real TCP connection from ``source`` (a loopback address such as
    127.0.0.1, which the default policy trusts, or 127.0.0.2, which it does not) that sends
    ``header`` first: a :class:`ProxyHeader`, raw bytes (broken ones too), or None for a
    connection without a header.
    """

    def __init__(self, host: str, port: int, output: Callable[[], str]) -> None:
        self.host = host
        self.port = port
        self._output = output

    @property
    def url(self) -> str:
        """``http://host:port``, where uvicorn listens."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def output(self) -> str:
        """What the server logged so far (all of it, once stopped): its start-up lines,
        access log, warnings and tracebacks."""
        return self._output()

    def _stopped(self) -> None:
        final = self._output()
        self._output = lambda: final

    def connect(
        self,
        header: ProxyHeader | bytes | None = DEFAULT_HEADER,
        *,
        source: str = "127.0.0.1",
        timeout: float = 5.0,
    ) -> socket.socket:
        """A TCP connection from ``source`` that has sent ``header``."""
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.bind((source, 0))
            sock.connect((self.host, self.port))
            sock.sendall(_wire(header))
        except BaseException:
            sock.close()
            raise
        return sock

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        header: ProxyHeader | bytes | None = DEFAULT_HEADER,
        source: str = "127.0.0.1",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        content: bytes = b"",
        timeout: float = 5.0,
    ) -> httpx.Response:
        """Send one HTTP/1.1 request on a new connection that starts with ``header``.

        A connection the server closes without a response (a refused header) raises
        ``httpx.RemoteProtocolError``, as httpx does.
        """
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        connection = h11.Connection(h11.CLIENT)
        fields = [("Host", f"{self.host}:{self.port}"), ("Connection", "close"), *pairs]
        if content or method not in ("GET", "HEAD"):
            fields.append(("Content-Length", str(len(content))))
        outgoing = connection.send(h11.Request(method=method, target=path, headers=fields))
        outgoing += connection.send(h11.Data(data=content)) if content else b""
        outgoing += connection.send(h11.EndOfMessage())
        url = f"{self.url}{path}"
        with self.connect(header, source=source, timeout=timeout) as sock:
            sock.sendall(outgoing)
            response: h11.Response | None = None
            body = bytearray()
            while True:
                try:
                    event = connection.next_event()
                except h11.RemoteProtocolError as error:
                    if response is None:
                        break  # closed before a response: refused
                    raise httpx.RemoteProtocolError(str(error)) from error
                if event is h11.NEED_DATA:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    connection.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        if response is None:
            raise httpx.RemoteProtocolError(
                f"the server closed the connection from {source} without a response"
            )
        received = httpx.Response(
            response.status_code,
            headers=[(bytes(name), bytes(value)) for name, value in response.headers],
            stream=httpx.ByteStream(bytes(body)),
            request=httpx.Request(method, url),
        )
        received.read()
        return received

    def websocket(
        self,
        path: str = "/",
        *,
        header: ProxyHeader | bytes | None = DEFAULT_HEADER,
        source: str = "127.0.0.1",
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> ClientConnection:
        """A WebSocket (the ``websockets`` library's sync client) over a connection that
        started with ``header``; ``kwargs`` go to ``websockets.sync.client.connect``.
        Use it in a ``with`` block."""
        if "proxy" in inspect.signature(connect).parameters:
            kwargs.setdefault("proxy", None)
        sock = self.connect(header, source=source, timeout=timeout)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            kwargs.setdefault("open_timeout", timeout)
            websocket: ClientConnection = connect(
                f"ws://{host}:{self.port}{path}", sock=sock, **kwargs
            )
            return websocket
        except BaseException:
            sock.close()
            raise


def _policy_environment(policy: TrustPolicy) -> dict[str, str]:
    """``policy`` as the ``PROXYPROTO_*`` variables a uvicorn process reads."""
    if policy.versions != {1, 2}:
        raise ValueError(
            "a uvicorn process reads no header versions from its environment: serve an app "
            "object (run in this process) to restrict them"
        )
    return {
        TRUSTED_VARIABLE: ",".join(policy.trusted),
        MODE_VARIABLE: policy.mode.value,
        TIMEOUT_VARIABLE: repr(policy.timeout),
    }


@contextlib.contextmanager
def serve_uvicorn(
    app: str | ASGIApp,
    *,
    policy: TrustPolicy | None = None,
    http: Literal["httptools", "h11"] = "httptools",
    ws: str = "auto",
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    args: Iterable[str] = (),
    start_timeout: float = 15.0,
) -> Iterator[ServedUvicorn]:
    """uvicorn with ``proxyproto_mw.uvicorn``'s protocol on a free port of ``host``, for the
    ``with`` block.

    - ``app`` as an import string (``"myapp:app"``, found from the current directory):
      ``python -m uvicorn app --http proxyproto_mw.uvicorn:... --port 0`` in a subprocess,
      started as users start it, with ``policy`` given as the ``PROXYPROTO_*`` variables
      and ``env`` and ``args`` (more uvicorn options) added. Stopped with SIGTERM, then
      SIGKILL.
    - ``app`` as an ASGI app object: ``uvicorn.Server`` in a thread of this process, with
      ``HttpToolsProtocol.with_policy(policy)`` (or ``H11Protocol``); ``env`` and ``args``
      do not apply.

    ``policy`` defaults to ``TrustPolicy()``: headers required from 127.0.0.1 and ::1.
    Raises ``RuntimeError``, with the server's output, if it does not start within
    ``start_timeout`` seconds.
    """
    if http not in _PROTOCOLS:
        raise ValueError(f"http must be one of {sorted(_PROTOCOLS)}, not {http!r}")
    policy = policy if policy is not None else TrustPolicy()
    if isinstance(app, str):
        argv = [
            sys.executable, "-m", "uvicorn", app, "--host", host, "--port", "0",
            "--http", f"proxyproto_mw.uvicorn:{_PROTOCOLS[http]}", "--ws", ws, *args,
        ]  # fmt: skip
        environment = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **_policy_environment(policy),
            **(env or {}),
        }
        with _serve_process(argv, environment, host, start_timeout) as served:
            yield served
    else:
        # The class itself: looking it up as uvicorn does would read the environment's policy.
        protocol_class = protocols._PROTOCOLS[_PROTOCOLS[http]]
        if protocol_class is None:
            raise ImportError(protocols.HTTPTOOLS_MISSING_MESSAGE)
        config = uvicorn.Config(
            app, host=host, http=protocol_class.with_policy(policy), ws=ws, log_config=None
        )
        with _serve_thread(config, start_timeout) as served:
            yield served


@contextlib.contextmanager
def _serve_process(
    argv: list[str], environment: dict[str, str], host: str, start_timeout: float
) -> Iterator[ServedUvicorn]:
    with tempfile.TemporaryDirectory(prefix="proxyproto-uvicorn-") as directory:
        log = Path(directory) / "uvicorn.log"

        def output() -> str:
            return log.read_text(errors="replace")

        with log.open("wb") as sink:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + start_timeout
            while not (running := _RUNNING.search(output())):
                if process.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if process.poll() is not None else "did not start"
                    raise RuntimeError(f"uvicorn {state} ({' '.join(argv)}):\n{output()}")
                time.sleep(0.02)
            served = ServedUvicorn(host, int(running.group(2)), output)
            try:
                yield served
            finally:
                _stop(process)
                served._stopped()
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def _serve_thread(config: uvicorn.Config, start_timeout: float) -> Iterator[ServedUvicorn]:
    host = config.host
    # Our own listening socket on a free port, handed to uvicorn: its port is known at once.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(config)
    # The server's log lines, captured for output() while it runs.
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True
    )
    try:
        thread.start()
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start:\n{captured.getvalue()}")
            time.sleep(0.01)
        served = ServedUvicorn(host, port, captured.getvalue)
        yield served
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
        for each, level in zip(loggers, levels, strict=True):
            each.removeHandler(handler)
            each.setLevel(level)
