"""The ``websockets`` library's asyncio server behind a PROXY header.

``serve(handler, host, port, policy=..., **websockets_options)`` is used exactly like
:func:`websockets.asyncio.server.serve`, whose every option it passes through; it builds
each connection as a :class:`ProxyProtocolConnection`, which can also be given to the
library's own ``serve`` as ``create_connection=``.

Each connection first goes through the policy's
:class:`~proxyproto_mw.policy.Admission`: a small reader owns the transport and holds every
byte back until the header is in (nothing is written before), and a connection that cannot
be served is closed without a byte and logged once. Meanwhile the library's connection has
started as it would without a header (its handler waits for the opening handshake, under
``open_timeout``); once the header is in, the transport is handed to it and later bytes go
straight to websockets' methods, with no call of ours in between.
``connection.remote_address`` and ``connection.local_address`` answer the header's client
and server addresses; :func:`proxy_protocol` gives the handler the decoded header as the
ASGI extension holds it.

With ``ssl=``, the header is read in clear and TLS starts after it on the same connection,
which is what a balancer passing TLS through (an NLB TCP listener) sends.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from .._upstream import require
from ..errors import ConfigurationError

try:
    # The release the tests run on (CI's minimum); websockets 17 needs Python 3.11.
    require("websockets", "17", "proxyproto_mw.websockets")
except ConfigurationError as error:
    raise ImportError(str(error)) from None

import websockets.asyncio.server
from websockets.asyncio.server import Server, ServerConnection

from ..deadlines import HeaderDeadlines, Waiting, by_loop, feed
from ..decoder import NEED_DATA
from ..errors import HeaderTimeout, ProxyProtocolError
from ..header import Address, ProxyHeader, ProxyProtocolInfo
from ..policy import Admission, Mode, TrustPolicy, environment_policy, log_rejection

__all__ = ["ProxiedState", "ProxyProtocolConnection", "proxy_protocol", "serve"]

_C = TypeVar("_C", bound="ProxyProtocolConnection")
_P = TypeVar("_P", bound="ProxiedConnection")


class ProxiedState:
    """What a connection keeps of its PROXY header: one attribute of the connection.

    One attribute rather than several: every attribute beyond what the library's own
    connection sets costs each of the library's attribute reads on every frame once the
    instance's shared-key table overflows (CPython then makes it an ordinary dict).
    """

    __slots__ = ("client", "header", "info", "peer", "server", "tls")

    def __init__(self, header: ProxyHeader, peer: Address | None, tls: bool) -> None:
        self.header = header
        self.peer = peer
        self.tls = tls
        self.client = header.source
        self.server = header.destination
        self.info: ProxyProtocolInfo | None = None

    def as_dict(self) -> ProxyProtocolInfo:
        """The header as the ASGI extension holds it, made on first use."""
        info = self.info
        if info is None:
            info = self.info = self.header.as_dict(self.peer, tls=self.tls)
        return info


class ProxiedConnection:
    """What the asyncio and the threaded ``ProxyProtocolConnection`` share: their settings,
    the header and the header's server address. Put before the library's connection class
    in the bases."""

    policy: ClassVar[TrustPolicy | None] = None
    """None: the policy from the ``PROXYPROTO_*`` environment variables."""
    tls_context: ClassVar[ssl.SSLContext | None] = None
    """Serve TLS on the connection after the header."""
    tls_handshake_timeout: ClassVar[float | None] = 10.0
    """Seconds for the TLS handshake after the header (the library's ``open_timeout``)."""

    proxied: ProxiedState | None = None
    """The connection's header and what follows from it; None without a header."""

    @property
    def proxy_header(self) -> ProxyHeader | None:
        """The connection's PROXY header; None when it came without one."""
        proxied = self.proxied
        return None if proxied is None else proxied.header

    @property
    def local_address(self) -> Any:
        """The address the client reached: the header's, else the socket's own."""
        proxied = self.proxied
        if proxied is not None and proxied.server is not None:
            return proxied.server
        library: Any = super()
        return library.local_address


class ProxyProtocolConnection(ProxiedConnection, ServerConnection):
    """A :class:`websockets.asyncio.server.ServerConnection` that starts with a PROXY header.

    Pass it (or a class from :meth:`with_policy`) as ``create_connection=`` to
    :func:`websockets.asyncio.server.serve`. ``remote_address`` and ``local_address``
    are the header's client and server, except for headers without addresses (v1
    ``UNKNOWN``, v2 ``LOCAL``), which keep the socket's. Pass TLS settings to
    :meth:`with_policy` (or to :func:`serve`), never as the library's ``ssl=``: the
    library's TLS would start before the header, which is sent in clear.

    Until the header is in, the transport talks to a :class:`_HeaderReader`; then it is
    handed to this connection, whose asyncio callbacks are the library's own. With TLS the
    library's connection starts only once TLS is up, on the TLS transport.
    """

    open_timeout: ClassVar[float | None] = None
    """The library's ``open_timeout``, when :func:`serve` knows it. Without TLS the library's
    handshake timer runs from the start of the connection, so when it is no longer than the
    policy's header timeout it bounds the header too (and is logged as the header timeout),
    and no timer of ours is needed; None (unknown, or no timeout): always one of ours."""

    @classmethod
    def with_policy(
        cls: type[_C],
        policy: TrustPolicy | None,
        *,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout: float | None = 10.0,
        open_timeout: float | None = None,
    ) -> type[_C]:
        """A subclass applying ``policy`` (None: the environment's); with ``tls`` it serves
        TLS after the header. Give the library's ``open_timeout`` when you pass the class to
        the library's own ``serve`` with it."""
        return with_settings(
            cls,
            policy=policy,
            tls_context=tls,
            tls_handshake_timeout=tls_handshake_timeout,
            open_timeout=open_timeout,
        )

    @property
    def remote_address(self) -> Any:
        """The client's address: the header's, else the socket's peer."""
        proxied = self.proxied
        if proxied is not None and proxied.client is not None:
            return proxied.client
        return super().remote_address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the library's connection (with TLS: once TLS is up) and hand the transport
        to a reader that holds the bytes back until the header is in."""
        policy = self.policy
        if policy is None:  # from the environment, read once for the class
            policy = type(self).policy = environment_policy()
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        peer = raw.get_extra_info("peername")
        if not peer and _is_ip_socket(raw):
            # Reset before it was accepted (a health check that connects and leaves).
            raw.abort()
            return
        peer = (peer[0], peer[1]) if peer else None
        off = policy.mode is Mode.OFF
        if off and self.tls_context is None:  # nothing to read
            self._start(raw, None, b"")
            return
        reader = _HeaderReader(self, raw, not off, peer, policy)
        if self.tls_context is None:
            # The library's connection starts now, as it would without a header: its
            # handler waits for the opening handshake (under open_timeout) while the reader
            # holds the bytes back, so the handshake costs no event loop turn more.
            reader.started = True
            self.proxied = None
            super().connection_made(raw)
        raw.set_protocol(reader)
        if off:
            reader.admitted(None, b"")
            return
        open_timeout = self.open_timeout
        if reader.started and open_timeout is not None and open_timeout <= policy.timeout:
            # The library's handshake timer, started above, ends a header that never comes
            # (reader.connection_lost logs it): an armed timer of ours would cost every turn
            # of the event loop a clock reading.
            return
        loop = self.loop
        deadlines = by_loop.get(loop)
        if deadlines is None:  # the first connection in a while
            deadlines = by_loop[loop] = HeaderDeadlines(loop)
        waiting = reader.waiting = deadlines.waiting
        waiting[reader] = deadlines.tick

    def _start(
        self, transport: asyncio.Transport, proxied: ProxiedState | None, data: bytes
    ) -> None:
        """Become the library's connection on ``transport``: its handshake starts here."""
        self.proxied = proxied
        transport.set_protocol(self)  # uvloop caches the protocol's methods: set it again
        super().connection_made(transport)
        if data:
            self.data_received(data)

    def _resume(
        self, transport: asyncio.Transport, proxied: ProxiedState | None, data: bytes
    ) -> None:
        """The header is in: the library's connection, started already, reads from here on."""
        self.proxied = proxied
        transport.set_protocol(self)
        if data:
            self.data_received(data)


class _HeaderReader(asyncio.Protocol):
    """The transport's protocol until the header (and TLS after it) is in."""

    __slots__ = (
        "admission",
        "connection",
        "eof",
        "header",
        "peer",
        "pending_tls",
        "policy",
        "reading",
        "since",
        "started",
        "transport",
        "waiting",
    )

    def __init__(
        self,
        connection: ProxyProtocolConnection,
        transport: asyncio.Transport,
        reading: bool,
        peer: Address | None,
        policy: TrustPolicy,
    ) -> None:
        self.connection: ProxyProtocolConnection | None = connection
        self.transport = transport
        self.reading = reading
        """Whether the header is still to come (neither admitted nor refused yet)."""
        self.admission: Admission | None = None
        """The policy's admission, once the first bytes left the connection undecided."""
        self.peer = peer
        self.policy: TrustPolicy = policy
        self.since = time.monotonic()
        self.started = False
        """Whether the library's connection is made already (without TLS): it learns of
        the end of a connection refused here, so that its handler ends."""
        self.eof = False
        self.waiting: dict[Waiting, int] | None = None
        """The table of the loop's connections waiting for their header, while in it."""
        self.header: ProxyHeader | None = None
        self.pending_tls: bytearray | None = None

    def data_received(self, data: bytes) -> None:
        """Feed the admission until the header is complete."""
        if self.pending_tls is not None:  # decrypted bytes while TLS starts
            self.pending_tls += data
            return
        if not self.reading:  # refused already; the transport may still deliver a read
            return
        admission = self.admission
        try:
            if admission is None:  # the first bytes, which decide most connections
                first = self.policy.admit(self.peer, data)
                if isinstance(first, Admission):
                    self.admission = first
                    return
                admitted = first
            else:
                fed = admission.receive(data)
                if fed is NEED_DATA:
                    return
                admitted = fed
        except ProxyProtocolError as error:
            self.reject(error)
            return
        self.stop_waiting()
        self.reading = False
        self.admitted(admitted.header, admitted.data)

    def eof_received(self) -> bool | None:
        """End of stream before the header: let the transport close."""
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended before the header (or TLS) was complete.

        Not logged when the peer left, nor after a refusal (logged then). When this side
        closed it with the header incomplete, websockets' ``open_timeout`` ran out first:
        logged as the header timeout it is.
        """
        reading, self.reading = self.reading, False
        self.stop_waiting()
        connection, self.connection = self.connection, None
        if reading and exc is None and not self.eof:
            elapsed = time.monotonic() - self.since
            error = (
                self.timed_out()
                if elapsed + 0.05 >= self.policy.timeout  # asyncio's timers may fire a tick early
                else HeaderTimeout(
                    f"no complete PROXY header within websockets' open_timeout ({elapsed:.3g} s)"
                )
            )
            log_rejection(self.transport.get_extra_info("peername"), error)
        if connection is not None and self.started:
            connection.connection_lost(exc)

    def stop_waiting(self) -> None:
        waiting = self.waiting
        if waiting is not None:
            waiting.pop(self, None)
            self.waiting = None

    def header_timed_out(self) -> None:
        """Close the connection: its header did not come in time (the sweep calls it)."""
        self.stop_waiting()
        if self.reading:
            self.reject(self.timed_out())

    def timed_out(self) -> ProxyProtocolError:
        """The header timeout's error, as the admission words it."""
        admission = self.admission
        if admission is None:  # not a byte came
            admission = Admission(self.policy, self.peer)
        return admission.timed_out()

    def reject(self, error: ProxyProtocolError) -> None:
        self.stop_waiting()
        self.reading = False
        log_rejection(self.transport.get_extra_info("peername"), error)
        self.transport.abort()

    def admitted(self, header: ProxyHeader | None, data: bytes) -> None:
        connection = self.connection
        assert connection is not None
        self.header = header
        if connection.tls_context is not None:
            self.start_tls(connection, data)
            return
        self.connection = None
        connection._resume(self.transport, self.state(False), data)

    def state(self, tls: bool) -> ProxiedState | None:
        header = self.header
        return None if header is None else ProxiedState(header, self.peer, tls)

    def start_tls(self, connection: ProxyProtocolConnection, data: bytes) -> None:
        """Serve TLS on the connection after its header (the header itself is in clear)."""
        raw = self.transport
        raw.pause_reading()
        self.pending_tls = bytearray()
        context = connection.tls_context
        assert context is not None
        loop = connection.loop
        task = loop.create_task(
            loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=connection.tls_handshake_timeout,
            )
        )
        if data:
            # start_tls connects its TLS protocol and resumes reading in callbacks that it
            # schedules when the task first runs; this runs right after them, before the
            # loop reads the socket again, so the ClientHello's bytes keep their order.
            loop.call_soon(loop.call_soon, feed, raw, data)
        task.add_done_callback(self.tls_started)

    def tls_started(self, done: asyncio.Task[Any]) -> None:
        pending = bytes(self.pending_tls or b"")
        self.pending_tls = None
        error = None if done.cancelled() else done.exception()
        if error is not None or done.cancelled():
            self.connection = None
            if not isinstance(error, ConnectionError):  # a peer that left is not logged
                log_rejection(
                    self.transport.get_extra_info("peername"),
                    ProxyProtocolError(f"TLS handshake after the PROXY header failed: {error}"),
                )
            self.transport.abort()
            return
        connection, self.connection = self.connection, None
        if connection is None:  # the connection ended right after the handshake
            return
        connection._start(done.result(), self.state(True), pending)


def _is_ip_socket(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)


def with_settings(cls: type[_P], **settings: Any) -> type[_P]:
    """A subclass of ``cls``, of the same name, with ``settings`` as class attributes."""
    namespace = {**settings, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), namespace)


def proxy_protocol(connection: object) -> ProxyProtocolInfo | None:
    """The connection's PROXY header as ASGI's ``scope["extensions"]["proxy_protocol"]``
    holds it, or None when the connection came without one."""
    proxied = getattr(connection, "proxied", None)
    return None if proxied is None else proxied.as_dict()


def adapted_class(
    create_connection: type[Any] | None, library: type[Any], adapter: type[_P]
) -> type[_P]:
    """``create_connection`` (a subclass of the library's connection class ``library``)
    reading a PROXY header first, as ``adapter`` (the adapter for ``library``) does."""
    if create_connection is None:
        return adapter
    if not (isinstance(create_connection, type) and issubclass(create_connection, library)):
        raise TypeError(
            f"create_connection={create_connection!r} must be a subclass of "
            f"{library.__module__}.{library.__qualname__}"
        )
    if issubclass(create_connection, adapter):
        return create_connection
    combined: type[_P] = type(
        create_connection.__name__,
        (adapter, create_connection),
        {"__module__": create_connection.__module__},
    )
    return combined


def connection_class(
    create_connection: type[ServerConnection] | None,
) -> type[ProxyProtocolConnection]:
    """``create_connection`` (a ServerConnection subclass) reading a PROXY header first."""
    return adapted_class(create_connection, ServerConnection, ProxyProtocolConnection)


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
            open_timeout=websockets_options.get("open_timeout", 10),
        ),
        **websockets_options,
    )
