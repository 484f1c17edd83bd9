"""The connected protocol holds exactly the state uvicorn's own ``connection_made`` gives it.

Once the header is in, :mod:`proxyproto_mw.uvicorn` sets uvicorn's per-connection state
itself, from the header, instead of letting uvicorn ask the socket for addresses it would
then overwrite. These tests catch a uvicorn release that adds state to its
``connection_made``: they serve one keep-alive request on a real loopback socket with
uvicorn's protocol and with ours, in process, and compare what each instance holds.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol as PlainH11
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as PlainHttpTools
from uvicorn.server import ServerState

from proxyproto_mw import TrustPolicy, encode_v1
from proxyproto_mw.uvicorn import H11Protocol, HttpToolsProtocol
from tests.apps import app
from tests.clients import CLIENT, DESTINATION, request

pytestmark = pytest.mark.timeout(30)

OURS_ONLY = {
    "_raw_transport",
    "_admission",
    "_pending_tls_data",
    "_deadline_tick",
    "_deadlines",
    "_proxy_info",
    "_proxy_header",
}
"""The attributes our protocol adds to uvicorn's."""


async def _serve_one(
    protocol_class: type, first_bytes: bytes
) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """Serve one keep-alive request on loopback: the protocol's attributes after it, whether
    the server counts the connection as open, and the scope the app described."""
    config = Config(app=app, http=protocol_class, lifespan="off", access_log=False)
    config.load()
    state = ServerState()
    protocols: list[Any] = []

    def factory() -> Any:
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state={}
        )
        protocols.append(protocol)
        return protocol

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first_bytes)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert length is not None, head
        body = await asyncio.wait_for(reader.readexactly(int(length[1])), 10)
        (protocol,) = protocols
        return dict(vars(protocol)), protocol in state.connections, json.loads(body)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "plain, ours", [(PlainHttpTools, HttpToolsProtocol), (PlainH11, H11Protocol)]
)
def test_connected_state_matches_uvicorns(plain: type, ours: Any) -> None:
    proxied = ours.with_policy(TrustPolicy(trusted="127.0.0.1"))
    uvicorns, uvicorn_counts_it, _ = asyncio.run(_serve_one(plain, request()))
    theirs, counted, scope = asyncio.run(
        _serve_one(proxied, encode_v1(CLIENT, DESTINATION) + request())
    )
    assert counted and uvicorn_counts_it
    assert set(theirs) - OURS_ONLY == set(uvicorns)
    for name in ("transport", "flow", "scheme", "connections", "parser", "conn"):
        if name in uvicorns:
            assert type(theirs[name]) is type(uvicorns[name]), name
    assert uvicorns["transport"] is not None
    assert theirs["client"] == CLIENT
    assert theirs["server"] == DESTINATION
    assert theirs["scheme"] == uvicorns["scheme"] == "http"
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["proxy_protocol"]["version"] == 1
