"""The ``websockets`` library's threaded server behind a PROXY header.

``serve(handler, host, port, policy=..., **websockets_options)`` is used exactly like
:func:`websockets.sync.server.serve`, whose every option it passes through; it builds
each connection as a :class:`ProxyProtocolConnection`, which can also be given to the
library's own ``serve`` as ``create_connection=``.

The library builds each connection in the connection's own thread; this class reads the
header there first, from the blocking socket (:func:`proxyproto_mw.blocking.receive_header`
takes exactly the header's bytes), and only then lets the library's connection start
reading. A connection that cannot be served is closed without a byte and logged once.
``connection.remote_address`` and ``connection.local_address`` answer the header's client
and server addresses; :func:`proxy_protocol` gives the handler the decoded header.

With ``ssl=``, the header is read in clear and TLS starts after it on the same socket.
The library would start TLS before it builds the connection, so :func:`serve` keeps the
context from it and hands it to the connection class.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import websockets.sync.server
from websockets.server import ServerProtocol
from websockets.sync.server import Server, ServerConnection

from ..blocking import receive_header, reject
from ..errors import ConnectionClosed, ProxyProtocolError
from ..header import Address
from ..policy import TrustPolicy, environment_policy
from . import ProxiedConnection, ProxiedState, adapted_class, proxy_protocol, with_settings

__all__ = ["ProxyProtocolConnection", "proxy_protocol", "serve"]

_C = TypeVar("_C", bound="ProxyProtocolConnection")


class ProxyProtocolConnection(ProxiedConnection, ServerConnection):
    """A :class:`websockets.sync.server.ServerConnection` that starts with a PROXY header.

    Pass it (or a class from :meth:`with_policy`) as ``create_connection=`` to
    :func:`websockets.sync.server.serve`. ``remote_address`` and ``local_address`` are
    the header's client and server, except for headers without addresses (v1 ``UNKNOWN``,
    v2 ``LOCAL``), which keep the socket's. Pass TLS settings to :meth:`with_policy` (or to
    :func:`serve`), never as the library's ``ssl=``: the library's TLS would start before
    the header, which is sent in clear.
    """

    _peer: Any = None
    """The socket's peer, as ``getpeername()`` told it before the connection started."""

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
        return with_settings(
            cls, policy=policy, tls_context=tls, tls_handshake_timeout=tls_handshake_timeout
        )

    def __init__(
        self,
        sock: socket.socket,
        protocol: ServerProtocol,
        server: Server,
        *,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_queue: int | tuple[int | None, int | None] | None = 16,
        **options: Any,
    ) -> None:
        """Read the header (and start TLS), then start the library's connection, to which
        every argument goes (its defaults are the library's).

        Raises the :class:`~proxyproto_mw.errors.ProxyProtocolError` that closed the
        connection, after logging it; the library then forgets the connection quietly.
        """
        policy = self.policy
        if policy is None:  # from the environment, read once for the class
            policy = type(self).policy = environment_policy()
        try:
            name = sock.getpeername()
        except OSError as error:  # reset before this thread ran
            sock.close()
            raise ConnectionClosed(f"connection reset before it was served ({error})") from None
        peer: Address | None = (name[0], name[1]) if isinstance(name, tuple) else None
        try:
            header = receive_header(sock, policy, peer)
        except ProxyProtocolError as error:
            reject(sock, peer, error)
            raise
        tls = self.tls_context
        if tls is not None:
            sock = _start_tls(sock, peer, tls, self.tls_handshake_timeout)
        # Two attributes, set in the same order for every connection (see ProxiedState).
        self._peer = name
        self.proxied = None if header is None else ProxiedState(header, peer, tls is not None)
        # The rest (the server and the options) is the library's. Its options go by name:
        # handing them on as **kwargs would cost every connection about 5,000 instructions
        # (a dict built, then unpacked by the call).
        if options:  # options of a later websockets: all go as **kwargs then
            options.update(
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=close_timeout,
                max_queue=max_queue,
            )
            super().__init__(sock, protocol, server, **options)
            return
        super().__init__(
            sock,
            protocol,
            server,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            max_queue=max_queue,
        )

    @property
    def remote_address(self) -> Any:
        """The client's address: the header's, else the socket's peer (still known once
        the socket is closed)."""
        proxied = self.proxied
        if proxied is not None and proxied.client is not None:
            return proxied.client
        return self._peer


def _start_tls(
    sock: socket.socket, peer: Address | None, context: ssl.SSLContext, timeout: float | None
) -> ssl.SSLSocket:
    """``sock`` with TLS served on it, after the header that was read in clear; a failed
    handshake closes it and is logged as in the asyncio server."""
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        tls.settimeout(timeout)
        tls.do_handshake()
        tls.settimeout(None)
    except (OSError, ValueError) as error:  # ssl.SSLError and TimeoutError are OSErrors
        failed = ProxyProtocolError(f"TLS handshake after the PROXY header failed: {error}")
        reject(tls, peer, failed)
        raise failed from None
    return tls


def connection_class(
    create_connection: type[ServerConnection] | None,
) -> type[ProxyProtocolConnection]:
    """``create_connection`` (a ServerConnection subclass) reading a PROXY header first."""
    return adapted_class(create_connection, ServerConnection, ProxyProtocolConnection)


def serve(
    handler: Callable[[ServerConnection], None],
    host: str | None = None,
    port: int | None = None,
    *,
    policy: TrustPolicy | None = None,
    **websockets_options: Any,
) -> Server:
    """:func:`websockets.sync.server.serve`, with a PROXY header before each connection.

    ``policy`` defaults to the ``PROXYPROTO_*`` environment variables (read now, so that a
    bad value fails here). Every other option is the library's; ``ssl=`` serves TLS after
    the header, and ``create_connection=`` may name your own ServerConnection subclass.
    Use it as the library's: ``with serve(handler, host, port) as server: ...``.
    """
    if policy is None:
        environment_policy()
    tls = websockets_options.pop("ssl", None)
    if tls is None:  # the library's former name for ssl
        tls = websockets_options.pop("ssl_context", None)
    create_connection = connection_class(websockets_options.pop("create_connection", None))
    return websockets.sync.server.serve(
        handler,
        host,
        port,
        create_connection=create_connection.with_policy(
            policy, tls=tls, tls_handshake_timeout=websockets_options.get("open_timeout", 10)
        ),
        **websockets_options,
    )
