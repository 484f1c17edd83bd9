"""Once the header is in, uvicorn's own protocol serves the connection, unchanged.

:mod:`proxyproto_mw.uvicorn` builds uvicorn's HTTP protocol after the header and connects
it through a :class:`~proxyproto_mw.uvicorn.ProxiedTransport`. These tests serve one
keep-alive request on a real loopback socket with uvicorn's protocol and with ours, in
process, and compare what serves the connection: the same class (not a subclass or a
copy), the same per-connection state, the header's addresses where uvicorn would have
asked the socket, and no state of ours left on uvicorn's objects.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol as PlainH11
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as PlainHttpTools
from uvicorn.server import ServerState

from proxyproto_mw import TrustPolicy, encode_v1
from proxyproto_mw.uvicorn import H11Protocol, HttpToolsProtocol, ProxiedTransport
from tests.clients import CLIENT, DESTINATION, request
from tests.servers import uvicorn_in_process

pytestmark = pytest.mark.timeout(30)


async def _serve_one(
    protocol_class: type, first_bytes: bytes
) -> tuple[Any, dict[str, Any], dict[str, Any], ServerState]:
    """Serve one keep-alive request on loopback: the protocol that serves the connection
    then (uvicorn counts it among its connections), its attributes, the scope the app
    described, and the server state."""
    async with uvicorn_in_process(protocol_class) as (port, state):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(first_bytes)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
            assert length is not None, head
            body = await asyncio.wait_for(reader.readexactly(int(length[1])), 10)
            (serving,) = state.connections
            return serving, dict(vars(serving)), json.loads(body), state
        finally:
            writer.close()


@pytest.mark.parametrize(
    "plain, ours", [(PlainHttpTools, HttpToolsProtocol), (PlainH11, H11Protocol)]
)
def test_uvicorns_own_protocol_serves_with_the_header_addresses(plain: type, ours: Any) -> None:
    proxied = ours.with_policy(TrustPolicy(trusted="127.0.0.1"))
    _, uvicorn_state, _, _ = asyncio.run(_serve_one(plain, request()))
    serving, state, scope, server_state = asyncio.run(
        _serve_one(proxied, encode_v1(CLIENT, DESTINATION) + request())
    )
    assert type(serving) is plain  # uvicorn's class itself
    assert set(state) == set(uvicorn_state)  # nothing of ours on it
    assert set(vars(server_state)) == set(vars(ServerState()))
    for name in ("flow", "scheme", "connections", "parser", "conn"):
        if name in uvicorn_state:
            assert type(state[name]) is type(uvicorn_state[name]), name
    assert isinstance(state["transport"], ProxiedTransport)
    assert state["transport"].header.source == CLIENT
    assert state["client"] == CLIENT
    assert state["server"] == DESTINATION
    assert state["scheme"] == uvicorn_state["scheme"] == "http"
    assert scope["client"] == list(CLIENT)
    assert scope["server"] == list(DESTINATION)
    assert scope["proxy_protocol"]["version"] == 1


@pytest.mark.parametrize("ours", [HttpToolsProtocol, H11Protocol])
def test_connection_without_header_gets_the_real_transport(ours: Any) -> None:
    """An untrusted peer's connection is uvicorn's, with uvicorn's own transport."""
    proxied = ours.with_policy(TrustPolicy(trusted="192.0.2.1"))
    serving, state, scope, _ = asyncio.run(_serve_one(proxied, request()))
    assert type(serving) is ours.http_protocol
    assert not isinstance(state["transport"], ProxiedTransport)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["proxy_protocol"] is None
