"""What the asyncio adapters (uvicorn, websockets) share around reading the header.

:data:`by_loop` holds, per event loop, the connections still waiting for their PROXY
header under one timer (:class:`HeaderDeadlines`): watching a connection costs a dict
insertion, no timer and no clock reading of its own. :func:`feed` gives a transport's new
protocol the bytes read before ``loop.start_tls`` replaced the old one.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Protocol

from .policy import TrustPolicy

__all__ = ["HeaderDeadlines", "Waiting", "by_loop", "feed"]


class Waiting(Protocol):
    """A connection waiting for its header: its policy gives the timeout."""

    @property
    def policy(self) -> TrustPolicy | None:
        """The policy whose ``timeout`` bounds the header (set before it is watched)."""

    def header_timed_out(self) -> None:
        """Close the connection: its header did not come in time."""


class HeaderDeadlines:
    """The connections of one event loop still waiting for their header, under one timer.

    A connection is watched by ``waiting[connection] = tick`` (the sweep count it arrived
    at) and leaves by ``waiting.pop(connection, None)``. Every ``INTERVAL`` seconds a sweep
    advances ``tick`` and times out the connections whose deadline has passed: at least
    their timeout after they arrived (a late sweep only makes it later), and less than two
    ``INTERVAL``s more on an idle loop. The loop's entry in :data:`by_loop` is dropped when
    no connection waits.
    """

    INTERVAL = 0.25

    __slots__ = ("_loop", "tick", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.tick = 0
        self.waiting: dict[Waiting, int] = {}
        """Each connection waiting for its header, with the ``tick`` it arrived at."""
        loop.call_later(self.INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self.tick += 1
        tick = self.tick
        spans: dict[float, int] = {}
        expired = []
        for connection, arrived in self.waiting.items():
            timeout = connection.policy.timeout  # type: ignore[union-attr]
            span = spans.get(timeout)
            if span is None:
                # One sweep more than the timeout spans: part of the first interval had passed.
                span = spans[timeout] = math.ceil(timeout / self.INTERVAL) + 1
            if tick - arrived >= span:
                expired.append(connection)
        for connection in expired:
            connection.header_timed_out()
        if self.waiting:
            self._loop.call_later(self.INTERVAL, self._sweep)
        else:
            by_loop.pop(self._loop, None)


by_loop: dict[asyncio.AbstractEventLoop, HeaderDeadlines] = {}
"""Per event loop: this package's own state, not an attribute on a server's objects."""


def feed(transport: asyncio.BaseTransport, data: bytes) -> None:
    """Deliver bytes already read from the socket to the transport's current protocol
    (after ``loop.start_tls``: its TLS protocol, buffered or not)."""
    protocol: Any = transport.get_protocol()
    if hasattr(protocol, "buffer_updated"):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    else:
        protocol.data_received(data)
