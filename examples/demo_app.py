"""The demo: a page whose WebSocket shows each visitor the address the app sees for them.

Run behind a PROXY sender with ``bash examples/demo.sh`` (HAProxy in front, TCP mode).
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

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


def _seen(connection: Request | WebSocket) -> dict[str, object]:
    client = connection.client
    header = connection.scope.get("extensions", {}).get("proxy_protocol")
    shown = None
    if header is not None:
        shown = {key: value for key, value in header.items() if key != "tlvs"}
        shown["tlvs"] = {str(kind): value.hex() for kind, value in header["tlvs"].items()}
    return {
        "client": f"{client.host}:{client.port}" if client else None,
        "scheme": connection.url.scheme,
        "proxy_protocol": shown,
    }


async def page(request: Request) -> HTMLResponse:
    """The page, with the HTTP request's client address filled in."""
    return HTMLResponse(PAGE.format(client=_seen(request)["client"]))


async def whoami(request: Request) -> JSONResponse:
    """What the app saw of this request, as JSON (for curl)."""
    return JSONResponse(_seen(request))


async def websocket(socket: WebSocket) -> None:
    """Send the visitor what the app sees of the WebSocket connection."""
    await socket.accept()
    await socket.send_text(json.dumps(_seen(socket), default=str))
    await socket.receive_text()


app = Starlette(
    routes=[Route("/", page), Route("/whoami", whoami), WebSocketRoute("/ws", websocket)]
)
