"""uvicorn protocols that read a PROXY header, then hand the connection to uvicorn's own.

``uvicorn app:app --http proxyproto_mw.uvicorn:HttpToolsProtocol`` (or ``H11Protocol``)
takes its :class:`~proxyproto_mw.policy.TrustPolicy` from the ``PROXYPROTO_*``
environment variables; ``HttpToolsProtocol.with_policy(policy, tls=...)`` makes a class
that carries its own, for ``uvicorn.run(app, http=...)``, ``workers=N`` and ``reload``
included (the class pickles as its policy's and TLS settings' arguments).

Each connection first meets a small protocol of ours, which applies the policy's
admission to its first bytes. Once the header is in, it builds uvicorn's own HTTP protocol
(``uvicorn.protocols.http.*``, unchanged), points the transport at it with
``set_protocol``, and connects it through a :class:`ProxiedTransport`: a view of the real
transport whose ``get_extra_info`` reports the header's addresses, from which uvicorn
builds every request's scope, its access log and, on a WebSocket upgrade, the WebSocket
protocol's addresses. Later bytes go from the real transport straight to uvicorn's parser.
Connections whose header carries addresses skip uvicorn's ``--proxy-headers`` rewriting,
so a forged ``X-Forwarded-For`` cannot replace them.

:func:`check_start_up` is the start-up check: uvicorn runs it when it looks the class up
(``--http proxyproto_mw.uvicorn:...``), before it serves.
"""

from __future__ import annotations

import asyncio
import copyreg
import logging
import multiprocessing
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

import click
from uvicorn.config import Config, create_ssl_context
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11Protocol

from .deadlines import HeaderDeadlines, Waiting, feed
from .deadlines import by_loop as _deadlines
from .decoder import ACCELERATED, NEED_DATA
from .errors import ConfigurationError, ProxyProtocolError
from .header import Address, ProxyHeader, ProxyProtocolInfo
from .policy import (
    Admission,
    Admitted,
    Mode,
    TrustPolicy,
    environment_policy,
    log_rejection,
    logger,
)

try:
    from uvicorn.protocols.http.httptools_impl import (
        HttpToolsProtocol as _UvicornHttpToolsProtocol,
    )
except ImportError:  # httptools is an optional extra of uvicorn
    _UvicornHttpToolsProtocol = None  # type: ignore[assignment, misc]

__all__ = [
    "H11Protocol",
    "HttpToolsProtocol",
    "ProxiedTransport",
    "ProxyProtocol",
    "TLSSettings",
    "check_start_up",
]

ASGIApp = Callable[..., Awaitable[None]]
STARTUP_FAILURE = 3
"""uvicorn's exit status for a start-up that failed (``uvicorn.main.STARTUP_FAILURE``)."""
_OFF = Mode.OFF
_AT_SHUTDOWN = 2**62
"""The arrival tick of a connection waiting for its header when uvicorn shuts down: later
than any sweep's, the shutdown's own timer closes it."""
SHUTDOWN_GRACE = 0.5
"""Seconds a header still has once uvicorn shuts down (one on its way, with its request)."""
_P = TypeVar("_P", bound="ProxyProtocol")

UVICORN_TLS_MESSAGE = (
    "uvicorn's --ssl-* options put TLS in front of the protocol, so the PROXY header, which "
    "is sent in clear before the TLS handshake, never reaches it. Run `proxyproto-mw serve "
    "APP --ssl-keyfile ... --ssl-certfile ...` instead: it reads the header, then starts TLS "
    "on the same connection."
)
HTTPTOOLS_MISSING_MESSAGE = (
    "proxyproto_mw.uvicorn:HttpToolsProtocol needs httptools, which is not installed: "
    "pip install httptools, or use proxyproto_mw.uvicorn:H11Protocol"
)


# --- TLS after the header --------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    """TLS served after the PROXY header, as uvicorn's ``create_ssl_context`` takes it.

    Plain values, so that a protocol class made by ``with_policy(policy, tls=...)`` pickles
    with them into uvicorn's worker and reload processes (no environment variable holds
    the key's password); each process builds its :class:`ssl.SSLContext` once.
    """

    certfile: str
    keyfile: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_version: int = ssl.PROTOCOL_TLS_SERVER
    cert_reqs: int = ssl.CERT_NONE
    ca_certs: str | None = None
    ciphers: str | None = None
    """None: OpenSSL's defaults, as uvicorn's ``--ssl-ciphers``."""

    def context(self) -> ssl.SSLContext:
        """A server-side context; ``OSError`` / ``ssl.SSLError`` if a file cannot be loaded."""
        return create_ssl_context(
            certfile=self.certfile,
            keyfile=self.keyfile,
            password=self.password,
            ssl_version=self.ssl_version,
            cert_reqs=self.cert_reqs,
            ca_certs=self.ca_certs,
            ciphers=self.ciphers,
        )


# --- the view uvicorn's protocols are connected through ---------------------------------------


def _forward(name: str) -> Any:
    """The real transport's method ``name``, as a property of the view."""
    return property(attrgetter(f"_transport.{name}"), doc="The real transport's.")


class _PythonTransportView:
    """The fields and answers of :class:`ProxiedTransport`, in Python: the reference for
    ``_speedups.TransportView``, its base when the C accelerator is built."""

    __slots__ = ("_app", "_header", "_peer", "_tls", "_transport", "write")

    def __init__(
        self,
        transport: asyncio.Transport,
        header: ProxyHeader,
        peer: Address | None,
        app: ASGIApp,
        tls: bool,
    ) -> None:
        self._transport = transport
        self._header = header
        self._peer = peer
        self._app = app
        self._tls = bool(tls)
        self.write = transport.write

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The header's view of ``name``, else the real transport's."""
        # In the order uvicorn's connection_made asks: socket (twice), sockname, peername,
        # sslcontext.
        if name == "socket":
            return None  # uvicorn asks the socket first: so that it asks for peername
        if name == "sockname":
            return self._header.destination
        if name == "peername":
            return self._header.source
        if name == "sslcontext" and not self._tls:
            return default  # a plain TCP transport has none
        if name == "proxy_protocol":
            return self._header
        return self._transport.get_extra_info(name, default)

    # The real transport's own methods (asyncio.Transport's API besides write and
    # get_extra_info); the C view forwards each without a bound method or a Python frame.
    is_closing = _forward("is_closing")
    close = _forward("close")
    pause_reading = _forward("pause_reading")
    resume_reading = _forward("resume_reading")
    is_reading = _forward("is_reading")
    set_protocol = _forward("set_protocol")  # uvicorn's WebSocket upgrade
    get_protocol = _forward("get_protocol")
    abort = _forward("abort")
    can_write_eof = _forward("can_write_eof")
    write_eof = _forward("write_eof")
    writelines = _forward("writelines")
    get_write_buffer_size = _forward("get_write_buffer_size")
    get_write_buffer_limits = _forward("get_write_buffer_limits")
    set_write_buffer_limits = _forward("set_write_buffer_limits")

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        return self._call_slow(scope, receive, send)  # type: ignore[attr-defined, no-any-return]


if TYPE_CHECKING or not ACCELERATED:
    _TransportView = _PythonTransportView
else:
    from ._speedups import TransportView as _TransportView


class ProxiedTransport(_TransportView):
    """A connection that came with a PROXY header, as uvicorn's protocols see it.

    Given to uvicorn's HTTP protocol as its transport (and by it, on an upgrade, to the
    WebSocket protocol): ``get_extra_info`` answers ``peername`` / ``sockname`` from the
    header and ``socket`` with None (uvicorn asks the socket first), unless the header
    carries no addresses (v1 UNKNOWN, v2 LOCAL), when the real transport answers.
    ``write`` is the real transport's own method, bound once; the rest of
    ``asyncio.Transport``'s methods (``close``, ``is_closing``, ``pause_reading``, ...) call
    the real transport's. Reads never pass through here (the real transport calls uvicorn's
    protocol directly).

    Called as an ASGI app, it calls the server's app with the header in
    ``scope["extensions"]["proxy_protocol"]`` (built per request, so that an idle
    connection holds only the header) and the scheme it implies. With the C accelerator
    its fields, ``get_extra_info`` and the common call (an HTTP request, a header without
    TLVs) are ``_speedups.TransportView``'s; ``_PythonTransportView`` is the reference.
    """

    __slots__ = ()

    @property
    def header(self) -> ProxyHeader:
        """The connection's PROXY header."""
        return self._header

    def _call_slow(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        """The server's app, with the header in the scope's extensions (beside the
        server's own)."""
        info = self._header.as_dict(self._peer, tls=self._tls)
        extensions = scope.get("extensions")
        if scope["type"] == "websocket":
            # The app holds this scope for as long as the WebSocket is open.
            scope["extensions"] = {**(extensions or {}), "proxy_protocol": _compact(info)}
        else:
            # uvicorn keeps a request's scope until the next request: the app gets its own
            # (as from a middleware), so that an idle connection holds no extension.
            scope = {
                **scope,
                "extensions": {"proxy_protocol": info}
                if extensions is None
                else {**extensions, "proxy_protocol": info},
            }
        if info["tls"]:
            scope["scheme"] = "wss" if scope["type"] == "websocket" else "https"
        return self._app(scope, receive, send)

    def __repr__(self) -> str:
        return f"<ProxiedTransport {self._header.source} via {self._transport!r}>"


class _LocalHeaderTransport(ProxiedTransport):
    """The view of a connection whose header carries no addresses (v1 UNKNOWN, v2 LOCAL):
    the real transport's addresses, the header in the app's scope."""

    __slots__ = ()

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The real transport's ``name`` (and the header as ``proxy_protocol``)."""
        if name == "proxy_protocol":
            return self._header
        return self._transport.get_extra_info(name, default)


class _SharedKeys:
    """Instances lend their ``__dict__``: a dict whose keys are stored once for all."""


def _compact(info: ProxyProtocolInfo) -> ProxyProtocolInfo:
    """``info`` as a dict that shares its keys with every other one (about 180 bytes
    instead of 460), for a scope that lives as long as its WebSocket."""
    holder = _SharedKeys()
    for key, value in info.items():
        setattr(holder, key, value)
    compact: ProxyProtocolInfo = holder.__dict__  # type: ignore[assignment]
    return compact


_ws_classes: dict[Any, Any] = {}


def _ws_protocol_with_header(ws_protocol_class: Any) -> Any:
    """``ws_protocol_class`` calling the app through the :class:`ProxiedTransport` it is
    connected with (uvicorn's WebSocket protocols take the app from the config)."""
    subclass = _ws_classes.get(ws_protocol_class)
    if subclass is None:

        def connection_made(self: Any, transport: Any) -> None:
            if isinstance(transport, ProxiedTransport):
                self.app = transport
            ws_protocol_class.connection_made(self, transport)

        subclass = type(
            ws_protocol_class.__name__,
            (ws_protocol_class,),
            {"connection_made": connection_made, "__module__": ws_protocol_class.__module__},
        )
        _ws_classes[ws_protocol_class] = subclass
    return subclass


# --- the protocol uvicorn builds per connection -----------------------------------------------


class _PythonHeaderPhase(asyncio.Protocol):
    """The fields of :class:`ProxyProtocol` and its ``__init__``, in Python: its base when
    the C accelerator is not built (``_speedups.HeaderPhase`` otherwise)."""

    __slots__ = (
        "_admission",
        "_app_state",
        "_config",
        "_loop",
        "_peer",
        "_pending_tls_data",
        "_server_state",
        "_transport",
        "_waiting",
    )

    def __init__(
        self,
        config: Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._loop = _loop or asyncio.get_event_loop()


if TYPE_CHECKING or not ACCELERATED:
    _HeaderPhase = _PythonHeaderPhase
else:
    from ._speedups import HeaderPhase as _HeaderPhase


class ProxyProtocol(_HeaderPhase, asyncio.Protocol):
    """Reads the PROXY header, then hands the connection to uvicorn's ``http_protocol``.

    uvicorn builds one per connection, as any ``--http`` class, with ``config``,
    ``server_state`` and ``app_state``; uvicorn's own protocol is built only once the
    header is in, with the same arguments. Until then the connection is among uvicorn's
    (``server_state.connections``) as this protocol, so that uvicorn's shutdown calls
    :meth:`shutdown` and never waits for a header that does not come.

    With the C accelerator, ``_speedups.HeaderPhase`` (the base) holds the fields and
    serves the common connection (a trusted peer whose first read holds the whole header)
    from ``connection_made`` to the hand-over; it calls :meth:`_connection_made_python` and
    :meth:`_data_received_python`, the reference, for everything else.
    """

    http_protocol: ClassVar[type[asyncio.Protocol]]
    """uvicorn's HTTP protocol class the connection is handed to."""
    policy: ClassVar[TrustPolicy | None] = None
    """None: the policy from the ``PROXYPROTO_*`` environment variables."""
    tls: ClassVar[TLSSettings | None] = None
    """Serve TLS after the header on the same connection (``proxyproto-mw serve``)."""
    tls_context: ClassVar[ssl.SSLContext | None] = None
    """The context built from ``tls`` in this process."""
    unannounced: ClassVar[bool] = False
    """The INFO line saying that PROXY handling is on is still to be logged."""

    __slots__ = ()
    _transport: asyncio.Transport
    _admission: Admission | None
    """Made when the first bytes leave the header incomplete."""
    _peer: Address | None
    _waiting: dict[Waiting, int] | None
    """The loop's connections waiting for their header (None: the header phase is over)."""
    _pending_tls_data: bytearray | None
    """Bytes that arrive while the TLS handshake after the header is being started."""

    @classmethod
    def with_policy(
        cls: type[_P],
        policy: TrustPolicy | None,
        *,
        tls: TLSSettings | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> type[_P]:
        """A subclass applying ``policy`` (None: the environment's); with ``tls`` it
        serves TLS after the header. It pickles (``workers=N``, ``reload``) as ``policy``'s
        and ``tls``'s arguments; ``tls_context``, an already built context, does not."""
        _route_logging()
        if tls is not None:
            tls_context = tls.context()
        namespace = {
            "policy": policy,
            "tls": tls,
            "tls_context": tls_context,
            "__slots__": (),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        subclass: type[_P] = _PolicyClass(cls.__name__, (cls,), namespace)  # type: ignore[assignment]
        if policy is not None and logging.getLogger("uvicorn.error").hasHandlers():
            _announce(policy, tls_context is not None)  # a gunicorn worker: logging is set up
        else:
            # uvicorn.run(http=...) and uvicorn's worker processes set up logging later,
            # and look nothing up that would run our code: say it on the first connection.
            subclass.unannounced = True
        return subclass

    # asyncio.Protocol

    def _connection_made_python(self, transport: asyncio.BaseTransport) -> None:
        """Watch for the header; uvicorn's protocol is built once it is in."""
        self._transport = transport  # type: ignore[assignment]
        policy = self.policy
        if policy is None:  # from the environment, read once for the class
            policy = type(self).policy = environment_policy()
        peer = transport.get_extra_info("peername")
        self._admission = None  # made only if the first bytes do not decide
        if not peer and _is_ip_socket(transport):
            # The peer reset the connection before it was accepted (a health check that
            # connects and leaves): there is no one to serve.
            self._waiting = None
            transport.abort()  # type: ignore[attr-defined]
            return
        peer = self._peer = peer or None
        if policy.mode is _OFF:
            self._waiting = None
            self._admitted(peer, Admitted(None, b""))
            return
        deadlines = _deadlines.get(self._loop)
        if deadlines is None:  # the first connection in a while
            deadlines = _deadlines[self._loop] = HeaderDeadlines(self._loop)
            if self.unannounced:
                type(self).unannounced = False
                _announce(policy, self.tls_context is not None)
        waiting = self._waiting = deadlines.waiting
        waiting[self] = deadlines.tick
        # Counted among uvicorn's connections, so that its shutdown closes this one
        # (shutdown() below) instead of waiting for it.
        self._server_state.connections.add(self)

    def _data_received_python(self, data: bytes) -> None:
        """Apply the policy to the first bytes until the header is complete."""
        waiting = self._waiting
        if waiting is None:  # starting TLS after the header, or closed already
            if self.tls_context is not None and self._pending_tls_data is not None:
                self._pending_tls_data += data
            return
        admission = self._admission
        try:
            if admission is None:
                admitted = self.policy.admit(self._peer, data)  # type: ignore[union-attr]
                if type(admitted) is Admission:
                    self._admission = admitted
                    return
            else:
                admitted = admission.receive(data)
                if admitted is NEED_DATA:
                    return
        except ProxyProtocolError as error:
            self._reject(error)
            return
        arrived = waiting.pop(self, None)
        self._waiting = self._admission = None
        self._server_state.connections.discard(self)  # uvicorn's protocol counts it now
        if self.tls_context is not None:
            self._start_tls(self._peer, admitted)  # type: ignore[arg-type]
            return
        protocol = self._hand_over(self._transport, admitted.header, self._peer, admitted.data)  # type: ignore[union-attr]
        if arrived == _AT_SHUTDOWN:
            protocol.shutdown()  # the server is stopping: this request, then close

    def eof_received(self) -> bool | None:
        """The peer closed its side before the header was complete."""
        self._stop_waiting()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended before the header was complete."""
        self._stop_waiting()

    # the header

    def shutdown(self) -> None:
        """uvicorn's shutdown, for a connection still waiting for its header: uvicorn no
        longer counts it. The header has ``SHUTDOWN_GRACE`` seconds more to complete, and
        the request it brings is then served as uvicorn serves one in progress at shutdown
        (without keep-alive); else the connection is closed without a byte, as uvicorn
        closes an idle connection."""
        waiting = self._waiting
        if waiting is not None:
            waiting[self] = _AT_SHUTDOWN  # the sweep leaves it to the timer below
            self._server_state.connections.discard(self)
            self._loop.call_later(SHUTDOWN_GRACE, self._close_unless_handed_over)

    def _close_unless_handed_over(self) -> None:
        if self._waiting is not None:
            self._stop_waiting()
            self._transport.close()

    def _stop_waiting(self) -> None:
        waiting = self._waiting
        if waiting is not None:
            self._waiting = None
            waiting.pop(self, None)
            self._server_state.connections.discard(self)

    def header_timed_out(self) -> None:
        """Close the connection: its header did not come in time (the sweep calls it)."""
        if self._waiting is None:
            return
        admission = self._admission or Admission(self.policy, self._peer)  # type: ignore[arg-type]
        self._reject(admission.timed_out())

    def _reject(self, error: ProxyProtocolError) -> None:
        self._stop_waiting()
        self._admission = None
        log_rejection(self._peer, error)
        self._transport.abort()

    def _admitted(self, peer: Address | None, admitted: Admitted) -> None:
        if self.tls_context is not None:
            self._start_tls(peer, admitted)
        else:
            self._hand_over(self._transport, admitted.header, peer, admitted.data)

    def _hand_over_python(
        self,
        transport: asyncio.Transport,
        header: ProxyHeader | None,
        peer: Address | None,
        data: bytes,
    ) -> Any:
        """Build uvicorn's protocol and give it the connection; later bytes go to it."""
        protocol: Any = self.http_protocol(  # type: ignore[call-arg]
            config=self._config,
            server_state=self._server_state,
            app_state=self._app_state,
            _loop=self._loop,
        )
        connected: Any = transport
        if header is not None:
            app = protocol.app
            if type(app) is ProxyHeadersMiddleware:
                # The header's addresses are authoritative: X-Forwarded-For written by a
                # client must not replace them.
                app = app.app
            if peer is not None and len(peer) != 2:
                peer = (peer[0], peer[1])  # IPv6: host and port, as the extension holds them
            view = ProxiedTransport if header.source is not None else _LocalHeaderTransport
            connected = protocol.app = view(
                transport, header, peer, app, self.tls_context is not None
            )
            ws_protocol_class = protocol.ws_protocol_class
            if ws_protocol_class is not None:
                protocol.ws_protocol_class = _ws_classes.get(
                    ws_protocol_class
                ) or _ws_protocol_with_header(ws_protocol_class)
        # uvloop caches the protocol's data_received: set_protocol makes it look again.
        transport.set_protocol(protocol)
        protocol.connection_made(connected)
        if data:
            protocol.data_received(data)
        return protocol

    if TYPE_CHECKING or not ACCELERATED:
        connection_made = _connection_made_python
        data_received = _data_received_python
        _hand_over = _hand_over_python

    def _start_tls(self, peer: Address | None, admitted: Admitted) -> None:
        """Serve TLS on the connection after its header (the header itself is in clear)."""
        raw = self._transport
        raw.pause_reading()
        self._pending_tls_data = bytearray()
        context = self.tls_context
        assert context is not None
        loop = self._loop
        task = loop.create_task(loop.start_tls(raw, self, context, server_side=True))
        if admitted.data:
            # start_tls connects its TLS protocol and resumes reading from callbacks it
            # schedules when the task first runs; this runs right after them, before the
            # loop polls the socket again, so the ClientHello bytes keep their order.
            loop.call_soon(loop.call_soon, feed, raw, admitted.data)

        def tls_ready(done: asyncio.Task[asyncio.Transport | None]) -> None:
            pending = bytes(self._pending_tls_data or b"")
            self._pending_tls_data = None
            error = done.exception() if not done.cancelled() else None
            tls_transport = None if error is not None or done.cancelled() else done.result()
            if tls_transport is None:
                after = (
                    "after the PROXY header"
                    if admitted.header is not None
                    else "(the connection came without a PROXY header)"
                )
                log_rejection(peer, ProxyProtocolError(f"TLS handshake {after} failed: {error}"))
                raw.abort()
                return
            self._hand_over(tls_transport, admitted.header, peer, pending)

        task.add_done_callback(tls_ready)


if not TYPE_CHECKING and ACCELERATED:
    from ._speedups import configure_protocol

    configure_protocol(
        _deadlines,
        _OFF,
        asyncio.get_event_loop,
        ProxiedTransport,
        _LocalHeaderTransport,
        ProxyHeadersMiddleware,
        _ws_classes,
        _ws_protocol_with_header,
        _AT_SHUTDOWN,
    )


def _is_ip_socket(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)


class _H11Protocol(ProxyProtocol):
    """uvicorn's h11 protocol behind a PROXY header."""

    __slots__ = ()
    http_protocol = _UvicornH11Protocol


class _HttpToolsProtocol(ProxyProtocol):
    """uvicorn's httptools protocol behind a PROXY header."""

    __slots__ = ()
    http_protocol = _UvicornHttpToolsProtocol


_H11Protocol.__name__ = _H11Protocol.__qualname__ = "H11Protocol"
_HttpToolsProtocol.__name__ = _HttpToolsProtocol.__qualname__ = "HttpToolsProtocol"

_PROTOCOLS: dict[str, type[ProxyProtocol] | None] = {
    "H11Protocol": _H11Protocol,
    "HttpToolsProtocol": _HttpToolsProtocol if _UvicornHttpToolsProtocol is not None else None,
}
"""The classes ``--http proxyproto_mw.uvicorn:NAME`` names (None: httptools is missing)."""


# --- classes made by with_policy pickle as their arguments ---------------------------------------


class _PolicyClass(type):
    """The type of the classes :meth:`ProxyProtocol.with_policy` makes, so that they pickle."""


def _policy_arguments(policy: TrustPolicy) -> tuple[Any, ...]:
    return (
        type(policy),
        policy.trusted,
        policy.mode.value,
        policy.timeout,
        tuple(sorted(policy.versions)),
        policy.setting,
        policy.trust_unix_peers,
    )


def _reduce_policy_class(cls: _PolicyClass) -> tuple[Any, ...]:
    base = cls.__bases__[0]
    if cls.tls_context is not None and cls.tls is None:  # type: ignore[attr-defined]
        raise TypeError(
            f"{cls.__name__}.with_policy(tls_context=...) cannot be sent to uvicorn's worker "
            "or reload processes: pass tls=TLSSettings(...) instead"
        )
    policy = cls.policy  # type: ignore[attr-defined]
    base_ref = base.__name__ if _PROTOCOLS.get(base.__name__) is base else base
    return (
        _rebuild_policy_class,
        (base_ref, None if policy is None else _policy_arguments(policy), cls.tls),  # type: ignore[attr-defined]
    )


def _rebuild_policy_class(
    base: str | type[ProxyProtocol], policy: tuple[Any, ...] | None, tls: TLSSettings | None
) -> type[ProxyProtocol]:
    """The class again, in a uvicorn worker or reload process."""
    if isinstance(base, str):
        found = _PROTOCOLS.get(base)
        if found is None:
            _fail(HTTPTOOLS_MISSING_MESSAGE)
        base = found
    rebuilt = None
    if policy is not None:
        kind, trusted, mode, timeout, versions, setting, trust_unix_peers = policy
        rebuilt = kind(
            trusted, mode, timeout, versions, setting=setting, trust_unix_peers=trust_unix_peers
        )
    return base.with_policy(rebuilt, tls=tls)


copyreg.pickle(_PolicyClass, _reduce_policy_class)


# --- start-up ------------------------------------------------------------------------------------


def check_start_up(protocol_class: type[ProxyProtocol]) -> None:
    """What uvicorn runs before it serves with ``--http proxyproto_mw.uvicorn:NAME``.

    uvicorn looks the class up (``import_from_string``, in ``Config.load()``) in every
    process that serves, before it listens: the policy from the ``PROXYPROTO_*``
    variables is read, and uvicorn's own ``--ssl-*`` options (read from uvicorn's command
    line through click's current context) are refused, each with one clear line and
    uvicorn's start-up failure status under the ``uvicorn`` command. Then one INFO line
    says that PROXY handling is on, with which policy.
    """
    _route_logging()
    try:
        policy = protocol_class.policy or environment_policy()
        uvicorn_options = _uvicorn_command_options() or {}
        if uvicorn_options.get("ssl_keyfile") or uvicorn_options.get("ssl_certfile"):
            raise ConfigurationError(UVICORN_TLS_MESSAGE)
    except ConfigurationError as error:
        _fail(str(error))
    _announce(policy, protocol_class.tls_context is not None)


def _uvicorn_command_options() -> dict[str, Any] | None:
    """The options of the ``uvicorn`` command running in this process, if it runs."""
    from uvicorn.main import main as uvicorn_command  # noqa: PLC0415  (uvicorn's click CLI)

    context = click.get_current_context(silent=True)
    if context is None or context.command is not uvicorn_command:
        return None
    return context.params


def _fail(message: str) -> NoReturn:
    """Stop at start-up: under the ``uvicorn`` command, or in a worker or reload process
    (which uvicorn starts with multiprocessing), one line (an ERROR through uvicorn's
    logging) and uvicorn's start-up failure status; elsewhere an exception saying the same."""
    if _uvicorn_command_options() is not None or multiprocessing.parent_process() is not None:
        _route_logging()
        logger.error("%s", message)
        raise SystemExit(STARTUP_FAILURE)
    if message == HTTPTOOLS_MISSING_MESSAGE:
        raise ImportError(message)
    raise ConfigurationError(message)


_announced: set[str] = set()


def _announce(policy: TrustPolicy, tls: bool) -> None:
    """One INFO line per process and policy, as every adapter says it: PROXY handling is on
    (or off), and how."""
    line = policy.describe() + ("; TLS after the header" if tls else "")
    if line not in _announced:
        _announced.add(line)
        logger.info("%s", line)


class _ToUvicornErrorLog(logging.Handler):
    """Hands our records to uvicorn's ``uvicorn.error`` logger: its handlers, its format
    and its level (``--log-level``), as for uvicorn's own lines."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger("uvicorn.error")
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def _route_logging() -> None:
    """Send our log lines where uvicorn sends its own, unless logging routes them already."""
    if logger.handlers or (logger.propagate and logging.getLogger().handlers):
        return
    logger.addHandler(_ToUvicornErrorLog())
    logger.setLevel(logging.DEBUG)  # uvicorn.error's level decides
    logger.propagate = False


if TYPE_CHECKING:
    H11Protocol = _H11Protocol
    HttpToolsProtocol = _HttpToolsProtocol


def __getattr__(name: str) -> type[ProxyProtocol]:
    """``H11Protocol`` and ``HttpToolsProtocol``, once :func:`check_start_up` passed."""
    if name not in _PROTOCOLS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    protocol_class = _PROTOCOLS[name]
    if protocol_class is None:
        _fail(HTTPTOOLS_MISSING_MESSAGE)
    check_start_up(protocol_class)
    return protocol_class
