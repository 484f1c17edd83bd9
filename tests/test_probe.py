"""``proxyproto-mw probe`` run as a user runs it, against this project's uvicorn protocol,
nginx with ``listen ... proxy_protocol``, a backend that refuses, one that never answers
and one that is not there. Every URL is a loopback one; the claimed addresses exist only
inside the headers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.haproxy import Recorder, ServerProcess, free_port
from tests.servers import REPOSITORY, Uvicorn, clean_environment

COMMAND = [sys.executable, "-m", "proxyproto_mw.cli", "probe"]


def probe(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``proxyproto-mw probe ARGUMENTS``, run to its exit."""
    return subprocess.run(
        [*COMMAND, *arguments],
        cwd=REPOSITORY,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def body_json(stdout: str) -> dict[str, Any]:
    """The JSON body after the response head that probe printed."""
    _, _, body = stdout.partition("\n\n")
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    """uvicorn with our httptools protocol, believing headers from 127.0.0.1 only."""
    with Uvicorn(
        tmp_path_factory.mktemp("probe-uvicorn"), env={"PROXYPROTO_TRUSTED": "127.0.0.1"}
    ) as server:
        yield server


@pytest.mark.parametrize("version", ["1", "2"])
def test_the_app_sees_the_claimed_client(backend: Uvicorn, version: str) -> None:
    result = probe(f"{backend.url}/who", "--version", version, "--client", "192.0.2.33:4444")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK\n")
    seen = body_json(result.stdout)
    assert seen["client"] == ["192.0.2.33", 4444]
    assert seen["server"] == ["198.51.100.10", backend.port]
    assert seen["path"] == "/who"
    assert seen["proxy_protocol"]["version"] == int(version)
    assert f"> PROXY v{version} header" in result.stderr


def test_v2_tlvs_and_ipv6_client(backend: Uvicorn) -> None:
    result = probe(
        backend.url,
        "--client", "[2001:db8::7]:50000",
        "--server", "[2001:db8::1]:443",
        "--tlv", "authority=example.com",
        "--tlv", "ssl=TLSv1.3",
        "--tlv", "aws=vpce-0123456789abcdef0",
        "--crc32c",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = body_json(result.stdout)
    assert seen["client"] == ["2001:db8::7", 50000]
    extension = seen["proxy_protocol"]
    assert extension["version"] == 2
    assert extension["authority"] == "example.com"
    assert extension["ssl"]["version"] == "TLSv1.3"
    assert extension["aws_vpce_id"] == "vpce-0123456789abcdef0"
    assert "3" in extension["tlvs"]  # the CRC32C, verified by the server's decoder


def test_local_health_check_keeps_the_socket_address(backend: Uvicorn) -> None:
    result = probe(f"{backend.url}/health", "--local")
    assert result.returncode == 0, result.stderr
    seen = body_json(result.stdout)
    assert seen["proxy_protocol"]["command"] == "LOCAL"
    assert seen["client"][0] == "127.0.0.1"


def test_websocket_handshake_and_messages(backend: Uvicorn) -> None:
    ws_url = backend.url.replace("http://", "ws://") + "/ws"
    result = probe(ws_url, "--version", "2", "--send", "hello", "--receive", "2")
    assert result.returncode == 0, result.stderr
    head, _, rest = result.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 101 Switching Protocols\n")
    lines = rest.splitlines()
    assert lines[0] == "WebSocket handshake accepted"
    assert lines[1] == "> hello"
    greeting = json.loads(lines[2].removeprefix("< "))
    assert greeting["type"] == "websocket"
    assert greeting["client"] == ["203.0.113.7", 54321]
    assert lines[3] == "< hello"


def test_https_after_the_header_to_serve(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    """``proxyproto-mw serve --ssl-*`` reads the header in clear, then TLS: probe's https."""
    key, cert = certificate
    port = free_port()
    argv = [sys.executable, "-m", "proxyproto_mw.cli", "serve", "tests.apps:app", "--port",
            str(port), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]  # fmt: skip
    with Uvicorn(tmp_path, argv=argv, port=port, name="serve-tls"):
        result = probe(f"https://127.0.0.1:{port}/secure", "-k", "--client", "192.0.2.5:443")
    assert result.returncode == 0, result.stderr
    seen = body_json(result.stdout)
    assert seen["client"] == ["192.0.2.5", 443]
    assert seen["scheme"] == "https"


def test_refusing_backend_exits_1(tmp_path: Path) -> None:
    """A peer the backend does not trust sends a header: closed without a byte, exit 1."""
    with Uvicorn(tmp_path, env={"PROXYPROTO_TRUSTED": "127.0.0.2"}) as server:
        mark = server.mark()
        result = probe(server.url)
        mark.wait_for(r"closing connection from 127\.0\.0\.1:\d+: .*127\.0\.0\.1")
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert "the backend closed the connection without an answer" in result.stderr


def test_silent_backend_exits_3_after_receiving_the_header() -> None:
    with Recorder(timeout=10) as recorder:
        result = probe(f"http://127.0.0.1:{recorder.port}/x", "--timeout", "1")
        (recording,) = recorder.wait_for(1)
    assert result.returncode == 3, result
    assert "no answer within 1 s" in result.stderr
    assert recording.data.startswith(
        f"PROXY TCP4 203.0.113.7 198.51.100.10 54321 {recorder.port}\r\n"
        f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{recorder.port}\r\n".encode()
    )


def test_nothing_listening_exits_4() -> None:
    result = probe(f"http://127.0.0.1:{free_port()}/")
    assert result.returncode == 4
    assert "cannot connect to 127.0.0.1:" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ftp://127.0.0.1/"], "the scheme must be http, https, ws or wss"),
        (["http://127.0.0.1/", "--client", "203.0.113.7"], "is not ADDR:PORT"),
        (["http://127.0.0.1/", "--client", "example.com:80"], "is not ADDR:PORT"),
        (["http://127.0.0.1/", "--tlv", "nosuch=1"], "unknown TLV 'nosuch'"),
        (["http://127.0.0.1/", "--version", "1", "--tlv", "alpn=h2"], "need --version 2"),
        (["http://127.0.0.1/", "--server", "[::1]:80"], "both be IPv4 or both IPv6"),
        (["http://127.0.0.1/", "--send", "x"], "for ws:// and wss:// URLs"),
    ],
)
def test_usage_errors_exit_2(arguments: list[str], message: str) -> None:
    result = probe(*arguments)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help() -> None:
    result = probe("--help")
    assert result.returncode == 0
    assert "0 answered, 1 closed without an answer" in " ".join(result.stdout.split())


# --- nginx with listen ... proxy_protocol -------------------------------------------------------


def _nginx_config(http_port: int, https_port: int, certificate: tuple[Path, Path]) -> str:
    key, cert = certificate
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
{user}master_process off;
worker_processes 1;
pid nginx.pid;
error_log error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{http_port} proxy_protocol;
        listen 127.0.0.1:{https_port} ssl proxy_protocol;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        set_real_ip_from 127.0.0.0/8;
        real_ip_header proxy_protocol;
        return 200 "$remote_addr $proxy_protocol_addr\\n";
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[tuple[int, int]]:
    """nginx on two loopback ports (plain and TLS) that require the header: the ports."""
    executable = shutil.which("nginx")
    if executable is None:
        pytest.skip("nginx is not installed (tests/run.sh installs nginx-light)")
    workdir = tmp_path_factory.mktemp("nginx")
    ports = free_port(), free_port()
    config = workdir / "nginx.conf"
    config.write_text(_nginx_config(*ports, certificate))
    argv = [executable, "-c", str(config), "-p", f"{workdir}/", "-e", str(workdir / "error.log")]
    argv += ["-g", "daemon off;"]
    with ServerProcess(argv, workdir, [("127.0.0.1", port) for port in ports], name="nginx"):
        yield ports


@pytest.mark.parametrize("version", ["1", "2"])
def test_nginx_believes_the_claimed_client(nginx: tuple[int, int], version: str) -> None:
    result = probe(f"http://127.0.0.1:{nginx[0]}/", "--version", version)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK\n")
    assert result.stdout.endswith("\n\n203.0.113.7 203.0.113.7\n\n")


def test_nginx_https_after_the_header(nginx: tuple[int, int]) -> None:
    url = f"https://127.0.0.1:{nginx[1]}/"
    result = probe(url, "--insecure", "--client", "192.0.2.99:1234")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n\n192.0.2.99 192.0.2.99\n\n")
    unverified = probe(url)  # a self-signed certificate fails verification
    assert unverified.returncode == 4
    assert "TLS handshake after the header failed" in unverified.stderr


def test_nginx_local_header_keeps_the_socket_address(nginx: tuple[int, int]) -> None:
    """A LOCAL header carries no address: nginx uses the socket's, $proxy_protocol_addr is empty."""
    result = probe(f"http://127.0.0.1:{nginx[0]}/", "--local")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n\n127.0.0.1 \n\n")
