"""What one new connection costs the server, in process: plain uvicorn against ours.

``python bench/connection_cost.py [--connections N]`` drives uvicorn's httptools protocol
and this project's (PROXY v1 and v2) over an in-memory transport, one request per
connection, and prints the CPU time per connection (best of 5 runs). No sockets, HAProxy or
wrk: what remains is the Python work per connection, which is what the PROXY support adds.

For figures that repeat exactly, count instructions instead of seconds; the difference
between two connection counts removes start-up:

    valgrind --tool=callgrind python bench/connection_cost.py --only v1 --connections 1000
    valgrind --tool=callgrind python bench/connection_cost.py --only v1 --connections 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as PlainProtocol
from uvicorn.server import ServerState

from bench.app import app
from proxyproto_mw import encode_v1, encode_v2
from proxyproto_mw.uvicorn import HttpToolsProtocol

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\n\r\n"
HEADERS = {
    "plain": b"",
    "v1": encode_v1(("198.51.100.22", 54321), ("203.0.113.7", 80)),
    "v2": encode_v2(("198.51.100.22", 54321), ("203.0.113.7", 80)),
}


class MemoryTransport(asyncio.Transport):
    """A transport that keeps nothing: it counts what is written and closes when asked."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._info = {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}
        self.protocol: Any = None
        self.closed = False
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._info.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]


async def serve(protocol_class: type, header: bytes, connections: int) -> None:
    """``connections`` connections of one request each, one after the other."""
    loop = asyncio.get_running_loop()
    config = Config(app=app, http=protocol_class, loop="none", lifespan="off", access_log=False)
    config.load()
    state = ServerState()
    for _ in range(connections):
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state={}, _loop=loop
        )
        transport = MemoryTransport(loop)
        transport.protocol = protocol
        protocol.connection_made(transport)
        protocol.data_received(header + REQUEST)
        while not transport.closed:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert transport.written, "no response was written"


def main() -> None:
    """Print the CPU time per connection of each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--only", choices=sorted(HEADERS), help="run one kind once (callgrind)")
    options = parser.parse_args()
    os.environ.setdefault("PROXYPROTO_TRUSTED", "127.0.0.1")  # the environment's policy
    kinds = [options.only] if options.only else ["plain", "v1", "v2"]
    plain_cost = None
    for kind in kinds:
        protocol_class = PlainProtocol if kind == "plain" else HttpToolsProtocol
        best = float("inf")
        for _ in range(1 if options.only else 5):
            started = time.process_time()
            asyncio.run(serve(protocol_class, HEADERS[kind], options.connections))
            best = min(best, time.process_time() - started)
        cost = 1e6 * best / options.connections
        plain_cost = cost if kind == "plain" else plain_cost
        extra = "" if plain_cost is None or kind == "plain" else f"  (+{cost - plain_cost:.1f})"
        print(f"{kind:6} {cost:7.1f} us per connection{extra}")


if __name__ == "__main__":
    main()
