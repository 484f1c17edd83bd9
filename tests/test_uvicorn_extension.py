"""The scope extension ``ProxiedTransport`` builds per request is ``ProxyHeader.as_dict``'s.

``ProxiedTransport.__call__`` builds the dict itself for headers without TLVs (the common
case, without as_dict's TLV look-ups): it must be equal, key for key, to what ``as_dict``
gives for every kind of header, with and without TLS after the header.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from proxyproto_mw.decoder import Decoded, decode
from proxyproto_mw.encoder import encode_v1, encode_v2, ssl_tlv
from proxyproto_mw.header import Command, TLVType
from proxyproto_mw.uvicorn import ProxiedTransport, _LocalHeaderTransport

HEADERS = {
    "v1 tcp4": encode_v1(("192.0.2.10", 40000), ("198.51.100.1", 443)),
    "v1 tcp6": encode_v1(("2001:db8::10", 40000), ("2001:db8::1", 443)),
    "v1 unknown": encode_v1(),
    "v2 tcp4": encode_v2(("192.0.2.10", 40000), ("198.51.100.1", 443)),
    "v2 tcp6": encode_v2(("2001:db8::10", 40000), ("2001:db8::1", 443)),
    "v2 local": encode_v2(command=Command.LOCAL),
    "v2 tlvs": encode_v2(
        ("192.0.2.10", 40000),
        ("198.51.100.1", 443),
        tlvs=[
            (TLVType.ALPN, b"h2"),
            (TLVType.AUTHORITY, b"example.com"),
            ssl_tlv(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256"),
        ],
    ),
}


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("name", sorted(HEADERS))
def test_extension_is_as_dict(name: str, tls: bool) -> None:
    decoded = decode(HEADERS[name] + b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(decoded, Decoded)
    header = decoded.header
    peer = ("127.0.0.1", 51000)
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    left, right = socket.socketpair()

    async def call() -> None:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            asyncio.Protocol, left
        )
        view_class = ProxiedTransport if header.source is not None else _LocalHeaderTransport
        view = view_class(transport, header, peer, app, tls)
        await view({"type": "http", "scheme": "http"}, None, None)
        transport.close()

    try:
        asyncio.run(call())
    finally:
        right.close()
    (scope,) = seen
    info = scope["extensions"]["proxy_protocol"]
    expected = header.as_dict(peer, tls=tls)
    assert info == expected
    assert list(info) == list(expected)
    assert scope["scheme"] == ("https" if expected["tls"] else "http")
