"""The conversation both chat examples' tests hold: two clients, each message stamped with
its sender's address (``examples/chat`` under gunicorn, ``examples/websockets_chat.py``)."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect

from tests.clients import open_from


async def join(url: str, front_port: int, source: str) -> tuple[ClientConnection, str]:
    """Connect from ``source`` through the balancer; the address the chat says we have."""
    sock = open_from(source, ("127.0.0.1", front_port))
    websocket = await websocket_connect(
        url, sock=sock, proxy=None, open_timeout=5, close_timeout=2, ping_interval=None
    )
    welcome = json.loads(await websocket.recv())
    return websocket, welcome["you"]


async def next_message(websocket: ClientConnection) -> dict[str, str]:
    """The next chat message the client receives."""
    message = json.loads(await websocket.recv())
    assert isinstance(message, dict)
    return message


def assert_each_hears_the_other_stamped(
    url: str, front_port: int, sources: tuple[str, str]
) -> None:
    """Clients from the two ``sources`` join at ``url``; each message reaches both, the
    sender too, with the sender's own address."""

    async def conversation() -> None:
        alice, alice_address = await join(url, front_port, sources[0])
        bob, bob_address = await join(url, front_port, sources[1])
        try:
            assert (alice_address, bob_address) == sources
            await alice.send("hello from alice")
            alice_hears = {"from": sources[0], "text": "hello from alice"}
            assert await next_message(bob) == alice_hears
            assert await next_message(alice) == alice_hears  # everyone, the sender too
            await bob.send("hello from bob")
            bob_hears = {"from": sources[1], "text": "hello from bob"}
            assert await next_message(alice) == bob_hears
            assert await next_message(bob) == bob_hears
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(asyncio.wait_for(conversation(), 20))
