"""WSGI middleware: the PROXY header's client stays the client, for Flask and other WSGI apps.

Serve the app with this package's werkzeug handler or gunicorn workers, which put the
decoded header into ``environ["proxy_protocol"]``. The middleware then:

- sets ``REMOTE_ADDR`` / ``REMOTE_PORT`` back to the header's client (another middleware,
  such as a ``ProxyFix`` that believes ``X-Forwarded-For``, may have replaced them with a
  value a client wrote), ``SERVER_NAME`` / ``SERVER_PORT`` to the header's destination
  when ``server_from_header`` is set, and ``wsgi.url_scheme`` to ``https`` when the
  balancer's SSL TLV says the client connected over TLS;
- optionally rewrites ``X-Real-IP``, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` as nginx
  did, with the same rules as the ASGI middleware
  (:class:`~proxyproto_mw.forwarded.ForwardedHeaders`).

Wrap the app innermost (closest to it), so that it runs after any middleware that
rewrites the client from headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from .forwarded import ForwardedHeaders
from .header import ProxyProtocolInfo

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = Callable[..., Any]
    WSGIApplication = Callable[..., Iterable[bytes]]
    WSGIEnvironment = dict[str, Any]

__all__ = ["ENVIRON_KEY", "ProxyProtocolMiddleware", "apply_header", "proxy_protocol"]

ENVIRON_KEY = "proxy_protocol"
"""Where the servers of this package put the decoded header in the WSGI environ."""


def proxy_protocol(environ: Mapping[str, Any]) -> ProxyProtocolInfo | None:
    """The decoded PROXY header of a request's environ (Flask: ``request.environ``), or None."""
    info: ProxyProtocolInfo | None = environ.get(ENVIRON_KEY)
    return info


def apply_header(environ: WSGIEnvironment, info: ProxyProtocolInfo, *, server: bool) -> None:
    """Put what a decoded header says of the connection into ``environ``.

    ``REMOTE_ADDR`` / ``REMOTE_PORT`` become the header's client (LOCAL and UNKNOWN
    headers have none, and keep the socket's), ``SERVER_NAME`` / ``SERVER_PORT`` its
    destination when ``server`` is set, and ``wsgi.url_scheme`` follows ``info["tls"]``.
    The werkzeug and gunicorn adapters and :class:`ProxyProtocolMiddleware` all use it.
    """
    environ[ENVIRON_KEY] = info
    client = info["client"]
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        # In the server's own type: werkzeug writes an int, gunicorn a str.
        port = environ.get("REMOTE_PORT")
        environ["REMOTE_PORT"] = client[1] if isinstance(port, int) else str(client[1])
    destination = info["server"]
    if server and destination is not None:
        environ["SERVER_NAME"] = destination[0]
        environ["SERVER_PORT"] = str(destination[1])
    environ["wsgi.url_scheme"] = "https" if info["tls"] else "http"


_NO_IP_ADDRESS = frozenset({None, "", "<local>"})
"""``REMOTE_ADDR`` of a client without an IP address: gunicorn writes an empty string,
werkzeug ``<local>``."""


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class ProxyProtocolMiddleware:
    """Keep the PROXY header's addresses in the environ; optionally rewrite forwarding headers.

    ``x_real_ip``, ``x_forwarded_for`` (``"append"`` or ``"replace"``) and
    ``x_forwarded_proto`` choose the request headers rewritten from the real client, as
    nginx's ``proxy_set_header`` lines did; by default none is touched.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        x_real_ip: bool = False,
        x_forwarded_for: Literal["append", "replace"] | None = None,
        x_forwarded_proto: bool = False,
        server_from_header: bool = False,
    ) -> None:
        self.app = app
        self.forwarded = ForwardedHeaders(x_real_ip, x_forwarded_for, x_forwarded_proto)
        self.server_from_header = server_from_header

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Fix the environ, then call the app."""
        info = proxy_protocol(environ)
        if info is not None:
            apply_header(environ, info, server=self.server_from_header)
        if self.forwarded.enabled:
            self._rewrite(environ)
        return self.app(environ, start_response)

    def _rewrite(self, environ: WSGIEnvironment) -> None:
        forwarded_for = environ.get(_environ_key("x-forwarded-for"))
        client = environ.get("REMOTE_ADDR")
        changes = self.forwarded.rewrite(
            None if client in _NO_IP_ADDRESS else client,
            environ.get("wsgi.url_scheme", "http"),
            [forwarded_for] if forwarded_for else [],
        )
        for header, value in changes.items():
            key = _environ_key(header)
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
