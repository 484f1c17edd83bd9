"""werkzeug's development server behind a PROXY header.

``proxyproto_mw.werkzeug.run_simple(host, port, app)`` is ``werkzeug.serving.run_simple``
with :class:`ProxyProtocolRequestHandler`; it takes its
:class:`~proxyproto_mw.policy.TrustPolicy` from the ``PROXYPROTO_*`` environment
variables (checked before it serves) unless given ``policy=``. The handler also plugs into
werkzeug directly: ``werkzeug.serving.run_simple(..., request_handler=
ProxyProtocolRequestHandler.with_policy(policy))``.

werkzeug handles a whole connection in one handler. The handler reads the header once, at
the start of the connection (:func:`~proxyproto_mw.blocking.receive_header`), before
werkzeug reads a byte, and keeps it for every request of the connection (werkzeug 3 itself
ends each connection after one response). Each request's environ gets:

- ``REMOTE_ADDR`` / ``REMOTE_PORT``: the header's client (also in werkzeug's access log);
- ``SERVER_NAME`` / ``SERVER_PORT``: the address the client reached, as the header says;
- ``wsgi.url_scheme``: ``https`` when the header's SSL TLV says the client used TLS;
- ``proxy_protocol``: the header as a plain dict
  (:meth:`~proxyproto_mw.header.ProxyHeader.as_dict`), ``peer`` being the load balancer's
  address.

v1 ``UNKNOWN`` and v2 ``LOCAL`` headers (health checks) keep the socket's addresses. A
connection that breaks the policy is closed without a byte written, and one WARNING line
on the ``proxyproto_mw`` logger says whose and why.

The single-threaded server waits for each header in its only thread; serve threaded (the
default of this module's :func:`run_simple`) so that a slow peer holds up no one else.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import werkzeug.serving
from werkzeug.serving import WSGIRequestHandler

from .blocking import receive_header, reject
from .errors import ConfigurationError, ProxyProtocolError
from .header import Address, ProxyHeader
from .policy import Mode, TrustPolicy, environment_policy, logger
from .wsgi import apply_header

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = ["ProxyProtocolRequestHandler", "run_simple"]

_H = TypeVar("_H", bound="ProxyProtocolRequestHandler")

_SERVER_TLS = (
    "werkzeug's ssl_context puts TLS in front of the request handler, so the PROXY header, "
    "which is sent in clear before the TLS handshake, never reaches it: terminate TLS at "
    "the load balancer, or set PROXYPROTO_MODE=off"
)


class ProxyProtocolRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, reading a PROXY header before the connection's requests."""

    policy: ClassVar[TrustPolicy | None] = None
    """None: the policy from the ``PROXYPROTO_*`` environment variables, read at the first
    connection (:func:`run_simple` reads it at start-up)."""

    proxy_header: ProxyHeader | None = None
    """The connection's header, or None when it was admitted without one."""
    proxy_peer: Address | None = None
    """The socket's peer (the load balancer), or None on a UNIX socket."""

    @classmethod
    def with_policy(cls: type[_H], policy: TrustPolicy | None) -> type[_H]:
        """A subclass applying ``policy`` (None: the environment's)."""
        return type(cls.__name__, (cls,), {"policy": policy, "__module__": cls.__module__})

    def handle(self) -> None:
        """Admit the connection through the policy, then serve its requests."""
        policy = self.policy or environment_policy()
        address = self.client_address
        peer = (address[0], address[1]) if isinstance(address, tuple) else None
        self.proxy_peer = peer
        if policy.mode is not Mode.OFF and self.server.ssl_context is not None:
            raise ConfigurationError(_SERVER_TLS)
        try:
            header = receive_header(self.connection, policy, peer)
        except ProxyProtocolError as error:
            reject(self.connection, peer, error)
            self.close_connection = True
            return
        self.proxy_header = header
        if header is not None and not header.is_local:
            # werkzeug builds REMOTE_ADDR and REMOTE_PORT (and its log lines) from this;
            # a header of family UNIX has no address, as werkzeug's own UNIX sockets.
            self.client_address = header.source or ("<local>", 0)
        super().handle()

    def make_environ(self) -> WSGIEnvironment:
        """werkzeug's environ, with what the header says."""
        environ = super().make_environ()
        header = self.proxy_header
        if header is not None:
            apply_header(environ, header.as_dict(self.proxy_peer), server=True)
        return environ


def _log_like_werkzeug() -> None:
    """Write our log lines to stderr, at INFO and above, as werkzeug writes its own, unless
    logging is configured already."""
    if logger.handlers or logging.getLogger().handlers:
        return
    logger.addHandler(logging.StreamHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def run_simple(
    hostname: str,
    port: int,
    application: WSGIApplication,
    *,
    policy: TrustPolicy | None = None,
    **werkzeug_kwargs: Any,
) -> None:
    """``werkzeug.serving.run_simple`` reading a PROXY header on every connection.

    ``policy`` defaults to the ``PROXYPROTO_*`` environment variables; a bad value raises
    :class:`~proxyproto_mw.errors.ConfigurationError` here, before anything listens.
    ``request_handler`` may name a subclass of :class:`ProxyProtocolRequestHandler`. Serves
    threaded unless ``threaded=False`` or ``processes`` is given. werkzeug's
    ``ssl_context`` is refused: TLS in front of the handler would hide the header. One
    INFO line on the ``proxyproto_mw`` logger (on stderr unless logging is configured)
    says what the policy does.
    """
    if policy is None:
        policy = environment_policy()
    handler = werkzeug_kwargs.pop("request_handler", None) or ProxyProtocolRequestHandler
    if not (isinstance(handler, type) and issubclass(handler, ProxyProtocolRequestHandler)):
        raise ConfigurationError(
            f"request_handler must be a subclass of ProxyProtocolRequestHandler, not {handler!r}"
        )
    if policy.mode is not Mode.OFF and werkzeug_kwargs.get("ssl_context") is not None:
        raise ConfigurationError(_SERVER_TLS)
    if werkzeug_kwargs.get("processes", 1) == 1:
        werkzeug_kwargs.setdefault("threaded", True)
    _log_like_werkzeug()
    logger.info("%s", policy.describe())
    werkzeug.serving.run_simple(
        hostname, port, application, request_handler=handler.with_policy(policy), **werkzeug_kwargs
    )
