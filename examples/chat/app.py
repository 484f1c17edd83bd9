"""A WebSocket chat that stamps every message with its sender's real address.

Behind a TCP load balancer every connection comes from the balancer; with
``proxyproto_mw.gunicorn.UvicornWorker`` reading the balancer's PROXY header,
``websocket.client.host`` is the address of the person typing, and that is what the room
sees next to each message. Run it with ``bash examples/chat/run.sh`` (gunicorn behind
HAProxy, ``send-proxy-v2``).

The room lives in the worker's memory: a message reaches the clients connected to the same
worker process only. The example therefore runs one worker (see ``gunicorn.conf.py``); with
several, the workers would need a shared broker (Redis pub/sub, for example).
"""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, PlainTextResponse

__all__ = ["app"]

MAX_MESSAGE = 1000
"""Characters kept of each message."""

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>proxyproto-mw chat</title>
<h1>proxyproto-mw chat</h1>
<p>You are <b id="you">connecting...</b>. Open this page in a second tab, or from another
address, and write something: every message shows the address it came from.</p>
<ul id="messages"></ul>
<form id="form"><input id="text" autocomplete="off" size="60" autofocus>
<button>Send</button></form>
<script>
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws");
ws.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message.you !== undefined) {
    document.getElementById("you").textContent = message.you;
    return;
  }
  const item = document.createElement("li");
  item.textContent = message.from + ": " + message.text;
  document.getElementById("messages").append(item);
};
ws.onclose = () => { document.getElementById("you").textContent = "disconnected"; };
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (input.value) { ws.send(input.value); input.value = ""; }
};
</script>
"""


class Room:
    """The WebSockets connected to this worker, and how to send to all of them."""

    def __init__(self) -> None:
        self.members: set[WebSocket] = set()

    async def broadcast(self, message: dict[str, str]) -> None:
        """Send ``message`` to every member; forget the ones that are gone."""
        for member in list(self.members):
            try:
                await member.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.members.discard(member)


app = FastAPI(title="proxyproto-mw chat")
room = Room()


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    """The chat page."""
    return PAGE


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    """For the load balancer's health checks."""
    return "ok"


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    """Tell the client its address, then broadcast each of its messages, stamped with it."""
    await websocket.accept()
    sender = websocket.client.host if websocket.client else "unknown"
    await websocket.send_json({"you": sender})
    room.members.add(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            await room.broadcast({"from": sender, "text": text[:MAX_MESSAGE]})
    except WebSocketDisconnect:
        pass
    finally:
        room.members.discard(websocket)
