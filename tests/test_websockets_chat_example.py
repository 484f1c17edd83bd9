"""``examples/websockets_chat.py`` run as its docstring says, behind HAProxy ``send-proxy-v2``.

Two ``websockets`` clients, bound to 127.0.0.2 and 127.0.0.3, join through HAProxy; each
receives the other's message stamped with the sender's address, which the example took
from HAProxy's PROXY v2 header. HAProxy's health checks (``GET /healthz``, v2 ``LOCAL``)
pass before the clients join.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from proxyproto_mw import encode_v2
from tests.chat import assert_each_hears_the_other_stamped
from tests.clients import WARNING, request, send_and_assert_closed_silently
from tests.haproxy import (
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_defaults,
    wait_until_healthy,
)
from tests.servers import REPOSITORY, AppServer

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it"),
]

EXAMPLE = REPOSITORY / "examples" / "websockets_chat.py"


@dataclass
class Chat:
    """The example's server, and the port HAProxy listens on in front of it."""

    server: AppServer
    front_port: int


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    """``python examples/websockets_chat.py`` behind HAProxy with ``send-proxy-v2``."""
    workdir = tmp_path_factory.mktemp("websockets-chat")
    port, front_port = free_port(), free_port()
    server = AppServer(
        [sys.executable, str(EXAMPLE), "--host", "127.0.0.1", "--port", str(port)],
        workdir,
        host="127.0.0.1",
        port=port,
        name="websockets-chat",
        env={"PROXYPROTO_TRUSTED": "127.0.0.1"},
    )
    config = (
        haproxy_defaults(workdir)
        + f"""\
frontend chat
    bind 127.0.0.1:{front_port}
    default_backend chat
backend chat
    option httpchk GET /healthz
    server app 127.0.0.1:{port} send-proxy-v2 check inter 500ms
"""
    )
    with server, HAProxy(config, workdir):
        wait_until_healthy(workdir / "stats.sock", ["chat"])
        yield Chat(server, front_port)
    assert "Traceback" not in server.stderr(), server.stderr()


def test_each_receives_the_other_message_stamped_with_the_sender_address(chat: Chat) -> None:
    url = f"ws://127.0.0.1:{chat.front_port}/"
    assert_each_hears_the_other_stamped(url, chat.front_port, ("127.0.0.2", "127.0.0.3"))


def test_a_header_from_anyone_but_the_balancer_is_refused(chat: Chat) -> None:
    """Reaching the example directly from 127.0.0.2, a forged header is not believed."""
    mark = chat.server.mark()
    forged = encode_v2(("6.6.6.6", 1234), ("127.0.0.1", 80))
    send_and_assert_closed_silently(chat.server.address, "127.0.0.2", forged + request())
    mark.wait_for(rf"{WARNING} 127\.0\.0\.2:\d+: PROXY header from 127\.0\.0\.2, which is not")
