"""The uvicorn adapter's header phase in C serves every connection as the Python reference.

With the C accelerator, ``_speedups.HeaderPhase`` (``ProxyProtocol``'s base) serves the
common connection itself: a trusted peer whose first read holds a whole header, handed to
uvicorn's protocol. Everything else goes to ``ProxyProtocol._connection_made_python`` and
``_data_received_python``, and its ``_hand_over`` does what ``_hand_over_python`` does.
These tests serve each kind of first bytes on a real loopback socket, in process, with the
accelerated class and with a twin whose three methods are the Python reference, and
compare what the client got back, what the app saw and what was logged; and they check
that the common connection really takes the C path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from bench.connection_cost import MemoryTransport
from proxyproto_mw import TrustPolicy, encode_v1, encode_v2
from proxyproto_mw.decoder import ACCELERATED
from proxyproto_mw.encoder import ssl_tlv
from proxyproto_mw.header import Command, TLVType
from proxyproto_mw.policy import rejection_log
from proxyproto_mw.uvicorn import H11Protocol, HttpToolsProtocol, ProxyProtocol
from tests.apps import app
from tests.clients import CLIENT, CLIENT6, DESTINATION, DESTINATION6, request
from tests.leaks import growth
from tests.servers import uvicorn_in_process

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not ACCELERATED, reason="the C accelerator is not built"),
]

V1 = encode_v1(CLIENT, DESTINATION)
V2 = encode_v2(CLIENT, DESTINATION)
CLOSE = request(headers="Connection: close\r\n")
CASES: dict[str, list[bytes]] = {
    "v1 whole": [V1 + CLOSE],
    "v2 whole": [V2 + CLOSE],
    "v1 tcp6": [encode_v1(CLIENT6, DESTINATION6) + CLOSE],
    "v2 tcp6": [encode_v2(CLIENT6, DESTINATION6) + CLOSE],
    "v2 tlvs": [
        encode_v2(
            CLIENT,
            DESTINATION,
            tlvs=[
                (TLVType.ALPN, b"h2"),
                ssl_tlv(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256"),
            ],
        )
        + CLOSE
    ],
    "v1 unknown": [encode_v1() + CLOSE],
    "v2 local": [encode_v2(command=Command.LOCAL) + CLOSE],
    "header alone, then the request": [V1, CLOSE],
    "header split": [V2[:7], V2[7:20], V2[20:] + CLOSE],
    "keep-alive, two requests": [V1 + request(), CLOSE],
    "no header": [CLOSE],
    "bad v1 address": [b"PROXY TCP4 198.51.100.999 203.0.113.7 35646 443\r\n" + CLOSE],
    "v2 with a bad checksum": [
        encode_v2(CLIENT, DESTINATION, tlvs=[(TLVType.CRC32C, b"\x00\x00\x00\x01")]) + CLOSE
    ],
    "header only, then the peer closes": [V1],
}
POLICIES = {
    "trusted": TrustPolicy(trusted="127.0.0.1", timeout=20),
    "optional": TrustPolicy(trusted="127.0.0.1", mode="optional", timeout=20),
    "untrusted peer": TrustPolicy(trusted="10.0.0.0/8", timeout=20),
    "untrusted, optional": TrustPolicy(trusted="10.0.0.0/8", mode="optional", timeout=20),
    "v1 only": TrustPolicy(trusted="127.0.0.1", versions=[1], timeout=20),
}


def _python_twin(cls: type[ProxyProtocol]) -> type[ProxyProtocol]:
    """``cls`` with the header phase of the Python reference."""
    return type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "connection_made": ProxyProtocol._connection_made_python,
            "data_received": ProxyProtocol._data_received_python,
            "_hand_over": ProxyProtocol._hand_over_python,
        },
    )


class _Spy(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _serve(protocol_class: type[ProxyProtocol], chunks: list[bytes]) -> Any:
    """Serve one connection that sends ``chunks`` (each its own read): what came back,
    what the app saw per request, and what the server counts afterwards. Another
    connection, which sends nothing, is open throughout: the loop's header deadlines stay,
    as on a busy server, so that the fast path can serve."""
    async with uvicorn_in_process(protocol_class) as (port, state):
        _, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.02)
            if chunks == CASES["header only, then the peer closes"]:
                writer.write_eof()
            received = await asyncio.wait_for(reader.read(), 10)
            await asyncio.sleep(0.02)
            counted = len(state.connections)  # the idle connection, and any left behind
        finally:
            writer.close()
            idle_writer.close()
    scopes = []
    for part in received.split(b"HTTP/1.1 ")[1:]:
        status, _, rest = part.partition(b"\r\n")
        body = rest.partition(b"\r\n\r\n")[2]
        scopes.append((status.decode(), _portless(json.loads(body)) if body[:1] == b"{" else body))
    return scopes, counted


def _portless(value: Any) -> Any:
    """``value`` with each loopback address's port (a new one per run) left out."""
    if isinstance(value, dict):
        return {key: _portless(item) for key, item in value.items()}
    if isinstance(value, list):
        return ["127.0.0.1"] if value[:1] == ["127.0.0.1"] else [_portless(x) for x in value]
    return value


@contextlib.contextmanager
def _every_rejection_logged(handler: logging.Handler | None) -> Iterator[None]:
    """Each rejection as a line of its own (no flood limit), to ``handler`` only."""
    logger = logging.getLogger("proxyproto_mw")
    saved = rejection_log.burst, rejection_log.budget, logger.handlers, logger.propagate
    rejection_log.flush()
    rejection_log.burst = rejection_log.budget = 10**9
    logger.handlers = [handler] if handler else []
    logger.propagate = False
    try:
        yield
    finally:
        rejection_log.burst, rejection_log.budget, logger.handlers, logger.propagate = saved


def _outcome(protocol_class: type[ProxyProtocol], chunks: list[bytes]) -> Any:
    spy = _Spy()
    with _every_rejection_logged(spy):
        served = asyncio.run(_serve(protocol_class, chunks))
    # Each connection has its own port: the lines are compared without it.
    lines = [re.sub(r"127\.0\.0\.1:\d+", "PEER", line) for line in spy.lines]
    return served, [line for line in lines if "PROXY protocol on" not in line]


@pytest.mark.parametrize("base", [HttpToolsProtocol, H11Protocol], ids=["httptools", "h11"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_c_header_phase_serves_as_the_python_reference(
    case: str, policy: str, base: type[ProxyProtocol]
) -> None:
    accelerated = base.with_policy(POLICIES[policy])
    reference = _python_twin(accelerated)
    c_outcome = _outcome(accelerated, CASES[case])
    python_outcome = _outcome(reference, CASES[case])
    assert c_outcome == python_outcome
    (scopes, counted), _ = c_outcome
    assert counted == 1  # the idle connection only: nothing of this one left behind
    if policy in ("trusted", "optional") and case in ("v1 whole", "v2 whole"):
        ((status, scope),) = scopes
        assert status.startswith("200")
        assert scope["client"] == list(CLIENT)
        assert scope["server"] == list(DESTINATION)
        assert scope["proxy_protocol"]["client"] == list(CLIENT)


def test_the_common_connection_takes_the_c_path() -> None:
    """A trusted peer's whole header, with the loop's deadlines in place, never reaches the
    Python methods (the idle connection, first on its loop, does)."""
    calls: list[str] = []

    class Counted(HttpToolsProtocol.with_policy(POLICIES["trusted"])):  # type: ignore[misc]
        __slots__ = ()

        def _connection_made_python(self, transport: Any) -> None:
            calls.append("connection_made")
            super()._connection_made_python(transport)

        def _data_received_python(self, data: bytes) -> None:
            calls.append("data_received")
            super()._data_received_python(data)

    (scopes, _), lines = _outcome(Counted, [V1 + CLOSE])
    assert [status[:3] for status, _ in scopes] == ["200"]
    assert calls == ["connection_made"]  # the idle one; then the idle one's close
    assert lines == []
    calls.clear()
    _outcome(Counted, CASES["header split"])
    assert "data_received" in calls  # an incomplete header is Python's


def test_the_c_header_phase_leaks_nothing() -> None:
    """Thousands of connections through the C path (and some through Python's) leave no
    object, reference or memory behind."""
    protocol_class = HttpToolsProtocol.with_policy(POLICIES["trusted"])
    config = Config(app=app, http=protocol_class, lifespan="off", access_log=False)
    config.load()
    state = ServerState()
    app_state: dict[str, Any] = {}
    first_bytes = [V1 + CLOSE, V2 + CLOSE, encode_v1() + CLOSE, b"PROXY TCP4 1.2.3.999\r\n"]

    async def serve(connections: int) -> int:
        loop = asyncio.get_running_loop()
        idle = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=state, app_state=app_state, _loop=loop
        )
        idle_transport = MemoryTransport(loop)
        idle_transport.protocol = idle
        idle.connection_made(idle_transport)  # keeps the loop's header deadlines
        served = 0
        for number in range(connections):
            protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=app_state, _loop=loop
            )
            transport = MemoryTransport(loop)
            transport.protocol = protocol
            protocol.connection_made(transport)
            protocol.data_received(first_bytes[number % len(first_bytes)])
            while not transport.closed:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            served += transport.written > 0
        idle_transport.close()
        await asyncio.sleep(0)
        return served

    watched = [config, state, app_state, protocol_class, protocol_class.policy]
    with _every_rejection_logged(None):  # the bad headers' lines go nowhere
        asyncio.run(serve(200))  # warm up caches and free lists
        left = growth(lambda: asyncio.run(serve(4000)), watched)
    assert left.result == 3000  # the bad header is closed without a byte
    assert left.references == [0] * len(watched)
    assert left.objects < 200
    assert left.traced_bytes < 256 * 1024  # a connection leaked each time would be megabytes
    assert state.connections == set()


def test_configure_protocol_and_hand_over_check_their_arguments() -> None:
    from proxyproto_mw import _speedups  # noqa: PLC0415  (built: see pytestmark)

    with pytest.raises(TypeError, match="9 arguments"):
        _speedups.configure_protocol({})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="wrong argument types"):
        _speedups.configure_protocol(*[None] * 9)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        protocol: Any = HttpToolsProtocol(
            config=cast(Any, None), server_state=None, app_state={}, _loop=loop
        )
        assert protocol._loop is loop
        with pytest.raises(TypeError, match="4 arguments"):
            protocol._hand_over(None)
    finally:
        loop.close()
    with pytest.raises(TypeError, match="ProxyProtocol"):
        HttpToolsProtocol()  # type: ignore[call-arg]
