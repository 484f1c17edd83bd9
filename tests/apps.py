"""ASGI apps that show what a server told them, for end-to-end tests of the adapters.

``app`` answers every HTTP request with JSON describing its scope (client, server,
scheme, path, the ``proxy_protocol`` extension) and the request body's length and
SHA-256; on a WebSocket it accepts, sends the same JSON, then echoes every message.
It supports the lifespan protocol, so servers run it with ``--lifespan on`` as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["app", "describe", "jsonable"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def jsonable(value: object) -> object:
    """``value`` with tuples as lists, bytes as hex and every key as text, for ``json.dumps``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def describe(scope: Scope, body: bytes = b"") -> dict[str, object]:
    """What the server put in ``scope``, as plain JSON values."""
    extensions = scope.get("extensions") or {}
    return {
        "type": scope["type"],
        "client": jsonable(scope.get("client")),
        "server": jsonable(scope.get("server")),
        "scheme": scope.get("scheme"),
        "path": scope.get("path"),
        "method": scope.get("method"),
        "http_version": scope.get("http_version"),
        "proxy_protocol": jsonable(extensions.get("proxy_protocol")),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    payload = json.dumps(describe(scope, b"".join(chunks))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(describe(scope))})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The test app: HTTP and WebSocket scopes described as JSON, lifespan acknowledged."""
    if scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
