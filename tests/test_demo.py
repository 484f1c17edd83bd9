"""The demo that README.md's first command runs: ``examples/demo_app.py`` served by
``proxyproto-mw serve`` behind ``examples/haproxy-demo.cfg`` (send-proxy-v2), on free ports.

A visitor's page and WebSocket show the visitor's own address, whatever loopback address it
comes from, never HAProxy's.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect as websocket_connect

from tests.clients import open_from
from tests.haproxy import HAProxy, ServerProcess, free_port, haproxy_available
from tests.servers import REPOSITORY, clean_environment

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it"),
]

EXAMPLES = REPOSITORY / "examples"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The demo as examples/demo.sh starts it; the port HAProxy listens on."""
    workdir = tmp_path_factory.mktemp("demo")
    app_port, front_port = free_port(), free_port()
    app = ServerProcess(
        [
            sys.executable, "-m", "proxyproto_mw.cli", "serve", "examples.demo_app:app",
            "--host", "127.0.0.1", "--port", str(app_port),
        ],
        workdir,
        [("127.0.0.1", app_port)],
        name="demo-app",
        start_timeout=15.0,
        cwd=REPOSITORY,
        env=clean_environment({"PROXYPROTO_TRUSTED": "127.0.0.1"}),
    )  # fmt: skip
    config = (
        (EXAMPLES / "haproxy-demo.cfg")
        .read_text()
        .replace("@FRONT_PORT@", str(front_port))
        .replace("@APP_PORT@", str(app_port))
    )
    with app, HAProxy(config, workdir):
        yield front_port
    assert "closing connection" not in app.output(), app.output()


@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.3"])
def test_page_and_whoami_show_the_visitor(front: int, source: str) -> None:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, trust_env=False, timeout=5) as client:
        page = client.get(f"http://127.0.0.1:{front}/")
        seen = client.get(f"http://127.0.0.1:{front}/whoami").json()
    assert page.status_code == 200
    assert f'<b id="http">{source}:' in page.text
    assert seen["client"].startswith(f"{source}:")
    assert seen["proxy_protocol"]["version"] == 2
    assert seen["proxy_protocol"]["peer"][0] == "127.0.0.1"


@pytest.mark.parametrize("source", ["127.0.0.4", "127.0.0.5"])
def test_websocket_shows_the_visitor(front: int, source: str) -> None:
    async def visit() -> dict[str, object]:
        sock = open_from(source, ("127.0.0.1", front))
        async with websocket_connect(
            f"ws://127.0.0.1:{front}/ws", sock=sock, proxy=None, open_timeout=5
        ) as websocket:
            seen: dict[str, object] = json.loads(await websocket.recv())
            await websocket.send("bye")
            return seen

    seen = asyncio.run(asyncio.wait_for(visit(), 15))
    assert str(seen["client"]).startswith(f"{source}:")
    assert seen["scheme"] == "ws"
