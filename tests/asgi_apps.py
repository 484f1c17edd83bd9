"""FastAPI and Starlette apps using :class:`~proxyproto_mw.asgi.ProxyProtocolMiddleware`.

Each app answers ``GET /seen`` with JSON of what the app sees through the framework:
``request.client``, ``request.url.scheme``, the forwarding headers (every value, in
order) and ``proxy_protocol(request)``. On the WebSocket ``/ws`` it sends the same JSON,
then closes. The apps differ in how the middleware is added and what runs outside it:

- :data:`fastapi_app`: ``app.add_middleware(ProxyProtocolMiddleware, x_real_ip=True,
  x_forwarded_for="append", x_forwarded_proto=True)``;
- :data:`fastapi_replace_app`: the same with ``x_forwarded_for="replace"``;
- :data:`starlette_app`: Starlette, the middleware in ``middleware=[Middleware(...)]``;
- :data:`proxy_headers_app`: FastAPI with uvicorn's ``ProxyHeadersMiddleware``
  (trusting every peer) added after, so outside, the PROXY middleware.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request, WebSocket
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from proxyproto_mw.asgi import ProxyProtocolMiddleware, proxy_protocol
from tests.apps import jsonable

__all__ = ["fastapi_app", "fastapi_replace_app", "proxy_headers_app", "seen", "starlette_app"]

FORWARDING_HEADERS = ("x-real-ip", "x-forwarded-for", "x-forwarded-proto")


def seen(connection: Request | WebSocket) -> dict[str, object]:
    """What the app sees of a request or WebSocket, as plain JSON values."""
    client = connection.client
    return {
        "type": connection.scope["type"],
        "client": None if client is None else [client.host, client.port],
        "server": jsonable(connection.scope.get("server")),
        "scheme": connection.url.scheme,
        "headers": {name: connection.headers.getlist(name) for name in FORWARDING_HEADERS},
        "proxy_protocol": jsonable(proxy_protocol(connection)),
    }


def _fastapi(x_forwarded_for: Literal["append", "replace"]) -> FastAPI:
    app = FastAPI()

    @app.get("/seen")
    async def http_seen(request: Request) -> dict[str, object]:
        return seen(request)

    @app.websocket("/ws")
    async def websocket_seen(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(seen(websocket))
        await websocket.close()

    app.add_middleware(
        ProxyProtocolMiddleware,
        x_real_ip=True,
        x_forwarded_for=x_forwarded_for,
        x_forwarded_proto=True,
    )
    return app


fastapi_app = _fastapi("append")
fastapi_replace_app = _fastapi("replace")

proxy_headers_app = _fastapi("append")
# add_middleware puts each new middleware outside the ones before it.
proxy_headers_app.add_middleware(ProxyHeadersMiddleware, trusted_hosts="*")


async def _starlette_http(request: Request) -> JSONResponse:
    return JSONResponse(seen(request))


async def _starlette_websocket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(seen(websocket))
    await websocket.close()


starlette_app = Starlette(
    routes=[Route("/seen", _starlette_http), WebSocketRoute("/ws", _starlette_websocket)],
    middleware=[
        Middleware(
            ProxyProtocolMiddleware,
            x_real_ip=True,
            x_forwarded_for="append",
            x_forwarded_proto=True,
        )
    ],
)
