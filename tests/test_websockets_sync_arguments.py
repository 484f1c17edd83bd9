"""The threaded ``ProxyProtocolConnection`` hands the library every argument it is built with.

It names the library's options (passing them on as ``**kwargs`` cost each connection about
5,000 instructions), so these tests hold it to the library: its defaults are the library's,
and an option it does not name (one of a later websockets, or of your own connection class)
still reaches the library's class, on a real connection through the library's own server.
"""

from __future__ import annotations

import inspect
import json
import threading
from typing import Any

import websockets.sync.server
from websockets.sync.client import connect

from proxyproto_mw import TrustPolicy, encode_v2
from proxyproto_mw.websockets.sync import ProxyProtocolConnection, connection_class
from tests.clients import CLIENT, DESTINATION, open_from


def _options(function: Any) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_the_library_options_and_defaults_are_named_as_the_library_names_them() -> None:
    library = _options(websockets.sync.server.ServerConnection.__init__)
    assert _options(ProxyProtocolConnection.__init__) == library


class RoomConnection(websockets.sync.server.ServerConnection):
    """A user's connection class with an option of its own, as a later websockets may add."""

    def __init__(self, *args: Any, room: str = "none", **kwargs: Any) -> None:
        self.room = room
        super().__init__(*args, **kwargs)


def test_an_option_it_does_not_name_reaches_the_library_class() -> None:
    """The library's ``serve`` builds each connection through ``create_connection``; one that
    adds ``room=`` reaches the user's class, and the header is read as always."""
    connection_type = connection_class(RoomConnection).with_policy(TrustPolicy("127.0.0.1"))
    built: list[ProxyProtocolConnection] = []

    def create_connection(*args: Any, **kwargs: Any) -> ProxyProtocolConnection:
        connection = connection_type(*args, room="lobby", **kwargs)
        built.append(connection)
        return connection

    def handler(connection: websockets.sync.server.ServerConnection) -> None:
        seen = [getattr(connection, "room", None), connection.remote_address]
        connection.send(json.dumps(seen))

    with websockets.sync.server.serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=create_connection,  # type: ignore[arg-type]
        compression=None,
        ping_interval=None,
        close_timeout=1.5,
    ) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            address = server.socket.getsockname()[:2]
            sock = open_from("127.0.0.1", address)
            sock.sendall(encode_v2(CLIENT, DESTINATION))
            with connect(
                f"ws://127.0.0.1:{address[1]}/", sock=sock, open_timeout=5, proxy=None
            ) as websocket:
                seen = json.loads(websocket.recv(timeout=5))
        finally:
            server.shutdown()
            thread.join(10)
    assert seen == ["lobby", list(CLIENT)]
    # The library's own options went by name, with the values serve() was given.
    assert [connection.close_timeout for connection in built] == [1.5]
    assert [connection.ping_interval for connection in built] == [None]
