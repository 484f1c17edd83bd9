"""The scope extension ``ProxiedTransport`` builds per request is ``ProxyHeader.as_dict``'s.

With the C accelerator, ``_speedups.TransportView`` (ProxiedTransport's base) builds the
dict itself for HTTP requests with headers without TLVs (the common case): it must be
equal, key for key, to what ``as_dict`` gives for every kind of header, with and without
TLS after the header; and the C view must answer exactly as the pure-Python reference
(``_PythonTransportView``) for every scope and ``get_extra_info`` name.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any, cast

import pytest

from proxyproto_mw.decoder import ACCELERATED, Decoded, decode
from proxyproto_mw.encoder import encode_v1, encode_v2, ssl_tlv
from proxyproto_mw.header import Command, ProxyHeader, TLVType
from proxyproto_mw.uvicorn import ProxiedTransport, _LocalHeaderTransport, _PythonTransportView


def _on_python_base(cls: type[Any], base: type[Any]) -> type[Any]:
    """``cls``'s own members on another base: the pure-Python twin of a view class."""
    members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (base,), members)


PYTHON_PROXIED = _on_python_base(ProxiedTransport, _PythonTransportView)
PYTHON_LOCAL = _on_python_base(_LocalHeaderTransport, PYTHON_PROXIED)
VIEWS = {"python": (PYTHON_PROXIED, PYTHON_LOCAL)}
if ACCELERATED:
    VIEWS["c"] = (ProxiedTransport, _LocalHeaderTransport)

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


@pytest.mark.parametrize("impl", sorted(VIEWS))
@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("name", sorted(HEADERS))
def test_extension_is_as_dict(name: str, tls: bool, impl: str) -> None:
    decoded = decode(HEADERS[name] + b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(decoded, Decoded)
    header = decoded.header
    proxied, local = VIEWS[impl]
    view_class = proxied if header.source is not None else local
    scope, _, _, _ = _answers(view_class, header, tls, "http")
    info = scope["extensions"]["proxy_protocol"]
    expected = header.as_dict(PEER, tls=tls)
    assert info == expected
    assert list(info) == list(expected)
    assert scope["scheme"] == ("https" if expected["tls"] else "http")
    assert scope["scheme"] == ("https" if expected["tls"] else "http")


SCOPES: dict[str, dict[str, Any]] = {
    "http": {"type": "http", "scheme": "http", "path": "/"},
    "http with extensions": {
        "type": "http",
        "scheme": "http",
        "extensions": {"http.response.trailers": {}},
    },
    "http, extensions None": {"type": "http", "scheme": "http", "extensions": None},
    "websocket": {"type": "websocket", "scheme": "ws", "path": "/chat"},
    "websocket with extensions": {
        "type": "websocket",
        "scheme": "ws",
        "extensions": {"websocket.http.response": {}},
    },
}
PEER = ("127.0.0.1", 51000)
"""The balancer's address the views are given."""
NAMES = ["socket", "sockname", "peername", "sslcontext", "proxy_protocol", "compression", "cipher"]


def _answers(view_class: type[Any], header: ProxyHeader, tls: bool, kind: str) -> Any:
    """What a view of ``view_class`` hands the app and answers, on a real loopback socket."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    left, right = socket.socketpair()

    async def call() -> Any:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            asyncio.Protocol, left
        )
        view = view_class(transport, header, PEER, app, tls)
        scope = dict(SCOPES[kind])
        await view(scope, "receive", "send")
        extra = [view.get_extra_info(name) for name in NAMES]
        extra += [view.get_extra_info(name, "default") for name in NAMES]
        # Each run has its own socket: compare its kind.
        extra = [("a socket", x.family) if hasattr(x, "fileno") else x for x in extra]
        fields = (
            view.header is header,
            view._transport is transport,
            view.write == transport.write,
        )
        transport.close()
        return extra, fields, scope

    try:
        extra, fields, scope_after = asyncio.run(call())
    finally:
        right.close()
    (seen_scope,) = seen
    return seen_scope, scope_after, extra, fields


@pytest.mark.skipif(not ACCELERATED, reason="the C accelerator is not built")
@pytest.mark.parametrize("kind", sorted(SCOPES))
@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("name", sorted(HEADERS))
def test_c_view_answers_as_the_python_reference(name: str, tls: bool, kind: str) -> None:
    decoded = decode(HEADERS[name])
    assert isinstance(decoded, Decoded)
    header = decoded.header
    index = 0 if header.source is not None else 1
    c_answers = _answers(VIEWS["c"][index], header, tls, kind)
    python_answers = _answers(VIEWS["python"][index], header, tls, kind)
    assert c_answers == python_answers
    seen_scope, scope_after, _, fields = c_answers
    assert fields == (True, True, True)
    assert seen_scope["extensions"]["proxy_protocol"] == header.as_dict(PEER, tls=tls)
    # The server's own extensions are kept beside ours.
    for key in SCOPES[kind].get("extensions") or {}:
        assert key in seen_scope["extensions"]
    if kind.startswith("http"):
        assert scope_after == SCOPES[kind]  # uvicorn's scope is left as it was


@pytest.mark.skipif(not ACCELERATED, reason="the C accelerator is not built")
def test_c_view_refuses_wrong_arguments_and_is_seen_by_the_collector() -> None:
    decoded = decode(HEADERS["v1 tcp4"])
    assert isinstance(decoded, Decoded)

    class Transport:
        def write(self, data: bytes) -> None:
            pass

    transport: Any = Transport()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match="ProxyHeader"):
        ProxiedTransport(transport, cast(Any, ("192.0.2.1", 1)), None, app, False)
    with pytest.raises(TypeError, match="5 positional"):
        ProxiedTransport(transport, decoded.header)  # type: ignore[call-arg]
    view = ProxiedTransport(transport, decoded.header, None, app, False)
    referents = gc.get_referents(view)
    for held in (transport, decoded.header, app):
        assert any(obj is held for obj in referents)
    with pytest.raises(AttributeError):
        view._header = decoded.header


TRANSPORT_METHODS = [
    ("is_closing", (), {}),
    ("close", (), {}),
    ("pause_reading", (), {}),
    ("resume_reading", (), {}),
    ("is_reading", (), {}),
    ("set_protocol", ("protocol",), {}),
    ("get_protocol", (), {}),
    ("abort", (), {}),
    ("can_write_eof", (), {}),
    ("write_eof", (), {}),
    ("writelines", ([b"a", b"b"],), {}),
    ("get_write_buffer_size", (), {}),
    ("get_write_buffer_limits", (), {}),
    ("set_write_buffer_limits", (), {"high": 10, "low": 2}),
    ("set_write_buffer_limits", (1, 2, 3, 4), {"x": 5}),  # more than the short path holds
]


@pytest.mark.parametrize("impl", sorted(VIEWS))
@pytest.mark.parametrize(("method", "args", "kwargs"), TRANSPORT_METHODS)
def test_transport_methods_are_the_real_transports(
    impl: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Every other ``asyncio.Transport`` method reaches the real transport, with its
    arguments and its answer; anything else is not there (no attribute forwarding)."""
    decoded = decode(HEADERS["v1 tcp4"])
    assert isinstance(decoded, Decoded)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def __getattr__(self, name: str) -> Any:
            def method(*args: Any, **kwargs: Any) -> str:
                calls.append((name, args, kwargs))
                return f"{name} answered"

            return method

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pass

    view = VIEWS[impl][0](Transport(), decoded.header, None, app, False)
    assert getattr(view, method)(*args, **kwargs) == f"{method} answered"
    assert calls == [(method, args, kwargs)]
    with pytest.raises(AttributeError):
        view.get_extra_info_of_another_kind  # noqa: B018
