"""The minimal ASGI app every server in ``bench/uvicorn_wrk.py`` serves.

``GET`` anything: 200 ``ok``. ``GET /client``: 200 with ``scope["client"]`` as ``host:port``,
which the benchmark reads once per server to check that the PROXY header was understood
(the address must be the benchmark's own socket, not HAProxy's). A WebSocket is accepted
and held open until the client leaves (``bench/memory.py``). Lifespan is supported.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """200 ``ok`` for HTTP; WebSockets accepted and held; start-up and shut-down for lifespan."""
    kind = scope["type"]
    if kind == "http":
        if scope["path"] == "/client":
            client = scope.get("client")
            body = f"{client[0]}:{client[1]}" if client else "none"
            data = body.encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(data)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": b"ok"})
    elif kind == "websocket":
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
