"""``proxyproto_mw.testing``: the in-process transports give the app the scope that real
uvicorn with our protocol gives it, and ``serve_uvicorn``'s client sends real headers.

The reference for every in-process scope is the same app served by ``serve_uvicorn`` (a
real uvicorn subprocess) and reached over a real socket with the same header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from proxyproto_mw import Command, TLVType, TrustPolicy, encode_v1, encode_v2, ssl_tlv
from proxyproto_mw.asgi import proxy_protocol
from proxyproto_mw.header import ProxyHeader
from proxyproto_mw.testing import (
    DEFAULT_HEADER,
    AsyncProxyProtocolTransport,
    ProxyProtocolTransport,
    ServedUvicorn,
    proxied_test_client,
    proxy_header,
    serve_uvicorn,
)
from tests.apps import app as describing_app
from tests.clients import WARNING
from tests.servers import REPOSITORY

pytestmark = pytest.mark.timeout(60)

TLS = ssl_tlv(client=0x01, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256")
HEADERS: dict[str, ProxyHeader] = {
    "v1-tcp4": proxy_header(version=1),
    "v1-tcp6": proxy_header(("2001:db8::22", 50123), ("2001:db8:0:1::7", 8443), version=1),
    "v1-unknown": proxy_header(None, None, version=1),
    "v2-tcp4": DEFAULT_HEADER,
    "v2-tlvs": proxy_header(
        tlvs=[
            (TLVType.ALPN, b"h2"),
            (TLVType.AUTHORITY, b"app.example.com"),
            (TLVType.AWS, b"\x01vpce-0123456789abcdef0"),
            TLS,
        ],
        checksum=True,
    ),
    "v2-local": proxy_header(command=Command.LOCAL),
}


def comparable(seen: dict[str, Any]) -> dict[str, Any]:
    """What the app saw, without what differs between a socket and no socket: the
    balancer's port, and the socket's own addresses for headers that carry none."""
    seen = dict(seen)
    seen.pop("http_version")
    extension = dict(seen["proxy_protocol"])
    seen["proxy_protocol"] = extension
    extension["peer"] = extension["peer"][0]
    if extension["client"] is None:  # LOCAL / UNKNOWN: the socket's addresses
        seen["client"] = seen["client"][0]
        seen.pop("server")
    return seen


@pytest.fixture(scope="module")
def served() -> Iterator[ServedUvicorn]:
    """``tests.apps:app`` in a real uvicorn subprocess, trusting headers from 127.0.0.1."""
    with serve_uvicorn("tests.apps:app", env={"PYTHONPATH": str(REPOSITORY)}) as server:
        yield server
    assert "Traceback" not in server.output(), server.output()


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_the_sync_transport_gives_the_scope_uvicorn_gives(served: ServedUvicorn, name: str) -> None:
    header = HEADERS[name]
    real = served.request("POST", "/path", header=header, content=b"body")
    transport = ProxyProtocolTransport(describing_app, header)
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        in_process = client.post("/path", content=b"body")
    assert (real.status_code, in_process.status_code) == (200, 200)
    assert comparable(in_process.json()) == comparable(real.json())
    if header.source is not None:
        assert real.json()["client"] == list(header.source)


def test_the_async_transport_gives_the_scope_uvicorn_gives(served: ServedUvicorn) -> None:
    header = HEADERS["v2-tlvs"]
    real = served.request("GET", "/", header=header)

    async def in_process() -> httpx.Response:
        transport = AsyncProxyProtocolTransport(describing_app, header)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/")

    seen = asyncio.run(in_process()).json()
    assert comparable(seen) == comparable(real.json())
    assert seen["scheme"] == "https"  # the SSL TLV says the client used TLS


def test_a_websocket_in_process_and_over_a_socket(served: ServedUvicorn) -> None:
    header = HEADERS["v1-tcp6"]
    with served.websocket("/ws", header=header) as websocket:
        real = json.loads(websocket.recv(timeout=5))
        websocket.send("echo")
        assert websocket.recv(timeout=5) == "echo"
    with (
        proxied_test_client(describing_app, header) as client,
        client.websocket_connect("/ws") as websocket,
    ):
        in_process = websocket.receive_json()
    assert real["type"] == in_process["type"] == "websocket"
    assert comparable(in_process) == comparable(real)
    assert real["client"] == ["2001:db8::22", 50123]


def test_a_fastapi_app_sees_the_header_client_and_its_tlvs() -> None:
    app = FastAPI()

    @app.get("/")
    async def index(request: Request) -> dict[str, object]:
        header = proxy_protocol(request)
        assert header is not None
        assert request.client is not None
        return {
            "client": request.client.host,
            "scheme": request.url.scheme,
            "vpce": header["aws_vpce_id"],
            "peer": header["peer"],
        }

    header = proxy_header(("192.0.2.44", 4000), tlvs=[(TLVType.AWS, b"\x01vpce-0abc")])
    transport = ProxyProtocolTransport(app, header, peer=("127.0.0.9", 1234))
    with httpx.Client(transport=transport, base_url="https://testserver") as client:
        seen = client.get("/").json()
    # The URL said https; as in production, only the connection decides the scheme.
    assert seen == {
        "client": "192.0.2.44",
        "scheme": "http",
        "vpce": "vpce-0abc",
        "peer": ["127.0.0.9", 1234],
    }


def test_a_raw_header_is_decoded_by_the_engine() -> None:
    raw = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), checksum=True)
    transport = ProxyProtocolTransport(describing_app, raw, tls=True)
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        seen = client.get("/").json()
    assert seen["client"] == ["192.0.2.1", 1]
    assert seen["server"] == ["192.0.2.2", 2]
    assert seen["scheme"] == "https"
    assert seen["proxy_protocol"]["tlvs"] == {str(int(TLVType.CRC32C)): raw[-4:].hex()}


def test_headers_that_cannot_be_built_are_refused() -> None:
    with pytest.raises(ValueError, match="v2 headers only"):
        proxy_header(version=1, tlvs=[(TLVType.NOOP, b"")])
    with pytest.raises(ValueError, match="v2 headers only"):
        proxy_header(version=1, command="LOCAL")
    with pytest.raises(ValueError, match="complete PROXY header"):
        ProxyProtocolTransport(describing_app, encode_v1(("192.0.2.1", 1), ("192.0.2.2", 2))[:-2])
    with pytest.raises(ValueError, match="complete PROXY header"):
        ProxyProtocolTransport(describing_app, encode_v1() + b"GET")


def test_serve_uvicorn_refuses_what_the_policy_refuses(served: ServedUvicorn) -> None:
    # 127.0.0.2 is not trusted: its header closes the connection, with one warning.
    with pytest.raises(httpx.RemoteProtocolError, match="without a response"):
        served.request(source="127.0.0.2")
    # A trusted peer without a header, and a broken header.
    with pytest.raises(httpx.RemoteProtocolError):
        served.request(header=None)
    with pytest.raises(httpx.RemoteProtocolError):
        served.request(header=b"PROXY TCP4 198.51.100.022 203.0.113.7 35646 443\r\n")
    # An untrusted peer without a header is served with its own address.
    plain = served.request("GET", "/", header=None, source="127.0.0.2")
    assert plain.json()["client"][0] == "127.0.0.2"
    assert plain.json()["proxy_protocol"] is None
    output = served.output()
    assert f"{WARNING} 127.0.0.2:" in output
    assert "no PROXY header from trusted peer 127.0.0.1" in output
    assert "invalid IPv4 address '198.51.100.022'" in output


async def _websocket_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(scope["client"])})
        await receive()
    elif scope["type"] == "http":
        await describing_app(scope, receive, send)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_serve_uvicorn_runs_an_app_object_in_a_thread(http: Any) -> None:
    policy = TrustPolicy(trusted="127.0.0.1", mode="optional")
    with serve_uvicorn(_websocket_app, policy=policy, http=http) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        with server.websocket("/", header=proxy_header(("192.0.2.7", 7000))) as websocket:
            assert json.loads(websocket.recv(timeout=5)) == ["192.0.2.7", 7000]
        # optional: a trusted peer may come without a header.
        response = server.request("GET", "/x", header=None)
        assert response.json()["client"][0] == "127.0.0.1"
        assert response.json()["proxy_protocol"] is None
        assert response.request.url == f"{server.url}/x"
        output = server.output()
    assert '"GET /x HTTP/1.1" 200' in output


def test_a_policy_with_versions_cannot_go_to_a_process() -> None:
    policy = TrustPolicy(versions=[2])
    with (
        pytest.raises(ValueError, match="versions"),
        serve_uvicorn("tests.apps:app", policy=policy),
    ):
        pass


def test_serve_uvicorn_reports_a_server_that_cannot_start() -> None:
    with (
        pytest.raises(RuntimeError, match="uvicorn exited") as error,
        serve_uvicorn("tests.no_such_module:app", env={"PYTHONPATH": str(REPOSITORY)}),
    ):
        pass
    assert "no_such_module" in str(error.value)
