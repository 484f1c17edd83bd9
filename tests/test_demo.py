"""The demo that README.md's first command runs: ``bash examples/demo.sh`` itself, on free
ports (``FRONT_PORT``, ``APP_PORT``), in this test's virtualenv.

The script starts ``examples/demo_app.py`` with ``proxyproto-mw serve`` behind HAProxy
(``examples/haproxy-demo.cfg``, send-proxy-v2). A visitor's page and WebSocket show the
visitor's own address, whatever loopback address it comes from, never HAProxy's; the
script's output (its own lines, HAProxy's and the app's) holds no ``[ALERT]``, no
traceback and no refused connection, also after visitors close their WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import connect as websocket_connect

from examples.demo_app import app as demo_app
from proxyproto_mw.testing import ProxyProtocolTransport, proxied_test_client, proxy_header
from tests.clients import WARNING, open_from
from tests.example_scripts import Script, run_script
from tests.haproxy import free_port, haproxy_available

pytestmark = pytest.mark.timeout(90)

needs_haproxy = pytest.mark.skipif(
    not haproxy_available(), reason="haproxy is not installed; CI installs it"
)

READY = "Ctrl-C stops the demo."


@dataclass
class Demo:
    """The running demo script and the port HAProxy listens on."""

    script: Script
    front: int


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``bash examples/demo.sh`` with free ports, until it says it is ready."""
    front_port, app_port = free_port(), free_port()
    script = run_script(
        ["bash", "examples/demo.sh"],
        tmp_path_factory.mktemp("demo") / "demo.log",
        {"FRONT_PORT": str(front_port), "APP_PORT": str(app_port)},
    )
    try:
        script.wait_for(READY, timeout=60)
        yield Demo(script, front_port)
    finally:
        script.stop()
    output = script.output()
    assert "[ALERT]" not in output, output
    assert "Traceback" not in output, output


@needs_haproxy
def test_the_script_prints_the_address_of_its_own_client(demo: Demo) -> None:
    output = demo.script.output()
    shown = output.split("from source address 127.0.0.2, the app sees:", 1)[1]
    seen = json.loads(next(line for line in shown.splitlines() if line.startswith("{")))
    assert seen["client"].startswith("127.0.0.2:")
    assert seen["proxy_protocol"]["peer"][0] == "127.0.0.1"
    assert f"Open http://127.0.0.1:{demo.front}/" in output


@needs_haproxy
def test_start_up_prints_no_alert(demo: Demo) -> None:
    output = demo.script.output()
    assert "[ALERT]" not in output, output
    assert "no server available" not in output, output
    assert WARNING not in output, output


@needs_haproxy
@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.3"])
def test_page_and_whoami_show_the_visitor(demo: Demo, source: str) -> None:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, trust_env=False, timeout=5) as client:
        page = client.get(f"http://127.0.0.1:{demo.front}/")
        seen = client.get(f"http://127.0.0.1:{demo.front}/whoami").json()
    assert page.status_code == 200
    assert f'<b id="http">{source}:' in page.text
    assert seen["client"].startswith(f"{source}:")
    assert seen["proxy_protocol"]["version"] == 2
    assert seen["proxy_protocol"]["peer"][0] == "127.0.0.1"


@needs_haproxy
@pytest.mark.parametrize("closing", ["close-frame", "tcp-close"])
def test_closing_the_websocket_logs_no_traceback(demo: Demo, closing: str) -> None:
    """A visitor who closes the page (a close frame) or loses the connection (no close
    frame) ends the WebSocket normally: the app logs no ``WebSocketDisconnect``."""
    source = "127.0.0.4" if closing == "close-frame" else "127.0.0.5"

    async def visit() -> dict[str, object]:
        sock = open_from(source, ("127.0.0.1", demo.front))
        websocket = await websocket_connect(
            f"ws://127.0.0.1:{demo.front}/ws", sock=sock, proxy=None, open_timeout=5
        )
        seen: dict[str, object] = json.loads(await websocket.recv())
        if closing == "close-frame":
            await websocket.close()
        else:
            websocket.transport.abort()
        return seen

    seen = asyncio.run(asyncio.wait_for(visit(), 15))
    assert str(seen["client"]).startswith(f"{source}:")
    assert seen["scheme"] == "ws"
    # uvicorn logs nothing when a WebSocket ends well; the old handler's traceback came
    # within milliseconds of the close.
    time.sleep(1.0)
    output = demo.script.output()
    assert "Traceback" not in output, output
    assert "WebSocketDisconnect" not in output, output


def test_the_app_in_process_shows_the_header_client() -> None:
    """The demo app alone, with ``proxyproto_mw.testing``: what it shows comes from the
    header (IPv6 and TLVs included), not from a socket."""
    header = proxy_header(("2001:db8::5", 4242), ("2001:db8::1", 443), tlvs=[(0x05, b"id-7")])
    transport = ProxyProtocolTransport(demo_app, header)
    with httpx.Client(transport=transport, base_url="http://demo") as client:
        page = client.get("/")
        seen = client.get("/whoami").json()
    assert '<b id="http">2001:db8::5:4242</b>' in page.text
    assert seen["proxy_protocol"]["unique_id"] == b"id-7".hex()
    assert seen["proxy_protocol"]["tlvs"] == {"5": b"id-7".hex()}
    with (
        proxied_test_client(demo_app, header) as client,
        client.websocket_connect("/ws") as websocket,
    ):
        assert json.loads(websocket.receive_text())["client"] == "2001:db8::5:4242"
