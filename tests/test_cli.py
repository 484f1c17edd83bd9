"""``proxyproto-mw serve`` as a user runs it: its options, its errors, and TLS after the header.

Every server is ``python -m proxyproto_mw.cli serve tests.apps:app ...`` in a subprocess on
a free loopback port; requests come from distinct loopback sources, with curl
``--haproxy-protocol`` where a user would try it.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from proxyproto_mw import __version__, encode_v1
from tests.clients import HttpReader, open_from, request
from tests.haproxy import free_port
from tests.servers import AppServer, run_to_exit

SERVE = [sys.executable, "-m", "proxyproto_mw.cli", "serve"]
CLIENT = ("198.51.100.22", 35646)


def serve_argv(port: int, *options: str) -> list[str]:
    """``proxyproto-mw serve tests.apps:app`` on ``port`` with ``options``."""
    return [*SERVE, "tests.apps:app", "--host", "127.0.0.1", "--port", str(port), *options]


class Serve(AppServer):
    """``proxyproto-mw serve`` in a subprocess."""

    def __init__(self, workdir: Path, *options: str, env: dict[str, str] | None = None) -> None:
        port = free_port()
        super().__init__(
            serve_argv(port, *options),
            workdir,
            host="127.0.0.1",
            port=port,
            name=f"serve-{port}",
            env={"PROXYPROTO_TRUSTED": "127.0.0.0/8", **(env or {})},
        )


def tls_client_context() -> ssl.SSLContext:
    """A client context that accepts the tests' self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ask_over_tls(address: tuple[str, int], source: str) -> dict[str, object]:
    """Send a v1 header in clear, then a request over TLS on the same connection; the scope
    the app saw."""
    sock = open_from(source, address)
    with sock:
        sock.sendall(encode_v1(CLIENT, ("203.0.113.7", 443)))
        with tls_client_context().wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(request("/over-tls", headers="Connection: close\r\n"))
            scope: dict[str, object] = HttpReader(tls).response().json()
    return scope


# --- options and errors ------------------------------------------------------------------


def test_version_names_this_package_and_uvicorn() -> None:
    completed = run_to_exit([*SERVE, "--version"])
    assert completed.returncode == 0
    assert completed.stdout.startswith(f"proxyproto-mw {__version__} (uvicorn ")


def test_help_offers_only_the_parsers_that_read_a_header() -> None:
    completed = run_to_exit([*SERVE, "--help"])
    assert completed.returncode == 0
    assert "[auto|h11|httptools]" in completed.stdout
    assert "zttp" not in completed.stdout
    assert "--http2" not in completed.stdout
    assert "default: require" in completed.stdout


@pytest.mark.parametrize(
    ("options", "env", "message"),
    [
        (["--proxy-trusted", "10.0.0.300"], {}, "--proxy-trusted: '10.0.0.300'"),
        ([], {"PROXYPROTO_TRUSTED": "10.0.0.300"}, "PROXYPROTO_TRUSTED: '10.0.0.300'"),
        (["--proxy-trusted", " , "], {}, "--proxy-trusted is empty"),
        (["--proxy-timeout", "1"], {}, "--proxy-timeout: 1.0 must be a number of seconds"),
        ([], {"PROXYPROTO_TIMEOUT": "1"}, "PROXYPROTO_TIMEOUT: 1.0 must be"),
        ([], {"PROXYPROTO_MODE": "sometimes"}, "PROXYPROTO_MODE: 'sometimes' is not one of"),
        (["--proxy-mode", "sometimes"], {}, "Invalid value for '--proxy-mode'"),
        (["--http", "zttp"], {}, "Invalid value for '--http'"),
        (["--ssl-keyfile", "key.pem"], {}, "--ssl-keyfile needs --ssl-certfile"),
    ],
)
def test_a_bad_setting_stops_serve_naming_it(
    options: list[str], env: dict[str, str], message: str
) -> None:
    completed = run_to_exit(serve_argv(free_port(), *options), env=env)
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_flag_overrides_its_variable(tmp_path: Path) -> None:
    # The variable alone would refuse to start; the flag replaces it.
    with Serve(tmp_path, "--proxy-timeout", "5", env={"PROXYPROTO_TIMEOUT": "1"}) as server:
        sock = open_from("127.0.0.2", server.address)
        with sock:
            sock.sendall(encode_v1(CLIENT, ("203.0.113.7", 80)) + request("/"))
            scope = HttpReader(sock).response().json()
    assert scope["client"] == list(CLIENT)


# --- TLS after the header -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[Serve]:
    key, cert = certificate
    with Serve(
        tmp_path_factory.mktemp("serve-tls"), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)
    ) as server:
        yield server


def test_tls_after_the_header_shows_the_header_client(tls_server: Serve) -> None:
    scope = ask_over_tls(tls_server.address, "127.0.0.2")
    assert scope["client"] == list(CLIENT)
    assert scope["scheme"] == "https"


def test_tls_is_announced_as_https(tls_server: Serve) -> None:
    assert f"Uvicorn running on https://127.0.0.1:{tls_server.port}" in tls_server.stderr()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_haproxy_protocol_over_https(tls_server: Serve) -> None:
    completed = subprocess.run(
        [
            "curl", "-sk", "--max-time", "10", "--haproxy-protocol", "--interface", "127.0.0.3",
            f"https://127.0.0.1:{tls_server.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )  # fmt: skip
    scope = json.loads(completed.stdout)
    # curl's header carries the real socket addresses: its own source.
    assert scope["client"][0] == "127.0.0.3"
    assert scope["scheme"] == "https"


def test_plain_http_on_the_tls_port_is_refused_saying_so(tls_server: Serve) -> None:
    mark = tls_server.mark()
    sock = open_from("127.0.0.4", tls_server.address)
    with sock:
        sock.sendall(request("/"))
        sock.settimeout(8)
        assert sock.recv(100) == b""  # closed without a byte written
    (line,) = mark.wait_for("127.0.0.4")
    assert "no PROXY header" in line
    assert "TLS handshake" not in line


def test_plain_http_from_an_untrusted_peer_fails_tls_without_blaming_a_header(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    key, cert = certificate
    with Serve(
        tmp_path,
        "--proxy-trusted", "127.0.0.1",
        "--ssl-keyfile", str(key),
        "--ssl-certfile", str(cert),
    ) as server:  # fmt: skip
        mark = server.mark()
        sock = open_from("127.0.0.5", server.address)
        with sock:
            sock.sendall(request("/"))
            sock.settimeout(8)
            assert sock.recv(100) == b""
        (line,) = mark.wait_for("127.0.0.5")
    assert "TLS handshake (the connection came without a PROXY header) failed" in line
    assert "after the PROXY header" not in line


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(child) for child in children)
    return found


def _wait_for_children(pid: int, count: int, timeout: float = 15.0) -> Sequence[int]:
    deadline = time.monotonic() + timeout
    while True:
        children = _children(pid)
        if len(children) >= count or time.monotonic() > deadline:
            return children
        time.sleep(0.1)


def test_tls_with_workers_keeps_the_key_password_out_of_every_environment(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    key, cert = certificate
    protected = tmp_path / "protected-key.pem"
    password = "correct horse battery staple"
    subprocess.run(
        [
            "openssl", "rsa", "-aes256", "-in", str(key), "-out", str(protected),
            "-passout", f"pass:{password}",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )  # fmt: skip
    with Serve(
        tmp_path,
        "--workers", "2",
        "--ssl-keyfile", str(protected),
        "--ssl-certfile", str(cert),
        "--ssl-keyfile-password", password,
    ) as server:  # fmt: skip
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            assert ask_over_tls(server.address, source)["client"] == list(CLIENT)
        processes = [server.pid, *_wait_for_children(server.pid, 2)]
        assert len(processes) >= 3
        for pid in processes:
            assert password.encode() not in _environ(pid)


# --- without uvicorn ----------------------------------------------------------------------

WITHOUT_UVICORN = [
    sys.executable,
    "-c",
    "import sys; sys.modules['uvicorn'] = None; from proxyproto_mw.cli import main; main()",
]
"""``proxyproto-mw`` where uvicorn cannot be imported (``pip install proxyproto-mw``)."""


def test_without_uvicorn_help_lists_every_command() -> None:
    completed = run_to_exit([*WITHOUT_UVICORN, "--help"])
    assert completed.returncode == 0
    for command in ("aws", "inspect", "probe"):
        assert f"  {command} " in completed.stdout
    assert "serve    (needs uvicorn: pip install 'proxyproto-mw[uvicorn]')" in completed.stdout


def test_without_uvicorn_serve_says_what_to_install() -> None:
    completed = run_to_exit([*WITHOUT_UVICORN, "serve", "tests.apps:app"])
    assert completed.returncode == 2
    assert "serve needs uvicorn: pip install 'proxyproto-mw[uvicorn]'" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_without_uvicorn_inspect_runs() -> None:
    completed = run_to_exit([*WITHOUT_UVICORN, "inspect", "--help"])
    assert completed.returncode == 0
    assert "--port" in completed.stdout
