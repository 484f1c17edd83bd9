"""WSGI apps that show what a server told them, for end-to-end tests of the blocking adapters.

``app`` answers every request with JSON describing its environ (the client and server
addresses, the scheme, the path, the ``proxy_protocol`` dict) and the request body's
length and SHA-256. ``flask_app`` answers with what Flask's ``request`` makes of the
same environ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, request

from tests.apps import jsonable

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["app", "describe", "flask_app"]


def describe(environ: WSGIEnvironment, body: bytes = b"") -> dict[str, object]:
    """What the server put in ``environ``, as plain JSON values."""
    return {
        "remote_addr": environ.get("REMOTE_ADDR"),
        "remote_port": environ.get("REMOTE_PORT"),
        "server_name": environ.get("SERVER_NAME"),
        "server_port": environ.get("SERVER_PORT"),
        "scheme": environ.get("wsgi.url_scheme"),
        "path": environ.get("PATH_INFO"),
        "method": environ.get("REQUEST_METHOD"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "proxy_protocol": jsonable(environ.get("proxy_protocol")),
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The test app: every request described as JSON."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    payload = json.dumps(describe(environ, body)).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
    )
    return [payload]


flask_app = Flask(__name__)


@flask_app.route("/", defaults={"path": ""})
@flask_app.route("/<path:path>")
def flask_view(path: str) -> dict[str, Any]:
    """What Flask's request says about the client."""
    return {
        "remote_addr": request.remote_addr,
        "scheme": request.scheme,
        "host_url": request.host_url,
        "path": "/" + path,
        "proxy_protocol": jsonable(request.environ.get("proxy_protocol")),
    }
