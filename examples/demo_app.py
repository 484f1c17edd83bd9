"""The demo: a page whose WebSocket shows each visitor the address the app sees for them.

Run behind a PROXY sender with ``bash examples/demo.sh`` (HAProxy in front, TCP mode).
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>proxyproto-mw demo</title>
<h1>proxyproto-mw demo</h1>
<p>Over HTTP the app saw you as <b id="http">{client}</b>.</p>
<p>Over the WebSocket it sees you as <b id="ws">connecting...</b></p>
<pre id="header"></pre>
<script>
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws");
ws.onmessage = (event) => {{
  const seen = JSON.parse(event.data);
  document.getElementById("ws").textContent = seen.client;
  document.getElementById("header").textContent = JSON.stringify(seen.proxy_protocol, null, 2);
}};
</script>
"""


def _shown(value: object) -> object:
    """``value`` as JSON shows it: bytes (TLV values, ALPN, unique ID) as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(key): _shown(item) for key, item in value.items()}
    return value


def _seen(connection: Request | WebSocket) -> dict[str, object]:
    client = connection.client
    header = connection.scope.get("extensions", {}).get("proxy_protocol")
    return {
        "client": f"{client.host}:{client.port}" if client else None,
        "scheme": connection.url.scheme,
        "proxy_protocol": _shown(header),
    }


async def page(request: Request) -> HTMLResponse:
    """The page, with the HTTP request's client address filled in."""
    return HTMLResponse(PAGE.format(client=_seen(request)["client"]))


async def whoami(request: Request) -> JSONResponse:
    """What the app saw of this request, as JSON (for curl)."""
    return JSONResponse(_seen(request))


async def websocket(socket: WebSocket) -> None:
    """Send the visitor what the app sees of the WebSocket connection, then wait until the
    visitor leaves (closing the page is the normal end, not an error)."""
    await socket.accept()
    await socket.send_text(json.dumps(_seen(socket)))
    try:
        while True:
            await socket.receive_text()
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[Route("/", page), Route("/whoami", whoami), WebSocketRoute("/ws", websocket)]
)
