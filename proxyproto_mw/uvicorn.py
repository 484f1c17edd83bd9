"""uvicorn protocols that read a PROXY header before HTTP, and keep its addresses through upgrades.

``uvicorn app:app --http proxyproto_mw.uvicorn:HttpToolsProtocol`` (or ``H11Protocol``)
takes its :class:`~proxyproto_mw.policy.TrustPolicy` from the ``PROXYPROTO_*``
environment variables; ``HttpToolsProtocol.with_policy(policy)`` makes a class that
carries its own, for ``uvicorn.run(app, http=...)``.

Each connection first goes through the policy's admission. Once the header is in, the
protocol becomes uvicorn's own HTTP protocol (its class is switched to one whose methods
are uvicorn's), with the header's client and server addresses, from which uvicorn builds
every request's scope and its access log. A WebSocket upgrade hands the new protocol a
:class:`ProxiedTransport` reporting the same addresses. Later bytes go straight to
uvicorn's parser. Connections whose header carries addresses skip uvicorn's
``--proxy-headers`` rewriting, so a forged ``X-Forwarded-For`` cannot replace them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11Protocol

from .decoder import NEED_DATA
from .errors import ConfigurationError, ProxyProtocolError
from .header import ProxyHeader, ProxyProtocolInfo
from .policy import Admission, Admitted, TrustPolicy, environment_policy, log_rejection, logger

try:
    from uvicorn.protocols.http.httptools_impl import (
        HttpToolsProtocol as _UvicornHttpToolsProtocol,
    )
except ImportError:  # pragma: no cover - httptools is an optional extra of uvicorn
    _UvicornHttpToolsProtocol = None  # type: ignore[assignment, misc]

__all__ = ["H11Protocol", "HttpToolsProtocol", "ProxiedTransport"]

ASGIApp = Callable[..., Any]
_P = TypeVar("_P", bound="_ProxyProtocolMixin")


class ProxiedTransport:
    """A connection's transport as a WebSocket protocol should see it after an upgrade: the
    addresses of the PROXY header.

    ``get_extra_info`` answers ``peername`` / ``sockname`` from the header, ``socket`` with
    None (so that nothing reads the balancer's address from the socket), and
    ``proxy_protocol`` with the header; everything else is the real transport's own
    method, bound once, so writes cost no extra call.
    """

    def __init__(self, transport: asyncio.Transport, extra: dict[str, object]) -> None:
        self._transport = transport
        self._extra = extra
        # What uvicorn calls on every connection, bound here rather than found by __getattr__.
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.close = transport.close
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The header's view of ``name``, else the real transport's."""
        extra = self._extra
        if name in extra:
            return extra[name]
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> object:
        value = getattr(self._transport, name)
        if callable(value):
            self.__dict__[name] = value
        return value

    def __repr__(self) -> str:
        return f"<ProxiedTransport {self._extra.get('peername')} via {self._transport!r}>"


class _HeaderDeadlines:
    """The connections of one event loop still waiting for their header, under one timer.

    Watching a connection costs a set insertion and reading a counter: no timer and no
    clock per connection. Every ``INTERVAL`` seconds a sweep advances ``tick`` and closes
    the connections whose deadline has passed: at least their timeout after they arrived
    (a late sweep only makes it later), and less than two ``INTERVAL``s more on an idle loop.
    """

    INTERVAL = 0.25

    __slots__ = ("_loop", "_timer", "tick", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self.tick = 0
        self.waiting: set[_ProxyProtocolMixin] = set()

    def watch(self, protocol: _ProxyProtocolMixin, timeout: float) -> None:
        """Time out ``protocol``'s header after ``timeout`` s, unless it leaves ``waiting``."""
        # One sweep more than the timeout spans: part of the current interval has passed.
        protocol._deadline_tick = self.tick + math.ceil(timeout / self.INTERVAL) + 1
        self.waiting.add(protocol)
        if self._timer is None:
            self._timer = self._loop.call_later(self.INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self.tick += 1
        tick = self.tick
        for protocol in [p for p in self.waiting if p._deadline_tick <= tick]:
            protocol._header_timed_out()
        self._timer = self._loop.call_later(self.INTERVAL, self._sweep) if self.waiting else None


def _asgi_with_header(app: ASGIApp, info: ProxyProtocolInfo) -> ASGIApp:
    """``app`` called with the header's details in the scope (and the scheme it implies)."""
    if isinstance(app, ProxyHeadersMiddleware):
        # The header's addresses are authoritative: X-Forwarded-For written by a client
        # must not replace them.
        app = app.app

    tls = info["tls"]

    async def with_header(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope.setdefault("extensions", {})["proxy_protocol"] = info
        if tls:
            scope["scheme"] = "wss" if scope["type"] == "websocket" else "https"
        return await app(scope, receive, send)  # type: ignore[arg-type]

    return with_header


def _log_like_uvicorn() -> None:
    """Send our log lines where uvicorn sends its own, unless logging is configured already."""
    if logger.handlers or logging.getLogger().handlers:
        return
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if uvicorn_logger.handlers:
        for handler in uvicorn_logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(uvicorn_logger.getEffectiveLevel())
        logger.propagate = False


class _RefusesServerTLS(type):
    """Fails uvicorn's start-up when its own TLS would hide the PROXY header."""

    @property
    def alpn_protocols(cls) -> list[str] | None:
        # uvicorn's Config.load() reads this attribute at start-up, before it builds its SSL
        # context: the moment to check the configuration.
        if getattr(cls, "policy", None) is None:
            environment_policy()
        _log_like_uvicorn()
        config = sys._getframe(1).f_locals.get("self")
        if isinstance(config, Config) and config.is_ssl:
            raise ConfigurationError(
                "uvicorn's --ssl-* options put TLS in front of the protocol, so the PROXY "
                "header, which is sent in clear before the TLS handshake, never reaches it. "
                "Run `proxyproto-mw serve APP --ssl-keyfile ... --ssl-certfile ...` instead: "
                "it reads the header, then starts TLS on the same connection."
            )
        return None


class _ProxyProtocolMixin:
    """Reads the PROXY header, then hands the connection to uvicorn's protocol."""

    policy: ClassVar[TrustPolicy | None] = None
    """None: the policy from the ``PROXYPROTO_*`` environment variables."""
    tls_context: ClassVar[ssl.SSLContext | None] = None
    """Serve TLS after the header on the same connection (``proxyproto-mw serve``)."""

    # Attributes of uvicorn's protocol this mixin relies on.
    loop: asyncio.AbstractEventLoop
    app: ASGIApp
    config: Config
    server_state: Any
    ws_protocol_class: Any
    scheme: str | None
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None

    # uvicorn's own attributes, set by its connection_made; ours sets them from the header.
    connections: set[Any]
    transport: asyncio.Transport
    flow: FlowControl
    logger: logging.Logger

    _admission: Admission | None
    _raw_transport: asyncio.Transport
    _pending_tls_data: bytearray | None
    _deadline_tick: int
    _deadlines: _HeaderDeadlines | None = None
    _proxy_header: ProxyHeader | None = None
    _proxy_info: ProxyProtocolInfo | None = None
    """The scope extension of a connection that came with a header."""
    _adds_extension: ClassVar[bool] = False
    """Whether the HTTP protocol puts the extension into each request's scope itself;
    otherwise the app is wrapped to do it."""

    @classmethod
    def with_policy(
        cls: type[_P], policy: TrustPolicy | None, *, tls_context: ssl.SSLContext | None = None
    ) -> type[_P]:
        """A subclass applying ``policy`` (None: the environment's); with ``tls_context`` it
        serves TLS after the header."""
        namespace = {"policy": policy, "tls_context": tls_context, "__module__": cls.__module__}
        metaclass: Any = type(cls)
        subclass: type[_P] = metaclass(cls.__name__, (cls,), namespace)
        return subclass

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the admission; uvicorn's protocol is connected once the header is in."""
        policy = self.policy
        if policy is None:  # from the environment, read once for the class
            policy = type(self).policy = environment_policy()
        peer = transport.get_extra_info("peername")
        self._raw_transport = transport  # type: ignore[assignment]
        self._pending_tls_data = None
        if not peer and _is_ip_socket(transport):
            # The peer reset the connection before it was accepted (a health check that
            # connects and leaves): there is no one to serve.
            self._admission = None
            self._raw_transport.abort()
            return
        admission = self._admission = policy.admission(peer or None)
        if admission is None:
            self._admitted(Admitted(None, b""))
            return
        deadlines = self.server_state.__dict__.get("proxyproto_deadlines")
        if deadlines is None:
            deadlines = self.server_state.proxyproto_deadlines = _HeaderDeadlines(self.loop)
        self._deadlines = deadlines
        deadlines.watch(self, policy.timeout)

    def data_received(self, data: bytes) -> None:
        """Feed the admission until the header is complete."""
        if self._pending_tls_data is not None:
            self._pending_tls_data += data
            return
        admission = self._admission
        assert admission is not None
        try:
            admitted = admission.receive(data)
        except ProxyProtocolError as error:
            self._reject(error)
            return
        if admitted is not NEED_DATA:
            self._admitted(admitted)

    def eof_received(self) -> bool | None:
        """The peer closed its side before the header was complete."""
        self._stop_waiting()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended before the header was complete."""
        self._stop_waiting()

    def _stop_waiting(self) -> None:
        deadlines = self._deadlines
        if deadlines is not None:
            deadlines.waiting.discard(self)
            self._deadlines = None

    def _header_timed_out(self) -> None:
        if self._admission is not None:
            self._reject(self._admission.timed_out())
        else:
            self._stop_waiting()

    def _reject(self, error: ProxyProtocolError) -> None:
        self._stop_waiting()
        self._admission = None
        log_rejection(self._raw_transport.get_extra_info("peername"), error)
        self._raw_transport.abort()

    def _admitted(self, admitted: Admitted) -> None:
        self._stop_waiting()
        self._admission = None
        if self.tls_context is not None:
            self._start_tls(admitted)
        else:
            self._connect(self._raw_transport, admitted.header, admitted.data)

    def _connect(
        self, transport: asyncio.Transport, header: ProxyHeader | None, data: bytes
    ) -> None:
        """Hand the connection to uvicorn's protocol; later bytes go straight to it."""
        cls = type(self)
        connected = cls.__dict__.get("_connected") or _connected_class(cls)
        # From here on the real transport calls uvicorn's own methods directly (a class
        # whose methods are uvicorn's, rather than bound methods stored on the instance,
        # which would keep every connection alive until the garbage collector runs).
        self.__class__ = connected
        # uvloop caches the protocol's data_received: make it look again.
        transport.set_protocol(self)  # type: ignore[arg-type]
        if header is None:
            connected.connection_made(self, transport)
        else:
            peer = self._raw_transport.get_extra_info("peername")
            tls = self.tls_context is not None
            info = self._proxy_info = header.as_dict((peer[0], peer[1]) if peer else None, tls=tls)
            self._proxy_header = header
            if header.source is None:
                # LOCAL, UNKNOWN (and UNIX) keep the socket's addresses.
                connected.connection_made(self, transport)
            else:
                # uvicorn's connection_made, with the header's addresses where it would ask
                # the socket: uvicorn builds every request's scope from these.
                self.connections.add(self)
                self.transport = transport
                self.flow = FlowControl(transport)
                self.client = header.source
                self.server = header.destination
                if self.logger.level <= TRACE_LOG_LEVEL:
                    self.logger.log(TRACE_LOG_LEVEL, "%s:%d - HTTP connection made", *header.source)
            self.scheme = "https" if info["tls"] else "http"
            app = self.app
            if isinstance(app, ProxyHeadersMiddleware):
                # The header's addresses are authoritative: X-Forwarded-For written by a
                # client must not replace them.
                app = self.app = app.app
            if not self._adds_extension:
                self.app = _asgi_with_header(app, info)
        if data:
            self.data_received(data)

    def handle_websocket_upgrade(self, *args: Any) -> None:
        """Give the WebSocket protocol the header's app and addresses, then upgrade."""
        info = self._proxy_info
        header = self._proxy_header
        if info is not None and header is not None and self.ws_protocol_class is not None:
            extra: dict[str, object] | None = None
            if header.source is not None:
                # uvicorn's WebSocket protocols read their addresses from the transport.
                extra = {
                    "peername": header.source,
                    "sockname": header.destination,
                    "socket": None,
                    "proxy_protocol": header,
                }
            app = self.app if not self._adds_extension else _asgi_with_header(self.app, info)
            self.ws_protocol_class = _ws_with_app(self.ws_protocol_class, app, extra)
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def _start_tls(self, admitted: Admitted) -> None:
        """Serve TLS on the connection after its header (the header itself is in clear)."""
        raw = self._raw_transport
        raw.pause_reading()
        self._pending_tls_data = bytearray()
        context = self.tls_context
        assert context is not None
        task = self.loop.create_task(
            self.loop.start_tls(
                raw,
                self,  # type: ignore[arg-type]
                context,
                server_side=True,
            )
        )
        if admitted.data:
            # start_tls connects its TLS protocol and resumes reading from callbacks it
            # schedules when the task first runs; this runs right after them, before the
            # loop polls the socket again, so the ClientHello bytes keep their order.
            self.loop.call_soon(self.loop.call_soon, _feed, raw, admitted.data)

        def tls_ready(done: asyncio.Task[asyncio.Transport | None]) -> None:
            pending = bytes(self._pending_tls_data or b"")
            self._pending_tls_data = None
            error = done.exception() if not done.cancelled() else None
            tls_transport = None if error is not None or done.cancelled() else done.result()
            if tls_transport is None:
                log_rejection(
                    raw.get_extra_info("peername"),
                    ProxyProtocolError(f"TLS handshake after the PROXY header failed: {error}"),
                )
                raw.abort()
                return
            self._connect(tls_transport, admitted.header, pending)

        task.add_done_callback(tls_ready)


def _is_ip_socket(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)


def _feed(transport: asyncio.BaseTransport, data: bytes) -> None:
    """Deliver bytes already read from the socket to the transport's current protocol."""
    protocol: Any = transport.get_protocol()
    if hasattr(protocol, "buffer_updated"):
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)


def _ws_with_app(
    ws_protocol_class: Any, app: ASGIApp, extra: dict[str, object] | None
) -> Callable[..., Any]:
    """A WebSocket protocol factory whose protocols call ``app`` and, given the header's
    ``extra`` transport details, see the connection through a :class:`ProxiedTransport`
    (uvicorn's WebSocket protocols read their addresses from the transport on upgrade)."""

    def build(**kwargs: Any) -> Any:  # called on an upgrade only
        if extra is None:
            protocol = ws_protocol_class(**kwargs)
        else:
            protocol = _ws_class_with_view(ws_protocol_class)(**kwargs)
            protocol._proxy_extra = extra
        protocol.app = app
        return protocol

    return build


_ws_classes_with_view: dict[type, type] = {}


def _ws_class_with_view(ws_protocol_class: Any) -> Any:
    """``ws_protocol_class`` connected through a :class:`ProxiedTransport`."""
    subclass = _ws_classes_with_view.get(ws_protocol_class)
    if subclass is None:

        def connection_made(self: Any, transport: asyncio.Transport) -> None:
            ws_protocol_class.connection_made(self, ProxiedTransport(transport, self._proxy_extra))

        subclass = type(
            ws_protocol_class.__name__,
            (ws_protocol_class,),
            {"connection_made": connection_made, "__module__": __name__},
        )
        _ws_classes_with_view[ws_protocol_class] = subclass
    return subclass


def _connected_class(cls: Any) -> Any:
    """``cls`` once the header is in: uvicorn's own protocol methods, none of ours."""
    connected = cls.__dict__.get("_connected")
    if connected is None:
        base = next((klass for klass in cls.__mro__ if klass in _UVICORN_PROTOCOLS), None)
        if base is None:
            raise TypeError(f"{cls!r} is not built on a uvicorn HTTP protocol")
        methods = ("connection_made", "data_received", "eof_received", "connection_lost")
        namespace = {name: getattr(base, name) for name in methods}
        namespace["__module__"] = cls.__module__
        namespace["_connected"] = None  # set below: the connected class is its own
        connected = type(cls)(cls.__name__, (cls,), namespace)
        connected._connected = connected
        cls._connected = connected
    return connected


_UVICORN_PROTOCOLS = tuple(
    klass for klass in (_UvicornH11Protocol, _UvicornHttpToolsProtocol) if klass is not None
)


class H11Protocol(_ProxyProtocolMixin, _UvicornH11Protocol, metaclass=_RefusesServerTLS):  # type: ignore[misc]
    """uvicorn's h11 protocol behind a PROXY header."""


if _UvicornHttpToolsProtocol is not None:

    class HttpToolsProtocol(  # type: ignore[misc]
        _ProxyProtocolMixin, _UvicornHttpToolsProtocol, metaclass=_RefusesServerTLS
    ):
        """uvicorn's httptools protocol behind a PROXY header."""

        _adds_extension = True

        def on_message_begin(self) -> None:
            """Start a request's scope, with the header's extension when there is one."""
            _UvicornHttpToolsProtocol.on_message_begin(self)
            info = self._proxy_info
            if info is not None:
                extension: dict[str, Any] = {"proxy_protocol": info}
                self.scope["extensions"] = extension
