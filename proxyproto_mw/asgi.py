"""ASGI middleware: the PROXY header's client stays the client, through every middleware.

Run the app with this package's uvicorn protocols (or its gunicorn worker), which put the
decoded header into ``scope["extensions"]["proxy_protocol"]``. The middleware then:

- sets ``scope["client"]`` and ``scope["server"]`` back to the header's addresses, so that
  an outer middleware or server option that believes ``X-Forwarded-For`` (uvicorn's
  ``--proxy-headers`` is on by default) cannot replace them with a value a client wrote;
- optionally rewrites ``X-Real-IP``, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` as
  nginx did (see :class:`~proxyproto_mw.forwarded.ForwardedHeaders`).

Add it innermost (first, with Starlette's ``add_middleware``), so that it runs after any
middleware that rewrites the client from headers. ``lifespan`` and other scope types pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Literal, Protocol

from .forwarded import X_FORWARDED_FOR, ForwardedHeaders
from .header import ProxyProtocolInfo

__all__ = ["ProxyProtocolMiddleware", "proxy_protocol"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _HasScope(Protocol):
    @property
    def scope(self) -> Any: ...


def proxy_protocol(connection: Mapping[str, Any] | _HasScope) -> ProxyProtocolInfo | None:
    """The decoded PROXY header of a scope, or of a Starlette ``Request`` / ``WebSocket``.

    None when the connection came without a header.
    """
    scope = connection if isinstance(connection, Mapping) else connection.scope
    info: ProxyProtocolInfo | None = scope.get("extensions", {}).get("proxy_protocol")
    return info


class ProxyProtocolMiddleware:
    """Keep the PROXY header's addresses in the scope; optionally rewrite forwarding headers.

    ``x_real_ip``, ``x_forwarded_for`` (``"append"`` or ``"replace"``) and
    ``x_forwarded_proto`` choose the request headers to rewrite from the real client, as
    nginx's ``proxy_set_header`` lines did; by default none is touched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        x_real_ip: bool = False,
        x_forwarded_for: Literal["append", "replace"] | None = None,
        x_forwarded_proto: bool = False,
    ) -> None:
        self.app = app
        self.forwarded = ForwardedHeaders(x_real_ip, x_forwarded_for, x_forwarded_proto)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Fix the scope of ``http`` and ``websocket`` connections, then call the app."""
        if scope["type"] in ("http", "websocket"):
            info = proxy_protocol(scope)
            if info is not None:
                if info["client"] is not None:
                    scope["client"] = tuple(info["client"])
                    if info["server"] is not None:
                        scope["server"] = tuple(info["server"])
                # The connection's own scheme, whatever X-Forwarded-Proto said.
                secure = "wss" if scope["type"] == "websocket" else "https"
                plain = "ws" if scope["type"] == "websocket" else "http"
                scope["scheme"] = secure if info["tls"] else plain
            if self.forwarded.enabled:
                scope["headers"] = self._rewritten(scope)
        await self.app(scope, receive, send)

    def _rewritten(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        client = scope.get("client")
        host = client[0] if client else None
        forwarded_for = [
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name.lower() == X_FORWARDED_FOR.encode()
        ]
        changes = self.forwarded.rewrite(host, scope.get("scheme", "http"), forwarded_for)
        replaced = {name.encode("latin-1") for name in changes}
        headers = [
            (name, value) for name, value in scope["headers"] if name.lower() not in replaced
        ]
        headers.extend(
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in changes.items()
            if value is not None
        )
        return headers
