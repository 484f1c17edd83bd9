"""The chat example, run from its own files: ``examples/chat/gunicorn.conf.py`` behind
``examples/chat/haproxy.cfg``, on free ports instead of 8001 and 8081.

Two ``websockets`` clients, bound to 127.0.0.2 and 127.0.0.4, join through HAProxy (which
connects to gunicorn from 127.0.0.3); each receives the other's message stamped with the
sender's address, which gunicorn's worker took from HAProxy's PROXY v2 header. The example
runs one worker, as its configuration says: the room is in the worker's memory. The last
test runs ``bash examples/chat/run.sh`` itself, as README.md says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxyproto_mw import encode_v1, encode_v2
from tests.chat import assert_each_hears_the_other_stamped
from tests.clients import WARNING, assert_closed_silently, open_from, request
from tests.example_scripts import run_script
from tests.gunicorn_server import Gunicorn
from tests.haproxy import HAProxy, free_port, haproxy_available
from tests.servers import REPOSITORY

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for workers"),
]

EXAMPLE = REPOSITORY / "examples" / "chat"


@dataclass
class Chat:
    """The example's gunicorn and HAProxy, and where HAProxy listens."""

    gunicorn: Gunicorn
    haproxy: HAProxy
    front_port: int


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    """gunicorn started with the example's configuration, behind the example's HAProxy."""
    workdir = tmp_path_factory.mktemp("chat")
    app_port, front_port = free_port(), free_port()
    gunicorn = Gunicorn(
        workdir,
        port=app_port,
        workers=1,
        argv=[
            sys.executable, "-m", "gunicorn", "-c", str(EXAMPLE / "gunicorn.conf.py"),
            "--no-control-socket",
        ],
        env={"CHAT_BIND": f"127.0.0.1:{app_port}"},
        name="chat-gunicorn",
    )  # fmt: skip
    config = (
        (EXAMPLE / "haproxy.cfg")
        .read_text()
        .replace("@FRONT_PORT@", str(front_port))
        .replace("@APP_PORT@", str(app_port))
    )
    with gunicorn, HAProxy(config, workdir) as haproxy:
        yield Chat(gunicorn, haproxy, front_port)
    assert gunicorn.errors() == [], gunicorn.output()


def test_each_receives_the_other_message_stamped_with_the_sender_address(chat: Chat) -> None:
    url = f"ws://127.0.0.1:{chat.front_port}/ws"
    assert_each_hears_the_other_stamped(url, chat.front_port, ("127.0.0.2", "127.0.0.4"))


def test_the_page_and_the_health_check(chat: Chat) -> None:
    transport = httpx.HTTPTransport(local_address="127.0.0.5")
    with httpx.Client(transport=transport, trust_env=False, timeout=5) as client:
        page = client.get(f"http://127.0.0.1:{chat.front_port}/")
        health = client.get(f"http://127.0.0.1:{chat.front_port}/healthz")
    assert page.status_code == 200
    assert 'new WebSocket(scheme + location.host + "/ws")' in page.text
    assert (health.status_code, health.text) == (200, "ok")


def test_the_example_configuration_is_in_effect(chat: Chat) -> None:
    """The worker class of gunicorn.conf.py; v2 only, from HAProxy (127.0.0.3) only."""
    output = chat.gunicorn.output()
    assert "Using worker: proxyproto_mw.gunicorn.UvicornWorker" in output
    assert chat.gunicorn.worker_pids() == chat.gunicorn.booted()
    assert len(chat.gunicorn.worker_pids()) == 1
    # Reaching gunicorn directly, not through HAProxy: a v1 header is refused, and a v2
    # header from any address but HAProxy's is not believed.
    for source, header, reason in (
        ("127.0.0.3", encode_v1(("6.6.6.6", 1234), ("127.0.0.1", 80)), "but only v2 accepted"),
        ("127.0.0.1", encode_v2(("6.6.6.6", 1234), ("127.0.0.1", 80)), "--proxy-allow-from"),
    ):
        mark = chat.gunicorn.mark()
        with open_from(source, chat.gunicorn.address) as sock:
            sock.sendall(header + request())
            assert_closed_silently(sock)
        mark.wait_for(rf"{WARNING} {source}:\d+: .*{reason}")


def test_run_sh_as_readme_says(tmp_path: Path) -> None:
    """``bash examples/chat/run.sh`` (free ports): its two clients exchange a message, each
    stamped with its own address; no alert, no traceback, no refused connection."""
    script = run_script(
        ["bash", "examples/chat/run.sh"],
        tmp_path / "run.log",
        {"FRONT_PORT": str(free_port()), "APP_PORT": str(free_port())},
    )
    try:
        script.wait_for("Ctrl-C stops the example.", timeout=60)
    finally:
        script.stop()
    output = script.output()
    assert 'joined as {"you":"127.0.0.2"}' in output, output
    assert 'joined as {"you":"127.0.0.4"}' in output, output
    assert 'bob received {"from":"127.0.0.2","text":"hello from alice"}' in output, output
    for fault in ("[ALERT]", "Traceback", WARNING):
        assert fault not in output, output
