"""The ``websockets`` library's asyncio server behind a PROXY header.

``serve(handler, host, port, policy=..., **websockets_options)`` is used exactly like
:func:`websockets.asyncio.server.serve`, whose every option it passes through; it builds
each connection as a :class:`ProxyProtocolConnection`, which can also be given to the
library's own ``serve`` as ``create_connection=``.

Each connection first goes through the policy's
:class:`~proxyproto_mw.policy.Admission`: bytes are held back until the header is in
(nothing is written before), and a connection that cannot be served is closed without a
byte and logged once. Then the connection becomes the library's own: its opening
handshake starts, and later bytes go straight to websockets' methods, with no call of
ours in between. ``connection.remote_address`` and ``connection.local_address`` answer
the header's client and server addresses from then on; :func:`proxy_protocol` gives the
handler the decoded header as the ASGI extension holds it.

With ``ssl=``, the header is read in clear and TLS starts after it on the same connection,
which is what a balancer passing TLS through (an NLB TCP listener) sends.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

try:
    import websockets.asyncio.server
    from websockets.asyncio.server import Server, ServerConnection
except ImportError as error:  # pragma: no cover - websockets < 13 has no asyncio server
    raise ImportError(
        "proxyproto_mw.websockets needs websockets >= 13: pip install 'websockets>=13'"
    ) from error

from ..decoder import NEED_DATA
from ..errors import ProxyProtocolError
from ..header import Address, ProxyHeader, ProxyProtocolInfo
from ..policy import Admission, TrustPolicy, environment_policy, log_rejection

__all__ = ["ProxyProtocolConnection", "proxy_protocol", "serve"]

_C = TypeVar("_C", bound="ProxyProtocolConnection")

_HEADER_PHASE = ("data_received", "eof_received", "connection_lost")
"""The asyncio callbacks this class answers itself until the header is in (as instance
attributes, so that deleting them leaves the library's methods, with nothing in between)."""


class ProxyProtocolConnection(ServerConnection):
    """A :class:`websockets.asyncio.server.ServerConnection` that starts with a PROXY header.

    Pass it (or a class from :meth:`with_policy`) as ``create_connection=`` to
    :func:`websockets.asyncio.server.serve`. ``remote_address`` and ``local_address``
    are the header's client and server, except for headers without addresses (v1
    ``UNKNOWN``, v2 ``LOCAL``), which keep the socket's. Pass TLS settings to
    :meth:`with_policy` (or to :func:`serve`), never as the library's ``ssl=``: the
    library's TLS would start before the header, which is sent in clear.
    """

    policy: ClassVar[TrustPolicy | None] = None
    """None: the policy from the ``PROXYPROTO_*`` environment variables."""
    tls_context: ClassVar[ssl.SSLContext | None] = None
    """Serve TLS on the connection after the header."""
    tls_handshake_timeout: ClassVar[float | None] = 10.0
    """Seconds for the TLS handshake after the header (the library's ``open_timeout``)."""

    proxy_header: ProxyHeader | None = None
    """The connection's PROXY header; None when it came without one."""
    _proxy_info: ProxyProtocolInfo | None = None
    _peer: Address | None = None
    _client: Address | None = None
    _server: Address | None = None
    _raw: asyncio.Transport | None = None
    """The TCP transport until the library's connection starts."""
    _admission: Admission | None = None
    _deadlines: _HeaderDeadlines | None = None
    _deadline_tick = 0
    _pending_tls: bytearray | None = None

    @classmethod
    def with_policy(
        cls: type[_C],
        policy: TrustPolicy | None,
        *,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout: float | None = 10.0,
    ) -> type[_C]:
        """A subclass applying ``policy`` (None: the environment's); with ``tls`` it serves
        TLS after the header."""
        namespace = {
            "policy": policy,
            "tls_context": tls,
            "tls_handshake_timeout": tls_handshake_timeout,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        return type(cls.__name__, (cls,), namespace)

    @property
    def proxy_info(self) -> ProxyProtocolInfo | None:
        """The header as the ASGI extension holds it (made on first use); see
        :func:`proxy_protocol`."""
        info = self._proxy_info
        if info is None and self.proxy_header is not None:
            tls = self.tls_context is not None
            info = self._proxy_info = self.proxy_header.as_dict(self._peer, tls=tls)
        return info

    @property
    def remote_address(self) -> Any:
        """The client's address: the header's, else the socket's peer."""
        client = self._client
        return client if client is not None else super().remote_address

    @property
    def local_address(self) -> Any:
        """The address the client reached: the header's, else the socket's own."""
        server = self._server
        return server if server is not None else super().local_address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the admission; the library's connection starts once the header is in."""
        policy = self.policy
        if policy is None:  # from the environment, read once for the class
            policy = type(self).policy = environment_policy()
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        self._raw = raw
        self._hold(raw)
        peer = raw.get_extra_info("peername")
        if not peer and _is_ip_socket(raw):
            # Reset before it was accepted (a health check that connects and leaves).
            raw.abort()
            return
        peer = self._peer = (peer[0], peer[1]) if peer else None
        admission = policy.admission(peer)
        if admission is None:
            self._admitted(raw, None, b"")
            return
        self._admission = admission
        deadlines = self.server.__dict__.get("proxyproto_deadlines")
        if deadlines is None:
            deadlines = self.server.proxyproto_deadlines = _HeaderDeadlines(self.loop)  # type: ignore[attr-defined]
        self._deadlines = deadlines
        deadlines.watch(self, policy.timeout)

    def _hold(self, transport: asyncio.Transport) -> None:
        """Answer the transport's callbacks here until the header (and TLS) is in."""
        self.__dict__.update(
            data_received=self._receive_header,
            eof_received=_closed_early,
            connection_lost=self._lost_early,
        )
        transport.set_protocol(self)  # uvloop caches data_received: make it look again

    def _release(self, transport: asyncio.Transport) -> None:
        """From now on the transport calls the library's methods directly."""
        for name in _HEADER_PHASE:
            self.__dict__.pop(name, None)
        transport.set_protocol(self)

    def _receive_header(self, data: bytes) -> None:
        if self._pending_tls is not None:  # decrypted bytes while TLS starts
            self._pending_tls += data
            return
        admission = self._admission
        if admission is None:  # closed already; the transport may still deliver a read
            return
        try:
            admitted = admission.receive(data)
        except ProxyProtocolError as error:
            self._reject(error)
            return
        if admitted is not NEED_DATA:
            self._stop_waiting()
            self._admission = None
            raw = self._raw
            assert raw is not None
            self._admitted(raw, admitted.header, admitted.data)

    def _lost_early(self, exc: Exception | None) -> None:
        """The connection ended before the header (or TLS) was complete: not logged."""
        self._stop_waiting()
        self._admission = None
        for name in _HEADER_PHASE:
            self.__dict__.pop(name, None)
        self._raw = None

    def _stop_waiting(self) -> None:
        deadlines = self._deadlines
        if deadlines is not None:
            deadlines.waiting.discard(self)
            self._deadlines = None

    def _header_timed_out(self) -> None:
        self._stop_waiting()
        if self._admission is not None:
            self._reject(self._admission.timed_out())

    def _reject(self, error: ProxyProtocolError) -> None:
        raw = self._raw
        assert raw is not None
        self._stop_waiting()
        self._admission = None
        log_rejection(raw.get_extra_info("peername"), error)
        raw.abort()

    def _admitted(self, raw: asyncio.Transport, header: ProxyHeader | None, data: bytes) -> None:
        if header is not None:
            self.proxy_header = header
            if header.source is not None:
                self._client = header.source
                self._server = header.destination
        if self.tls_context is not None:
            self._start_tls(raw, data)
            return
        self._connect(raw, data)

    def _connect(self, transport: asyncio.Transport, data: bytes) -> None:
        """Become the library's connection: its handshake starts here."""
        self._release(transport)
        self._raw = None
        super().connection_made(transport)
        if data:
            self.data_received(data)

    def _start_tls(self, raw: asyncio.Transport, data: bytes) -> None:
        """Serve TLS on the connection after its header (the header itself is in clear)."""
        raw.pause_reading()
        self._pending_tls = bytearray()
        context = self.tls_context
        assert context is not None
        loop = self.loop
        task = loop.create_task(
            loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.tls_handshake_timeout,
            )
        )
        if data:
            # start_tls connects its TLS protocol and resumes reading in callbacks that it
            # schedules when the task first runs; this runs right after them, before the
            # loop reads the socket again, so the ClientHello's bytes keep their order.
            loop.call_soon(loop.call_soon, _deliver, raw, data)
        task.add_done_callback(lambda done: self._tls_started(raw, done))

    def _tls_started(self, raw: asyncio.Transport, done: asyncio.Task[Any]) -> None:
        pending = bytes(self._pending_tls or b"")
        self._pending_tls = None
        error = None if done.cancelled() else done.exception()
        if error is not None or done.cancelled():
            self._raw = None
            for name in _HEADER_PHASE:
                self.__dict__.pop(name, None)
            if not isinstance(error, ConnectionError):  # a peer that left is not logged
                log_rejection(
                    raw.get_extra_info("peername"),
                    ProxyProtocolError(f"TLS handshake after the PROXY header failed: {error}"),
                )
            raw.abort()
            return
        if self._raw is None:  # the connection ended right after the handshake
            return
        self._connect(done.result(), pending)


class _HeaderDeadlines:
    """The connections of one server still waiting for their header, under one timer.

    Watching a connection costs a set insertion and reading a counter, no timer of its
    own. Every ``INTERVAL`` seconds a sweep advances ``tick`` and closes the connections
    whose deadline has passed: at least their timeout after they arrived, and less than two
    intervals more on an idle loop.
    """

    INTERVAL = 0.25

    __slots__ = ("_loop", "_timer", "tick", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self.tick = 0
        self.waiting: set[ProxyProtocolConnection] = set()

    def watch(self, connection: ProxyProtocolConnection, timeout: float) -> None:
        """Time out ``connection``'s header after ``timeout`` s, unless it leaves ``waiting``."""
        # One sweep more than the timeout spans: part of the current interval has passed.
        connection._deadline_tick = self.tick + math.ceil(timeout / self.INTERVAL) + 1
        self.waiting.add(connection)
        if self._timer is None:
            self._timer = self._loop.call_later(self.INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self.tick += 1
        tick = self.tick
        for connection in [c for c in self.waiting if c._deadline_tick <= tick]:
            connection._header_timed_out()
        self._timer = self._loop.call_later(self.INTERVAL, self._sweep) if self.waiting else None


def _closed_early() -> bool | None:
    """End of stream before the header: let the transport close."""
    return None


def _is_ip_socket(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)


def _deliver(transport: asyncio.BaseTransport, data: bytes) -> None:
    """Give bytes already read from the socket to the transport's current protocol."""
    protocol: Any = transport.get_protocol()
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)


def proxy_protocol(connection: ServerConnection) -> ProxyProtocolInfo | None:
    """The connection's PROXY header as ASGI's ``scope["extensions"]["proxy_protocol"]``
    holds it, or None when the connection came without one."""
    return getattr(connection, "proxy_info", None)


def connection_class(
    create_connection: type[ServerConnection] | None,
) -> type[ProxyProtocolConnection]:
    """``create_connection`` (a ServerConnection subclass) reading a PROXY header first."""
    if create_connection is None:
        return ProxyProtocolConnection
    if issubclass(create_connection, ProxyProtocolConnection):
        return create_connection
    if not (
        isinstance(create_connection, type) and issubclass(create_connection, ServerConnection)
    ):
        raise TypeError(
            f"create_connection={create_connection!r} must be a subclass of "
            "websockets.asyncio.server.ServerConnection"
        )
    if issubclass(create_connection, ProxyProtocolConnection):
        return create_connection
    combined: type[ProxyProtocolConnection] = type(
        create_connection.__name__,
        (ProxyProtocolConnection, create_connection),
        {"__module__": create_connection.__module__},
    )
    return combined


def serve(
    handler: Callable[[ServerConnection], Awaitable[None]],
    host: str | None = None,
    port: int | None = None,
    *,
    policy: TrustPolicy | None = None,
    **websockets_options: Any,
) -> Server:
    """:func:`websockets.asyncio.server.serve`, with a PROXY header before each connection.

    ``policy`` defaults to the ``PROXYPROTO_*`` environment variables (read now, so that a
    bad value fails here). Every other option is the library's; ``ssl=`` serves TLS after
    the header, and ``create_connection=`` may name your own ServerConnection subclass.
    Use it as the library's: ``async with serve(handler, host, port) as server: ...``.
    """
    if policy is None:
        environment_policy()
    tls = websockets_options.pop("ssl", None)
    handshake_timeout = websockets_options.pop(
        "ssl_handshake_timeout", websockets_options.get("open_timeout", 10)
    )
    websockets_options.pop("ssl_shutdown_timeout", None)  # asyncio's default applies
    create_connection = connection_class(websockets_options.pop("create_connection", None))
    return websockets.asyncio.server.serve(
        handler,
        host,
        port,
        create_connection=create_connection.with_policy(
            policy,
            tls=tls,
            tls_handshake_timeout=handshake_timeout,
        ),
        **websockets_options,
    )
