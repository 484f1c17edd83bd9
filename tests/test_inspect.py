"""``proxyproto-mw inspect`` run as a user runs it, fed by HAProxy, curl and raw sockets.

Each test starts the command as a subprocess on a free loopback port with ``--count``,
sends it connections, and reads what it printed once it exits by itself.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxyproto_mw import Command, TLVType, encode_v1, encode_v2
from tests.clients import BAD_INPUT, CLIENT, DESTINATION, local_address, open_from, request
from tests.haproxy import HAProxy, free_port, haproxy_available, haproxy_defaults, is_listening
from tests.servers import REPOSITORY, clean_environment, run_to_exit

COMMAND = [sys.executable, "-m", "proxyproto_mw.cli"]


class Inspector:
    """A running ``proxyproto-mw inspect``; :meth:`output` waits for it to exit."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.address = ("127.0.0.1", port)

    def output(self, timeout: float = 20.0) -> tuple[str, str, int]:
        """(stdout, stderr, exit status) once the command has exited by itself."""
        stdout, stderr = self.process.communicate(timeout=timeout)
        return stdout, stderr, self.process.returncode

    def objects(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The JSON objects printed (``--json``), after a clean exit."""
        stdout, stderr, code = self.output(timeout)
        assert code == 0, stderr
        return [json.loads(line) for line in stdout.splitlines()]


@contextmanager
def inspector(*options: str) -> Iterator[Inspector]:
    """``proxyproto-mw inspect --port P OPTIONS`` on a free loopback port, once it listens."""
    port = free_port()
    process = subprocess.Popen(
        [*COMMAND, "inspect", "--port", str(port), *options],
        cwd=REPOSITORY,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not is_listening("127.0.0.1", port):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "inspect did not listen within 15 s"
            time.sleep(0.05)
        yield Inspector(process, port)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def send(address: tuple[str, int], pieces: Sequence[bytes], *, shutdown: bool = False) -> None:
    """Send ``pieces`` with a pause between them (then close our side if ``shutdown``), and
    wait for inspect to close."""
    with open_from("127.0.0.1", address) as sock:
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(0.2)
            sock.sendall(piece)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"", "inspect wrote back"


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
def test_haproxy_send_proxy_and_send_proxy_v2_with_crc32c(tmp_path: Path) -> None:
    """What HAProxy 2.6 sends is shown: v1, then v2 with a valid CRC32C and a unique ID."""
    v1_port, v2_port = free_port(), free_port()
    with inspector("--json", "--count", "2") as shown:
        backend = f"127.0.0.1:{shown.address[1]}"
        config = (
            haproxy_defaults(tmp_path)
            + f"""\
frontend v1
    bind 127.0.0.1:{v1_port}
    default_backend v1
backend v1
    server inspect {backend} send-proxy
frontend v2
    bind 127.0.0.1:{v2_port}
    unique-id-format request-%rt
    default_backend v2
backend v2
    server inspect {backend} send-proxy-v2 proxy-v2-options crc32c,unique-id
"""
        )
        with HAProxy(config, tmp_path):
            clients = []
            for port in (v1_port, v2_port):
                with open_from("127.0.0.2", ("127.0.0.1", port)) as sock:
                    clients.append(local_address(sock))
                    sock.sendall(request("/through-haproxy"))
                    assert sock.recv(1) == b""
        v1, v2 = sorted(shown.objects(), key=lambda shown: shown["header"]["version"])
    for seen, client, port in ((v1, clients[0], v1_port), (v2, clients[1], v2_port)):
        assert seen["verdict"] == "header"
        assert seen["header"]["command"] == "PROXY"
        assert seen["header"]["client"] == list(client)
        assert seen["header"]["server"] == ["127.0.0.1", port]
        assert seen["data"]["text"] == "GET /through-haproxy HTTP/1.1\\r\\nHost: test\\r\\n\\r\\n"
    assert v1["crc32c"] is None and v1["header"]["tlvs"] == []
    assert v2["crc32c"] == "ok"
    names = {tlv["name"]: tlv for tlv in v2["header"]["tlvs"]}
    assert set(names) == {"CRC32C", "UNIQUE_ID"}
    assert names["UNIQUE_ID"]["value"].startswith("request-")


@pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it")
def test_haproxy_v2_health_check_is_local(tmp_path: Path) -> None:
    """HAProxy's v2 health check shows as a LOCAL header, in text."""
    with inspector("--count", "1", "--timeout", "3") as shown:
        config = (
            haproxy_defaults(tmp_path)
            + f"""\
backend checked
    server inspect 127.0.0.1:{shown.address[1]} send-proxy-v2 check inter 1s
"""
        )
        with HAProxy(config, tmp_path, ports=[]):
            stdout, stderr, code = shown.output()
    assert code == 0, stderr
    assert "header: v2 LOCAL" in stdout
    assert "LOCAL: the sender's own connection (health check); no client address" in stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_haproxy_protocol() -> None:
    """curl's v1 line carries its own socket addresses; its request follows as text."""
    with inspector("--count", "1") as shown:
        url = f"http://127.0.0.1:{shown.address[1]}/from-curl"
        curl = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--haproxy-protocol", "--noproxy", "*", url],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        stdout, stderr, code = shown.output()
    assert code == 0, stderr
    assert curl.returncode == 52, curl.stderr  # "Empty reply": inspect never answers
    lines = stdout.splitlines()
    peer = lines[0].split()[3]
    assert lines[1].startswith("  header: v1 PROXY, ")
    assert lines[2] == f"  client: {peer}"
    assert lines[3] == f"  server: 127.0.0.1:{shown.address[1]}"
    assert lines[4].startswith("  data (") and "GET /from-curl HTTP/1.1\\r\\nHost: " in lines[4]


def test_invalid_partial_and_split_headers_in_text() -> None:
    """Garbage, a bad CRC32C, a truncated v1 line, a header in pieces and an idle peer."""
    garbage, _ = BAD_INPUT["garbage"]
    bad_crc, _ = BAD_INPUT["v2-bad-crc32c"]
    header = encode_v2(
        CLIENT, DESTINATION, tlvs=[(TLVType.AUTHORITY, b"app.example.com")], checksum=True
    )
    with inspector("--count", "6", "--timeout", "1") as shown:
        send(shown.address, [b"\r\n\r\n\x00\r\nQ"], shutdown=True)
        send(shown.address, [garbage])
        send(shown.address, [bad_crc])
        send(shown.address, [encode_v1(CLIENT, DESTINATION)[:20]])
        send(shown.address, [header[:5], header[5:30], header[30:], b"\x16\x03\x01"])
        send(shown.address, [encode_v1(CLIENT, DESTINATION)])  # then nothing: timeout
        stdout, stderr, code = shown.output()
    assert code == 0, stderr
    closed, *blocks = ("\n" + stdout).split("\nconnection ")[1:]
    assert len(blocks) == 5, stdout
    assert "  incomplete header: 8 bytes before the peer closed, not yet a complete" in closed
    assert "  received (8 bytes, hex): 0d 0a 0d 0a 00 0d 0a 51" in closed
    assert "  not a header: the connection starts with b'\\x16\\x03\\x01" in blocks[0]
    assert "  received (75 bytes, hex): 16 03 01 02 00 01 00 01 fc 03 03 00" in blocks[0]
    assert "  invalid header: v2 header's CRC32C is 0x" in blocks[1]
    assert "  incomplete header: 20 bytes within 1 s, not yet a complete" in blocks[2]
    assert "  received (20 bytes, text): PROXY TCP4 198.51.10" in blocks[2]
    assert "  header: v2 PROXY INET STREAM, " in blocks[3]
    assert "  client: 198.51.100.22:35646\n  server: 203.0.113.7:443\n" in blocks[3]
    assert "  TLV AUTHORITY (0x02, 15 bytes): app.example.com\n" in blocks[3]
    assert "  CRC32C ok\n" in blocks[3]
    assert "  data (3 bytes, hex): 16 03 01" in blocks[3]
    assert "  header: v1 PROXY, 48 bytes" in blocks[4]
    assert "  no data after the header within the timeout" in blocks[4]


def test_json_local_and_cloud_tlvs() -> None:
    """--json: a LOCAL health check as NLB sends it, and the cloud TLVs decoded by name."""
    nlb_check = b"\r\n\r\n\x00\r\nQUIT\n\x20\x11\x00\x07\x04\x00\x04\x00\x00\x00\x00"
    cloud = encode_v2(
        CLIENT,
        DESTINATION,
        tlvs=[
            (TLVType.AWS, b"\x01vpce-0123456789abcdef0"),
            (TLVType.GCP_PSC, (123456789).to_bytes(8, "big")),
            (TLVType.AZURE, b"\x01" + (77).to_bytes(4, "little")),
            (TLVType.NOOP, bytes(6)),
        ],
    )
    with inspector("--json", "--count", "2", "--timeout", "1") as shown:
        send(shown.address, [nlb_check + request()])
        send(shown.address, [cloud + b"hello"])
        local, proxied = shown.objects()
    assert local["header"]["command"] == Command.LOCAL.value
    assert local["header"]["client"] is None
    assert local["crc32c"] == "not checked"
    assert local["data"]["text"] == "GET / HTTP/1.1\\r\\nHost: test\\r\\n\\r\\n"
    values = {tlv["name"]: tlv["value"] for tlv in proxied["header"]["tlvs"]}
    assert values == {
        "AWS": "VPC endpoint vpce-0123456789abcdef0",
        "GCP_PSC": "PSC connection id 123456789",
        "AZURE": "Private Link LINKID 77",
        "NOOP": "6 bytes of padding",
    }
    assert proxied["crc32c"] == "absent"
    assert proxied["data"] == {"length": 5, "text": "hello", "hex": b"hello".hex()}


def test_help_usage_error_and_port_in_use() -> None:
    """--help works, a missing --port is a usage error (2), a taken port exits 1 in one line."""
    help_text = run_to_exit([*COMMAND, "inspect", "--help"])
    assert help_text.returncode == 0
    assert "--count" in help_text.stdout and "--json" in help_text.stdout
    missing = run_to_exit([*COMMAND, "inspect"])
    assert missing.returncode == 2
    assert "Missing option '--port'" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_to_exit([*COMMAND, "inspect", "--port", str(port), "--count", "1"])
    assert busy.returncode == 1
    assert busy.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in busy.stderr
