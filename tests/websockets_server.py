"""A WebSocket server on the ``websockets`` library, started the way its users start one.

``python -m tests.websockets_server asyncio|sync --port N [--certfile C --keyfile K]``
runs ``proxyproto_mw.websockets.serve`` (or ``proxyproto_mw.websockets.sync.serve``)
with the policy from the ``PROXYPROTO_*`` environment. ``--library-serve`` runs the library's
own ``serve`` instead, with ``create_connection=ProxyProtocolConnection``, as a user
who keeps the library's call does.

Each WebSocket receives one JSON greeting: the ``remote_address`` and ``local_address``
seen by ``process_request``, ``process_response`` and the handler, the request path, and
the :func:`proxy_protocol` dict; then every message is echoed. ``GET /check-*`` (HAProxy's
health checks) is answered 200 by ``process_request``. websockets' own INFO lines go to
stderr with the connection's ``remote_address`` appended, as the library's logging guide
suggests, next to the ``proxyproto_mw`` warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import threading
from typing import Any

import websockets.asyncio.server
import websockets.sync.server
from websockets.http11 import Request, Response

import proxyproto_mw.websockets
import proxyproto_mw.websockets.sync
from tests.apps import jsonable

Connection = Any
"""An asyncio or a sync ServerConnection: this module serves both the same way."""


class RemoteAddressFilter(logging.Filter):
    """Appends the connection's ``remote_address`` to websockets' own log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        websocket = getattr(record, "websocket", None)
        record.remote = "" if websocket is None else f" [remote {websocket.remote_address}]"
        return True


def configure_logging() -> None:
    """INFO lines of websockets and WARNING lines of proxyproto_mw on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(RemoteAddressFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s%(remote)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def process_request(connection: Connection, request: Request) -> Response | None:
    """Answer health checks; note the address the handshake sees."""
    connection.seen_by_process_request = connection.remote_address
    if request.path.startswith("/check"):
        response: Response = connection.respond(200, "ok\n")
        return response
    return None


def process_response(connection: Connection, request: Request, response: Response) -> None:
    """Note the address the response sees, and tell the client in a header."""
    connection.seen_by_process_response = connection.remote_address
    response.headers["X-Remote-Address"] = json.dumps(jsonable(connection.remote_address))


def greeting(connection: Connection, info: object) -> str:
    """What the handler tells each client about its connection."""
    request = connection.request
    return json.dumps(
        {
            "remote": jsonable(connection.remote_address),
            "local": jsonable(connection.local_address),
            "process_request": jsonable(connection.seen_by_process_request),
            "process_response": jsonable(connection.seen_by_process_response),
            "path": request.path if request is not None else None,
            "proxy_protocol": jsonable(info),
        }
    )


async def asyncio_handler(connection: websockets.asyncio.server.ServerConnection) -> None:
    """Greet, then echo."""
    await connection.send(greeting(connection, proxyproto_mw.websockets.proxy_protocol(connection)))
    async for message in connection:
        await connection.send(message)


def sync_handler(connection: websockets.sync.server.ServerConnection) -> None:
    """Greet, then echo."""
    info = proxyproto_mw.websockets.sync.proxy_protocol(connection)
    connection.send(greeting(connection, info))
    for message in connection:
        connection.send(message)


OPTIONS: dict[str, Any] = {
    "process_request": process_request,
    "process_response": process_response,
    "ping_interval": None,
    "close_timeout": 2,
}


async def run_asyncio(port: int, tls: ssl.SSLContext | None, plain: bool) -> None:
    """Serve until SIGTERM with the asyncio server."""
    if plain:
        server = websockets.asyncio.server.serve(
            asyncio_handler,
            "127.0.0.1",
            port,
            create_connection=proxyproto_mw.websockets.ProxyProtocolConnection,
            **OPTIONS,
        )
    else:
        server = proxyproto_mw.websockets.serve(
            asyncio_handler, "127.0.0.1", port, ssl=tls, **OPTIONS
        )
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


def run_sync(port: int, tls: ssl.SSLContext | None, plain: bool) -> None:
    """Serve until SIGTERM with the threaded server."""
    if plain:
        server = websockets.sync.server.serve(
            sync_handler,
            "127.0.0.1",
            port,
            create_connection=proxyproto_mw.websockets.sync.ProxyProtocolConnection,
            **OPTIONS,
        )
    else:
        server = proxyproto_mw.websockets.sync.serve(
            sync_handler, "127.0.0.1", port, ssl=tls, **OPTIONS
        )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    with server:
        server.serve_forever()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["asyncio", "sync"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--library-serve", action="store_true", help="the library's own serve()")
    arguments = parser.parse_args()
    configure_logging()
    tls = None
    if arguments.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(arguments.certfile, arguments.keyfile)
    if arguments.server == "asyncio":
        asyncio.run(run_asyncio(arguments.port, tls, arguments.library_serve))
    else:
        run_sync(arguments.port, tls, arguments.library_serve)


if __name__ == "__main__":
    main()
