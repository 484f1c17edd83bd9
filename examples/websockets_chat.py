"""A chat room on the ``websockets`` library that stamps every message with its sender's address.

Behind a TCP load balancer every connection comes from the balancer; with
``proxyproto_mw.websockets.serve`` reading the balancer's PROXY header,
``connection.remote_address`` is the address of the person typing, and that is what the
room sees next to each message. Run it behind HAProxy (or an NLB) sending the header::

    PROXYPROTO_TRUSTED=127.0.0.1 python examples/websockets_chat.py --port 8765

    # haproxy.cfg
    frontend chat
        mode tcp
        bind :8080
        default_backend chat
    backend chat
        mode tcp
        option httpchk GET /healthz
        server chat 127.0.0.1:8765 send-proxy-v2 check

``PROXYPROTO_TRUSTED`` lists the balancer's addresses: only their headers are believed.
Each client first receives ``{"you": "<its address>"}``, then every message of the room
as ``{"from": "<sender's address>", "text": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.http11 import Request, Response

from proxyproto_mw.websockets import serve

__all__ = ["chat", "health_check", "main"]

MAX_MESSAGE = 1000
"""Characters kept of each message."""

room: set[ServerConnection] = set()
"""Everyone connected to this process."""


def health_check(connection: ServerConnection, request: Request) -> Response | None:
    """Answer the balancer's ``GET /healthz``; let every other request open a WebSocket."""
    if request.path == "/healthz":
        return connection.respond(200, "ok\n")
    return None


async def chat(connection: ServerConnection) -> None:
    """Tell the newcomer its address, then relay its messages to the room, stamped with it."""
    sender = connection.remote_address[0]
    await connection.send(json.dumps({"you": sender}))
    room.add(connection)
    try:
        async for message in connection:
            text = message if isinstance(message, str) else message.decode(errors="replace")
            broadcast(room, json.dumps({"from": sender, "text": text[:MAX_MESSAGE]}))
    finally:
        room.discard(connection)


async def main(host: str, port: int) -> None:
    """Serve the room until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with serve(chat, host, port, process_request=health_check):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A chat room behind a PROXY header.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main(arguments.host, arguments.port))
