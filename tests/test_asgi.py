"""The ASGI middleware, its accessor and the forwarding-header rules they share.

End to end first: the FastAPI and Starlette apps of :mod:`asgi_apps`, which add
``ProxyProtocolMiddleware`` the way their users do, run by ``uvicorn --http
proxyproto_mw.uvicorn:HttpToolsProtocol`` in a subprocess. A client at 127.0.0.2 sends
a PROXY header saying 198.51.100.22 and forged ``X-Real-IP``, ``X-Forwarded-For`` and
``X-Forwarded-Proto`` headers; the app must see the header's client, and the forwarding
headers as nginx wrote them, even where something outside the middleware believes
``X-Forwarded-For`` (uvicorn's ``--proxy-headers --forwarded-allow-ips '*'``, or uvicorn's
``ProxyHeadersMiddleware`` added outside it). Then the middleware with hand-built scopes,
then :class:`~proxyproto_mw.forwarded.ForwardedHeaders` alone.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from starlette.requests import Request
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as websocket_connect

from proxyproto_mw import encode_v1, encode_v2
from proxyproto_mw.asgi import ProxyProtocolMiddleware, proxy_protocol
from proxyproto_mw.forwarded import ForwardedHeaders
from proxyproto_mw.header import ProxyProtocolInfo
from tests.clients import (
    CLIENT,
    DESTINATION,
    HttpReader,
    local_address,
    open_from,
    request,
    v2_tlvs,
)
from tests.haproxy import free_port
from tests.servers import Uvicorn

Address = tuple[str, int]
JSON = dict[str, Any]
Scope = MutableMapping[str, Any]

FORGED = "X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
"""What a client writes to pass for someone else, over a plain connection."""


# --- end to end: uvicorn running FastAPI / Starlette apps ------------------------------------


@dataclass(frozen=True)
class Variant:
    """One app, how uvicorn runs it, and what it believes outside the middleware."""

    app: str
    x_forwarded_for: Literal["append", "replace"]
    uvicorn_options: tuple[str, ...] = ()
    believes_forwarded_for: bool = False
    """Something outside the middleware takes the client from X-Forwarded-For, from any peer."""
    outer_proxy_headers: bool = False
    """uvicorn's ProxyHeadersMiddleware is inside the app, outside the PROXY middleware."""


VARIANTS = {
    "fastapi": Variant("tests.asgi_apps:fastapi_app", "append"),
    "fastapi-replace": Variant("tests.asgi_apps:fastapi_replace_app", "replace"),
    "starlette": Variant("tests.asgi_apps:starlette_app", "append"),
    "fastapi-uvicorn-proxy-headers": Variant(
        "tests.asgi_apps:fastapi_app",
        "append",
        ("--proxy-headers", "--forwarded-allow-ips", "*"),
        believes_forwarded_for=True,
    ),
    "fastapi-outer-proxy-headers-middleware": Variant(
        "tests.asgi_apps:proxy_headers_app",
        "append",
        believes_forwarded_for=True,
        outer_proxy_headers=True,
    ),
}


@dataclass
class Served:
    """An app under uvicorn, and how it was set up."""

    server: Uvicorn
    variant: Variant


@pytest.fixture(scope="module", params=list(VARIANTS.values()), ids=list(VARIANTS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """uvicorn with this package's httptools protocol, trusting headers from 127.0.0.2."""
    variant: Variant = request.param
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", variant.app, "--host", "127.0.0.1", "--port", str(port),
        "--http", "proxyproto_mw.uvicorn:HttpToolsProtocol", "--lifespan", "on",
        *variant.uvicorn_options,
    ]  # fmt: skip
    server = Uvicorn(
        tmp_path_factory.mktemp("asgi"),
        port=port,
        argv=argv,
        env={"PROXYPROTO_TRUSTED": "127.0.0.2"},
        name=f"uvicorn-asgi-{port}",
    )
    with server:
        yield Served(server, variant)
    for output in (server.stderr(), server.stdout()):
        assert "Traceback" not in output, output
        assert "ERROR" not in output, output


def request_with(headers: str) -> bytes:
    """``GET /seen`` with extra header lines."""
    return request("/seen", headers=headers)


def get_seen(served: Served, source: str, payload: bytes) -> tuple[JSON, Address]:
    """Send ``payload`` (a header and a request) from ``source``; what the app saw, and
    our address."""
    with open_from(source, served.server.address) as sock:
        sock.sendall(payload)
        response = HttpReader(sock).response()
        local = local_address(sock)
    assert response.status == 200, response
    return response.json(), local


def websocket_seen(served: Served, source: str, payload: bytes, headers: dict[str, str]) -> JSON:
    """Open ``/ws`` over a socket from ``source`` that sent ``payload`` first."""
    sock = open_from(source, served.server.address)
    sock.sendall(payload)
    uri = f"ws://127.0.0.1:{served.server.port}/ws"

    async def session() -> JSON:
        async with websocket_connect(
            uri,
            sock=sock,
            proxy=None,
            additional_headers=headers,
            open_timeout=5,
            close_timeout=2,
            ping_interval=None,
        ) as websocket:
            value = json.loads(await websocket.recv())
        assert isinstance(value, dict)
        return value

    try:
        return asyncio.run(asyncio.wait_for(session(), 15))
    finally:
        sock.close()


def expected_forwarded_for(variant: Variant, sent: list[str], client: str) -> list[str]:
    """nginx's ``$proxy_add_x_forwarded_for`` (append) or the client alone (replace)."""
    if variant.x_forwarded_for == "append":
        return [", ".join([*sent, client])]
    return [client]


def test_forged_headers_do_not_replace_the_header_client(served: Served) -> None:
    payload = encode_v1(CLIENT, DESTINATION) + request_with(FORGED)
    seen, local = get_seen(served, "127.0.0.2", payload)
    assert seen["type"] == "http"
    assert seen["client"] == list(CLIENT)
    assert seen["server"] == list(DESTINATION)
    headers = seen["headers"]
    assert headers["x-real-ip"] == [CLIENT[0]]
    assert headers["x-forwarded-for"] == expected_forwarded_for(
        served.variant, ["6.6.6.6"], CLIENT[0]
    )
    extension = seen["proxy_protocol"]
    assert extension["version"] == 1
    assert extension["client"] == list(CLIENT)
    assert extension["peer"] == list(local)


def test_websocket_sees_the_header_client(served: Served) -> None:
    forged = {"X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6"}
    seen = websocket_seen(served, "127.0.0.2", encode_v2(CLIENT, DESTINATION), forged)
    assert seen["type"] == "websocket"
    assert seen["client"] == list(CLIENT)
    assert seen["server"] == list(DESTINATION)
    assert seen["headers"]["x-real-ip"] == [CLIENT[0]]
    assert seen["headers"]["x-forwarded-for"] == expected_forwarded_for(
        served.variant, ["6.6.6.6"], CLIENT[0]
    )
    assert seen["proxy_protocol"]["version"] == 2


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_forged_forwarded_proto_is_replaced_by_the_connection_scheme(
    served: Served, kind: str
) -> None:
    header = encode_v1(CLIENT, DESTINATION)
    if kind == "http":
        seen, _ = get_seen(served, "127.0.0.2", header + request_with(FORGED))
        assert seen["scheme"] == "http"
    else:
        seen = websocket_seen(served, "127.0.0.2", header, {"X-Forwarded-Proto": "https"})
        assert seen["scheme"] == "ws"
    assert seen["client"] == list(CLIENT)
    assert seen["headers"]["x-forwarded-proto"] == ["http"]


def test_tls_reported_by_the_balancer_is_https(served: Served) -> None:
    """The v2 SSL TLV says the client used TLS: scheme and X-Forwarded-Proto are https."""
    header = encode_v2(CLIENT, DESTINATION, tlvs=v2_tlvs(), checksum=True)
    seen, _ = get_seen(served, "127.0.0.2", header + request_with(""))
    assert seen["scheme"] == "https"
    assert seen["headers"]["x-forwarded-proto"] == ["https"]
    assert seen["client"] == list(CLIENT)


def test_several_forwarded_for_headers(served: Served) -> None:
    forged = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n"
    seen, _ = get_seen(served, "127.0.0.2", encode_v1(CLIENT, DESTINATION) + request_with(forged))
    assert seen["client"] == list(CLIENT)
    assert seen["headers"]["x-forwarded-for"] == expected_forwarded_for(
        served.variant, ["6.6.6.6", "7.7.7.7, 8.8.8.8"], CLIENT[0]
    )


def test_connection_without_a_header(served: Served) -> None:
    """127.0.0.9 is not trusted and sends no header: the middleware works from the client
    the server (or what runs outside the middleware) put in the scope."""
    seen, local = get_seen(served, "127.0.0.9", request_with(FORGED))
    assert seen["proxy_protocol"] is None
    if served.variant.believes_forwarded_for:
        assert seen["client"][0] == "6.6.6.6"  # as the app's owner configured
    else:
        assert seen["client"] == list(local)
    client = seen["client"][0]
    assert seen["headers"]["x-real-ip"] == [client]
    assert seen["headers"]["x-forwarded-for"] == expected_forwarded_for(
        served.variant, ["6.6.6.6"], client
    )


# --- the middleware with hand-built scopes ----------------------------------------------------


def info(
    client: Address | None = CLIENT, server: Address | None = DESTINATION
) -> ProxyProtocolInfo:
    """The scope extension the uvicorn protocols set for a header."""
    return {
        "version": 2,
        "command": "PROXY" if client else "LOCAL",
        "client": client,
        "server": server,
        "peer": ("127.0.0.1", 40000),
        "tls": False,
        "tlvs": {},
        "alpn": None,
        "authority": None,
        "unique_id": None,
        "ssl": None,
        "aws_vpce_id": None,
        "gcp_psc_connection_id": None,
        "azure_private_link_id": None,
    }


def http_scope(
    *,
    client: Address | None = ("127.0.0.1", 40000),
    headers: list[tuple[bytes, bytes]] | None = None,
    extension: ProxyProtocolInfo | None = None,
    kind: str = "http",
    scheme: str = "http",
) -> Scope:
    """An ``http`` (or ``websocket``) scope as uvicorn builds it."""
    scope: Scope = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": scheme,
        "path": "/",
        "headers": headers if headers is not None else [(b"host", b"test")],
        "client": client,
        "server": ("127.0.0.1", 8000),
        "extensions": {} if extension is None else {"proxy_protocol": extension},
    }
    return scope


@dataclass
class Called:
    """What the inner app received."""

    scope: Scope | None = None
    receive: Any = None
    send: Any = None


def call(middleware: ProxyProtocolMiddleware, called: Called, scope: Scope) -> None:
    """Run one scope through ``middleware``; its inner app must have recorded into
    ``called``."""

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        return None

    asyncio.run(middleware(scope, receive, send))
    assert called.receive is receive
    assert called.send is send


def recording(**options: Any) -> tuple[ProxyProtocolMiddleware, Called]:
    """The middleware with ``options`` around an app that records what it is called with."""
    called = Called()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        called.scope, called.receive, called.send = scope, receive, send

    return ProxyProtocolMiddleware(app, **options), called


ALL_OPTIONS: dict[str, Any] = {
    "x_real_ip": True,
    "x_forwarded_for": "append",
    "x_forwarded_proto": True,
}


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower case) in ``scope``."""
    return [value for key, value in scope["headers"] if key.lower() == name]


def test_lifespan_passes_through_untouched() -> None:
    middleware, called = recording(**ALL_OPTIONS)
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    before = copy.deepcopy(scope)
    call(middleware, called, scope)
    assert called.scope is scope
    assert scope == before


def test_unknown_scope_type_passes_through_untouched() -> None:
    middleware, called = recording(**ALL_OPTIONS)
    scope: Scope = {"type": "custom", "client": ("127.0.0.1", 1), "headers": []}
    before = copy.deepcopy(scope)
    call(middleware, called, scope)
    assert called.scope is scope
    assert scope == before


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_header_addresses_replace_the_scope_addresses(kind: str) -> None:
    middleware, called = recording()
    scope = http_scope(client=("6.6.6.6", 0), extension=info(), kind=kind)
    headers = scope["headers"]
    call(middleware, called, scope)
    assert called.scope is scope
    assert scope["client"] == CLIENT
    assert scope["server"] == DESTINATION
    assert scope["headers"] is headers  # no option: headers untouched


def test_scope_without_the_extension_keeps_its_client() -> None:
    middleware, called = recording(**ALL_OPTIONS)
    scope = http_scope(client=("10.0.0.1", 1234), headers=[(b"x-forwarded-for", b"6.6.6.6")])
    del scope["extensions"]
    call(middleware, called, scope)
    assert scope["client"] == ("10.0.0.1", 1234)
    assert scope["server"] == ("127.0.0.1", 8000)
    assert header_values(scope, b"x-real-ip") == [b"10.0.0.1"]
    assert header_values(scope, b"x-forwarded-for") == [b"6.6.6.6, 10.0.0.1"]
    assert header_values(scope, b"x-forwarded-proto") == [b"http"]


def test_local_header_keeps_the_socket_addresses() -> None:
    """v2 LOCAL (a health check) carries no addresses: the scope's stay."""
    middleware, called = recording(x_real_ip=True)
    scope = http_scope(client=("127.0.0.1", 40000), extension=info(client=None, server=None))
    call(middleware, called, scope)
    assert scope["client"] == ("127.0.0.1", 40000)
    assert scope["server"] == ("127.0.0.1", 8000)
    assert header_values(scope, b"x-real-ip") == [b"127.0.0.1"]


@pytest.mark.parametrize("command", ["PROXY", "LOCAL"])
def test_header_without_client_on_a_unix_socket_appends_unix(command: str) -> None:
    """``uvicorn --uds`` behind a balancer sending v2 UNIX (or LOCAL) headers: nobody has an
    IP address, and X-Forwarded-For ends with ``unix:``, not with what the client wrote."""
    middleware, called = recording(x_real_ip=True, x_forwarded_for="append")
    extension = {**info(client=None, server=None), "command": command, "peer": None}
    scope = http_scope(
        client=None,
        headers=[(b"x-real-ip", b"6.6.6.6"), (b"x-forwarded-for", b"6.6.6.6")],
        extension=extension,  # type: ignore[arg-type]
    )
    call(middleware, called, scope)
    assert scope["client"] is None
    assert header_values(scope, b"x-forwarded-for") == [b"6.6.6.6, unix:"]
    assert header_values(scope, b"x-real-ip") == []


def test_headers_rewritten_from_the_header_client() -> None:
    middleware, called = recording(**ALL_OPTIONS)
    scope = http_scope(
        client=("6.6.6.6", 0),
        headers=[
            (b"host", b"test"),
            (b"x-real-ip", b"6.6.6.6"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"accept", b"*/*"),
            (b"x-forwarded-for", b"7.7.7.7"),
            (b"x-forwarded-proto", b"https"),
        ],
        extension=info(),
    )
    call(middleware, called, scope)
    assert header_values(scope, b"x-real-ip") == [CLIENT[0].encode()]
    assert header_values(scope, b"x-forwarded-for") == [b"6.6.6.6, 7.7.7.7, 198.51.100.22"]
    assert header_values(scope, b"x-forwarded-proto") == [b"http"]
    # other headers keep their values and order
    assert [key for key, _ in scope["headers"]][:2] == [b"host", b"accept"]


def test_header_names_match_in_any_case() -> None:
    middleware, called = recording(x_real_ip=True, x_forwarded_for="replace")
    scope = http_scope(
        headers=[(b"X-Real-IP", b"6.6.6.6"), (b"X-Forwarded-For", b"6.6.6.6")],
        extension=info(),
    )
    call(middleware, called, scope)
    assert sorted(scope["headers"]) == [
        (b"x-forwarded-for", CLIENT[0].encode()),
        (b"x-real-ip", CLIENT[0].encode()),
    ]


def test_websocket_scheme_is_forwarded_as_http() -> None:
    middleware, called = recording(x_forwarded_proto=True)
    for scheme, expected in (("ws", b"http"), ("wss", b"https")):
        extension = info()
        extension["tls"] = scheme == "wss"
        scope = http_scope(kind="websocket", scheme=scheme, extension=extension)
        call(middleware, called, scope)
        assert header_values(scope, b"x-forwarded-proto") == [expected]


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"x_real_ip": True}, {b"x-real-ip": [], b"x-forwarded-for": [b"6.6.6.6"]}),
        (
            {"x_forwarded_for": "replace"},
            {b"x-real-ip": [b"6.6.6.6"], b"x-forwarded-for": [b"unix:"]},
        ),
        (
            {"x_forwarded_for": "append"},
            {b"x-real-ip": [b"6.6.6.6"], b"x-forwarded-for": [b"6.6.6.6, unix:"]},
        ),
    ],
    ids=["x-real-ip-removed", "replace-with-unix", "append-unix"],
)
def test_scope_without_client(options: dict[str, Any], expected: dict[bytes, list[bytes]]) -> None:
    """A server that knows no client address (a UNIX socket, no header): a forged X-Real-IP
    is removed, and X-Forwarded-For ends with ``unix:`` as nginx writes it, so that its
    last entry is never the client's own."""
    middleware, called = recording(x_forwarded_proto=True, **options)
    scope = http_scope(
        client=None, headers=[(b"x-real-ip", b"6.6.6.6"), (b"x-forwarded-for", b"6.6.6.6")]
    )
    call(middleware, called, scope)
    assert scope["client"] is None
    for name, values in expected.items():
        assert header_values(scope, name) == values
    assert header_values(scope, b"x-forwarded-proto") == [b"http"]


def test_invalid_forwarded_for_option_is_refused() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="x_forwarded_for"):
        ProxyProtocolMiddleware(app, x_forwarded_for="prepend")  # type: ignore[arg-type]


# --- the accessor -----------------------------------------------------------------------------


def test_proxy_protocol_of_a_scope_request_and_websocket() -> None:
    extension = info()
    scope = http_scope(extension=extension)
    assert proxy_protocol(scope) is extension
    assert proxy_protocol(Request(scope)) is extension
    websocket_scope = http_scope(kind="websocket", extension=extension)
    assert proxy_protocol(WebSocket(websocket_scope, _no_receive, _no_send)) is extension


def test_proxy_protocol_of_any_object_with_a_scope() -> None:
    @dataclass
    class Connection:
        scope: Scope

    extension = info()
    assert proxy_protocol(Connection(http_scope(extension=extension))) is extension


def test_proxy_protocol_without_a_header() -> None:
    scope = http_scope()
    assert proxy_protocol(scope) is None
    del scope["extensions"]
    assert proxy_protocol(scope) is None
    assert proxy_protocol(Request(scope)) is None


async def _no_receive() -> MutableMapping[str, Any]:
    raise AssertionError("not called")


async def _no_send(message: MutableMapping[str, Any]) -> None:
    raise AssertionError("not called")


# --- ForwardedHeaders.rewrite ------------------------------------------------------------------


def test_nothing_enabled_rewrites_nothing() -> None:
    rules = ForwardedHeaders()
    assert not rules.enabled
    assert rules.rewrite("198.51.100.22", "https", ["6.6.6.6"]) == {}


REAL_IP = ForwardedHeaders(x_real_ip=True)
APPEND = ForwardedHeaders(x_forwarded_for="append")
REPLACE = ForwardedHeaders(x_forwarded_for="replace")
PROTO = ForwardedHeaders(x_forwarded_proto=True)
ALL = ForwardedHeaders(x_real_ip=True, x_forwarded_for="append", x_forwarded_proto=True)
XFF = "x-forwarded-for"
XFP = "x-forwarded-proto"
C = CLIENT[0]

REWRITES = {
    "real-ip": (REAL_IP, C, "http", ["6.6.6.6"], {"x-real-ip": C}),
    "real-ip-no-client": (REAL_IP, None, "http", [], {"x-real-ip": None}),
    "append-to-nothing": (APPEND, C, "http", [], {XFF: C}),
    "append-to-several": (APPEND, C, "http", ["6.6.6.6", "7.7.7.7, 8.8.8.8"],
                          {XFF: f"6.6.6.6, 7.7.7.7, 8.8.8.8, {C}"}),
    "append-no-client": (APPEND, None, "http", ["6.6.6.6"], {XFF: "6.6.6.6, unix:"}),
    "append-no-client-to-nothing": (APPEND, None, "http", [], {XFF: "unix:"}),
    "replace-several": (REPLACE, C, "http", ["6.6.6.6", "7.7.7.7"], {XFF: C}),
    "replace-no-client": (REPLACE, None, "http", ["6.6.6.6"], {XFF: "unix:"}),
    "proto-http": (PROTO, C, "http", [], {XFP: "http"}),
    "proto-https": (PROTO, C, "https", [], {XFP: "https"}),
    "proto-ws": (PROTO, C, "ws", [], {XFP: "http"}),
    "proto-wss": (PROTO, C, "wss", [], {XFP: "https"}),
    "all-ipv6": (ALL, "2001:db8::22", "wss", ["6.6.6.6"],
                 {"x-real-ip": "2001:db8::22", XFF: "6.6.6.6, 2001:db8::22", XFP: "https"}),
}  # fmt: skip


@pytest.mark.parametrize("rules, client, scheme, sent, expected", REWRITES.values(), ids=REWRITES)
def test_rewrite(
    rules: ForwardedHeaders,
    client: str | None,
    scheme: str,
    sent: list[str],
    expected: dict[str, str | None],
) -> None:
    assert rules.enabled
    assert rules.rewrite(client, scheme, sent) == expected


@pytest.mark.parametrize("value", ["prepend", "", "APPEND", True])
def test_invalid_forwarded_for_raises(value: Any) -> None:
    with pytest.raises(ValueError, match="x_forwarded_for must be 'append', 'replace' or None"):
        ForwardedHeaders(x_forwarded_for=value)


def test_rules_are_frozen() -> None:
    rules = ForwardedHeaders(x_real_ip=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.x_real_ip = False  # type: ignore[misc]
