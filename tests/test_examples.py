"""The examples, started as their files say, checked end to end through a real balancer.

- ``examples/fastapi_app.py`` served as its docstring says: ``uvicorn ... --http
  proxyproto_mw.uvicorn:HttpToolsProtocol`` (through :func:`proxyproto_mw.testing.serve_uvicorn`)
  and ``proxyproto-mw serve ... --ssl-keyfile ... --ssl-certfile ...``;
- ``examples/haproxy.cfg`` and ``examples/nginx-stream.conf`` in front of both, from a copy
  of each file with loopback addresses and free ports in place of ``:80``, ``:443`` and the
  10.0.1.x servers (the second server of each backend removed);
- ``examples/flask_app.py`` run with ``python``, reached with ``curl --haproxy-protocol``;
- ``examples/aws.md``: each ``proxyproto-mw aws`` command it shows, run with ``--dry-run``,
  prints the AWS CLI commands the file lists next to it.

Every client binds its own loopback address, which differs from the balancer's, so the
address the app reports can only have come from the header.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxyproto_mw import TrustPolicy, encode_v1, encode_v2
from proxyproto_mw.testing import ServedUvicorn, serve_uvicorn
from tests.apps import app as describing_app
from tests.clients import WARNING, request, send_and_assert_closed_silently
from tests.haproxy import HAProxy, ServerProcess, free_port, haproxy_available, haproxy_stats
from tests.servers import REPOSITORY, AppServer, run_to_exit

pytestmark = pytest.mark.timeout(90)

EXAMPLES = REPOSITORY / "examples"
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@dataclass
class Apps:
    """``examples/fastapi_app.py`` twice: plain HTTP (uvicorn) and TLS after the header
    (``proxyproto-mw serve``), both trusting headers from 127.0.0.1 only."""

    http: ServedUvicorn
    https: AppServer
    certificate: Path

    def outputs(self) -> str:
        """Both servers' logs."""
        return self.http.output() + self.https.output()


@pytest.fixture(scope="module")
def apps(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[Apps]:
    key, cert = certificate
    port = free_port()
    https = AppServer(
        [
            sys.executable, "-m", "proxyproto_mw.cli", "serve", "examples.fastapi_app:app",
            "--host", "127.0.0.1", "--port", str(port),
            "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
        ],
        tmp_path_factory.mktemp("fastapi-tls"),
        host="127.0.0.1",
        port=port,
        name="fastapi-tls",
        env={"PROXYPROTO_TRUSTED": "127.0.0.1"},
    )  # fmt: skip
    with (
        serve_uvicorn("examples.fastapi_app:app", env={"PYTHONPATH": str(REPOSITORY)}) as http,
        https,
    ):
        yield Apps(http, https, cert)
    output = http.output() + https.output()
    assert "Traceback" not in output, output


def on_loopback(config: str, replacements: dict[str, str]) -> str:
    """A copy of an example configuration with each ``old: new`` of ``replacements`` made
    (each ``old`` must be there) and the lines naming the second server (10.0.1.11)
    removed; no 10.0.1.x server may be left."""
    config = "".join(line for line in config.splitlines(True) if "10.0.1.11:" not in line)
    for old, new in replacements.items():
        assert old in config, f"{old!r} is not in the example any more"
        config = config.replace(old, new)
    assert not re.search(r"^[^#]*10\.0\.1\.", config, re.MULTILINE), config
    return config


def https_client(apps: Apps, source: str) -> httpx.Client:
    """An HTTPS client from ``source`` that verifies the app's self-signed certificate."""
    context = ssl.create_default_context(cafile=str(apps.certificate))
    context.check_hostname = False  # issued to localhost; we connect to 127.0.0.1
    transport = httpx.HTTPTransport(local_address=source, verify=context)
    return httpx.Client(transport=transport, trust_env=False, timeout=5)


def plain_client(source: str) -> httpx.Client:
    """An HTTP client whose connections come from ``source``."""
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(transport=transport, trust_env=False, timeout=5)


def assert_seen_through(
    apps: Apps, front: tuple[int, int], version: int, sources: tuple[str, str]
) -> None:
    """Through the balancer's two ports, each client is seen with its own address."""
    with plain_client(sources[0]) as client:
        seen = client.get(f"http://127.0.0.1:{front[0]}/").json()
    assert seen["client"][0] == sources[0]
    assert seen["scheme"] == "http"
    assert seen["x_real_ip"] == sources[0]
    assert seen["proxy_protocol"]["version"] == version
    assert seen["proxy_protocol"]["peer"][0] == "127.0.0.1"
    with https_client(apps, sources[1]) as client:
        seen = client.get(f"https://127.0.0.1:{front[1]}/").json()
    assert seen["client"][0] == sources[1]
    assert seen["scheme"] == "https"
    assert seen["proxy_protocol"]["version"] == version
    assert seen["proxy_protocol"]["tls"] is True


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
def test_haproxy_cfg_in_front_of_the_fastapi_app(apps: Apps, tmp_path: Path) -> None:
    front = (free_port(), free_port())
    config = on_loopback(
        (EXAMPLES / "haproxy.cfg").read_text(),
        {
            "bind :80\n": f"bind 127.0.0.1:{front[0]}\n",
            "bind :443\n": f"bind 127.0.0.1:{front[1]}\n",
            "10.0.1.10:8000": f"127.0.0.1:{apps.http.port}",
            "10.0.1.10:8443": f"127.0.0.1:{apps.https.port}",
        },
    )
    config = config.replace("global\n", f"global\n    stats socket {tmp_path}/stats.sock\n", 1)
    mark = apps.https.mark()
    with HAProxy(config, tmp_path) as haproxy:
        assert_seen_through(apps, front, 2, ("127.0.0.2", "127.0.0.4"))
        # The health checks of both backends pass: HTTP, and HTTP over TLS after the header.
        deadline = time.monotonic() + 15
        while True:
            stats = haproxy_stats(tmp_path / "stats.sock")
            states = [stats[(name, "app1")]["check_status"] for name in ("app_http", "app_https")]
            if states == ["L7OK", "L7OK"]:
                break
            assert time.monotonic() < deadline, f"health checks: {states}"
            time.sleep(0.2)
        output = haproxy.output()
    assert "[ALERT]" not in output, output
    assert " is DOWN" not in output, output
    assert mark.lines(WARNING) == []
    assert WARNING not in apps.http.output()


@pytest.mark.skipif(
    shutil.which("nginx") is None or not NGINX_STREAM_MODULE.exists(),
    reason="nginx's stream module is not installed (nginx-light libnginx-mod-stream); CI has it",
)
def test_nginx_stream_conf_in_front_of_the_fastapi_app(apps: Apps, tmp_path: Path) -> None:
    front = (free_port(), free_port())
    config = on_loopback(
        (EXAMPLES / "nginx-stream.conf").read_text(),
        {
            "listen 80;": f"listen 127.0.0.1:{front[0]};",
            "listen 443;": f"listen 127.0.0.1:{front[1]};",
            "10.0.1.10:8000": f"127.0.0.1:{apps.http.port}",
            "10.0.1.10:8443": f"127.0.0.1:{apps.https.port}",
        },
    )
    config_path = tmp_path / "nginx.conf"
    config_path.write_text(config)
    nginx = shutil.which("nginx")
    assert nginx is not None
    directives = "daemon off; pid nginx.pid;"
    if os.geteuid() == 0:
        directives += " user root;"
    argv = [nginx, "-c", str(config_path), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log")]
    server = ServerProcess(
        [*argv, "-g", directives],
        tmp_path,
        [("127.0.0.1", front[0]), ("127.0.0.1", front[1])],
        name="nginx",
    )
    mark = apps.https.mark()
    with server:
        assert_seen_through(apps, front, 1, ("127.0.0.2", "127.0.0.4"))
    assert mark.lines(WARNING) == []
    errors = (tmp_path / "error.log").read_text()
    assert "[emerg]" not in errors and "[alert]" not in errors, errors


def test_flask_app_as_its_docstring_says(tmp_path: Path) -> None:
    """``python examples/flask_app.py`` with ``PORT`` and ``PROXYPROTO_TRUSTED``, then
    ``curl --haproxy-protocol``: curl's v1 line carries its own socket's address."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed; CI installs it")
    port = free_port()
    flask = AppServer(
        [sys.executable, "examples/flask_app.py"],
        tmp_path,
        host="127.0.0.1",
        port=port,
        name="flask",
        env={"PORT": str(port), "PROXYPROTO_TRUSTED": "127.0.0.2"},
    )
    with flask:
        curl = subprocess.run(
            [
                "curl", "-s", "--max-time", "5", "--haproxy-protocol", "--interface", "127.0.0.2",
                "-H", "X-Forwarded-For: 6.6.6.6", f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )  # fmt: skip
        mark = flask.mark()
        # 127.0.0.3 is not trusted: its header closes the connection, with one warning.
        refused = subprocess.run(
            [
                "curl", "-s", "--max-time", "5", "--haproxy-protocol", "--interface", "127.0.0.3",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            timeout=15,
            check=False,
        )  # fmt: skip
        mark.wait_for(rf"{WARNING} 127\.0\.0\.3:\d+: .*not trusted")
    seen = httpx.Response(200, content=curl.stdout.encode()).json()
    assert seen["remote_addr"] == "127.0.0.2"
    assert seen["x_real_ip"] == "127.0.0.2"
    assert seen["x_forwarded_for"] == "6.6.6.6, 127.0.0.2"
    assert seen["proxy_protocol"]["version"] == 1
    assert seen["proxy_protocol"]["peer"][0] == "127.0.0.2"  # curl sent its own address
    assert refused.stdout == b""


# --- AWS ------------------------------------------------------------------------------------

_COMMAND_BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def aws_examples() -> list[tuple[str, list[str]]]:
    """Each ``proxyproto-mw aws ...`` line of ``examples/aws.md`` and the ``aws ...`` lines
    of the same code block: what ``--dry-run`` must print."""
    text = (EXAMPLES / "aws.md").read_text()
    found: list[tuple[str, list[str]]] = []
    for block in _COMMAND_BLOCK.findall(text):
        logical = block.replace("\\\n", " ").splitlines()
        ours = [line.strip() for line in logical if line.strip().startswith("proxyproto-mw aws")]
        theirs = [line.strip() for line in logical if line.strip().startswith("aws ")]
        found.extend((command, theirs) for command in ours)
    return found


def test_aws_md_has_commands() -> None:
    assert len(aws_examples()) >= 3


@pytest.mark.parametrize(
    ("command", "expected"), aws_examples(), ids=[c for c, _ in aws_examples()]
)
def test_aws_md_commands_print_what_it_shows(command: str, expected: list[str]) -> None:
    argv = shlex.split(command)
    assert argv[:2] == ["proxyproto-mw", "aws"]
    done = run_to_exit([sys.executable, "-m", "proxyproto_mw.cli", *argv[1:], "--dry-run"])
    assert done.returncode == 0, done.stderr
    printed = [line.strip() for line in done.stdout.splitlines() if line.startswith("aws ")]
    assert printed == [" ".join(line.split()) for line in expected], done.stdout


# --- README's troubleshooting table ----------------------------------------------------------

README = (REPOSITORY / "README.md").read_text()
TROUBLESHOOTING = README[README.index("### Troubleshooting") :]


def test_troubleshooting_quotes_what_the_server_logs(apps: Apps) -> None:
    """Each log line README.md's troubleshooting table quotes is what a server writes when
    the case it names happens."""
    policy = TrustPolicy(trusted="127.0.0.1", versions=[2], timeout=3)
    with serve_uvicorn(describing_app, policy=policy) as served:
        with pytest.raises(httpx.RemoteProtocolError):
            served.request(source="127.0.0.2")  # a header from a peer that is not trusted
        with pytest.raises(httpx.RemoteProtocolError):
            served.request(header=None)  # a trusted peer without a header
        with pytest.raises(httpx.RemoteProtocolError):
            served.request(header=encode_v1(("192.0.2.1", 1), ("192.0.2.2", 2)))
        with pytest.raises(httpx.RemoteProtocolError):
            served.request(header=b"PROXY TCP4 192.0.2.1 192.0.2.2 1 080\r\n")
        with served.connect(encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2))[:10]) as silent:
            silent.settimeout(10)
            assert silent.recv(1) == b""  # closed after the header timeout
        output = served.output()
    mark = apps.https.mark()
    # A header, then plain HTTP where TLS must follow.
    header = encode_v1(("192.0.2.1", 1), ("127.0.0.1", apps.https.port))
    send_and_assert_closed_silently(apps.https.address, "127.0.0.1", header + request())
    mark.wait_for("TLS handshake after the PROXY header failed")
    output += mark.text() + apps.http.output()  # the start-up line of a uvicorn process
    for quoted in (
        "PROXY protocol on",
        "closing connection from",
        "which is not trusted: it is not believed",
        "no PROXY header from trusted peer 127.0.0.1 (mode is require;",
        "v1 PROXY header, but only v2 accepted",
        "v1 header has an invalid port '080'",
        "no complete PROXY header within 3 s (10 bytes received)",
        "TLS handshake after the PROXY header failed",
    ):
        assert quoted in output, f"{quoted!r} not logged:\n{output}"
        assert quoted.replace("127.0.0.1", "10.0.0.12").split(" 3 s")[0] in TROUBLESHOOTING, (
            f"{quoted!r} not in README's troubleshooting"
        )
