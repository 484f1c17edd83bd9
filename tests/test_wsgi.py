"""The WSGI middleware: unit tests on environs, and the Flask example served for real."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from proxyproto_mw import NEED_DATA, Command, decode, encode_v1, encode_v2, ssl_tlv
from proxyproto_mw.wsgi import ProxyProtocolMiddleware, proxy_protocol
from tests.clients import HttpReader, open_from, request
from tests.haproxy import ServerProcess, free_port
from tests.servers import REPOSITORY, clean_environment

CLIENT = ("198.51.100.22", 35646)
DESTINATION = ("203.0.113.7", 443)


def _info(**overrides: Any) -> dict[str, Any]:
    """The dict the servers put in ``environ["proxy_protocol"]`` for a v2 header."""
    header = decode(encode_v2(CLIENT, DESTINATION))
    assert header is not NEED_DATA
    info: dict[str, Any] = dict(header.header.as_dict(("127.0.0.1", 5000)))
    info.update(overrides)
    return info


def _call(middleware_options: dict[str, Any], environ: dict[str, Any]) -> dict[str, Any]:
    """Run the middleware over ``environ``; the environ the app received."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.update(environ)
        return [b""]

    ProxyProtocolMiddleware(app, **middleware_options)(environ, lambda *args: None)  # type: ignore[arg-type]
    return seen


def _environ(**extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REMOTE_ADDR": "6.6.6.6",  # as a ProxyFix believing X-Forwarded-For left it
        "REMOTE_PORT": "1",
        "SERVER_NAME": "internal",
        "SERVER_PORT": "8000",
        "wsgi.url_scheme": "http",
        "HTTP_X_REAL_IP": "6.6.6.6",
        "HTTP_X_FORWARDED_FOR": "6.6.6.6",
        "HTTP_X_FORWARDED_PROTO": "https",
    }
    environ.update(extra)
    return environ


def test_restores_the_header_client_and_leaves_headers_by_default() -> None:
    seen = _call({}, _environ(proxy_protocol=_info()))
    assert (seen["REMOTE_ADDR"], seen["REMOTE_PORT"]) == ("198.51.100.22", "35646")
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("internal", "8000")
    assert seen["HTTP_X_REAL_IP"] == seen["HTTP_X_FORWARDED_FOR"] == "6.6.6.6"
    assert seen["wsgi.url_scheme"] == "http"


def test_server_from_header_and_https_from_the_ssl_tlv() -> None:
    info = _info(ssl={"tls": True, "version": "TLSv1.3"}, tls=True)
    seen = _call({"server_from_header": True}, _environ(proxy_protocol=info))
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("203.0.113.7", "443")
    assert seen["wsgi.url_scheme"] == "https"


def test_rewrites_forwarding_headers_like_nginx() -> None:
    options = {"x_real_ip": True, "x_forwarded_for": "append", "x_forwarded_proto": True}
    seen = _call(options, _environ(proxy_protocol=_info()))
    assert seen["HTTP_X_REAL_IP"] == "198.51.100.22"
    assert seen["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 198.51.100.22"
    assert seen["HTTP_X_FORWARDED_PROTO"] == "http"
    seen = _call({"x_forwarded_for": "replace"}, _environ(proxy_protocol=_info()))
    assert seen["HTTP_X_FORWARDED_FOR"] == "198.51.100.22"


def test_without_a_header_the_socket_address_stays_and_headers_still_follow_it() -> None:
    environ = _environ(REMOTE_ADDR="127.0.0.9")
    environ.pop("HTTP_X_FORWARDED_FOR")
    seen = _call({"x_real_ip": True, "x_forwarded_for": "append"}, environ)
    assert seen["REMOTE_ADDR"] == "127.0.0.9"
    assert seen["HTTP_X_REAL_IP"] == "127.0.0.9"
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.9"
    assert proxy_protocol(seen) is None


def test_local_header_keeps_the_socket_address() -> None:
    info = _info(command="LOCAL", client=None, server=None)
    seen = _call({"x_real_ip": True}, _environ(REMOTE_ADDR="127.0.0.4", proxy_protocol=info))
    assert seen["REMOTE_ADDR"] == seen["HTTP_X_REAL_IP"] == "127.0.0.4"


@pytest.mark.parametrize("remote_addr", ["", "<local>"], ids=["gunicorn-unix", "werkzeug-unix"])
@pytest.mark.parametrize("command", ["PROXY", "LOCAL"])
def test_client_without_an_ip_address_is_appended_as_unix(remote_addr: str, command: str) -> None:
    """A v2 UNIX or LOCAL header on a UNIX socket (``gunicorn -b unix:``): the client has no
    IP address, gunicorn writes ``REMOTE_ADDR`` empty, werkzeug ``<local>``; X-Forwarded-For
    ends with ``unix:`` as nginx writes it, never with the value the client sent."""
    info = _info(command=command, client=None, server=None, peer=None)
    environ = _environ(REMOTE_ADDR=remote_addr, proxy_protocol=info)
    seen = _call({"x_real_ip": True, "x_forwarded_for": "append"}, environ)
    assert seen["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, unix:"
    assert "HTTP_X_REAL_IP" not in seen
    seen = _call({"x_forwarded_for": "replace"}, _environ(REMOTE_ADDR=remote_addr))
    assert seen["HTTP_X_FORWARDED_FOR"] == "unix:"


def test_unknown_forwarded_for_option_is_refused() -> None:
    with pytest.raises(ValueError, match="x_forwarded_for"):
        ProxyProtocolMiddleware(lambda environ, start: [], x_forwarded_for="prepend")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def flask_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``python examples/flask_app.py``, as its docstring says to run it."""
    port = free_port()
    env = clean_environment({"PROXYPROTO_TRUSTED": "127.0.0.0/8", "PORT": str(port)})
    server = ServerProcess(
        [sys.executable, str(REPOSITORY / "examples" / "flask_app.py")],
        tmp_path_factory.mktemp("flask-example"),
        [("127.0.0.1", port)],
        name="flask-example",
        start_timeout=15.0,
        cwd=REPOSITORY,
        env=env,
    )
    with server:
        yield ("127.0.0.1", port)


def _ask(address: tuple[str, int], source: str, payload: bytes) -> dict[str, Any]:
    with open_from(source, address) as sock:
        sock.sendall(payload)
        response = HttpReader(sock).response()
    assert response.status == 200
    result: dict[str, Any] = response.json()
    return result


def test_flask_example_sees_the_real_client_through_forged_headers(
    flask_example: tuple[str, int],
) -> None:
    forged = "X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
    payload = encode_v1(CLIENT, DESTINATION) + request("/", headers=forged)
    view = _ask(flask_example, "127.0.0.2", payload)
    assert view["remote_addr"] == "198.51.100.22"
    assert view["x_real_ip"] == "198.51.100.22"
    assert view["x_forwarded_for"] == "6.6.6.6, 198.51.100.22"
    assert view["x_forwarded_proto"] == "http"
    assert view["proxy_protocol"]["version"] == 1


def test_flask_example_https_from_the_ssl_tlv_and_local(flask_example: tuple[str, int]) -> None:
    header = encode_v2(CLIENT, DESTINATION, tlvs=[ssl_tlv(version="TLSv1.3")], checksum=True)
    view = _ask(flask_example, "127.0.0.3", header + request("/"))
    assert (view["remote_addr"], view["scheme"], view["x_forwarded_proto"]) == (
        "198.51.100.22",
        "https",
        "https",
    )
    view = _ask(flask_example, "127.0.0.4", encode_v2(command=Command.LOCAL) + request("/"))
    assert view["remote_addr"] == view["x_real_ip"] == "127.0.0.4"
    assert view["proxy_protocol"]["command"] == "LOCAL"
