"""Capture the bytes real PROXY protocol senders put at the start of a connection.

``python tests/capture_fixtures.py`` runs every sender installed here (HAProxy, curl,
nginx) on loopback addresses and rewrites ``tests/fixtures/<name>.bin`` (the first bytes
each sender delivered), ``expected.json`` and ``README.md``. A sender that is missing
keeps its earlier fixture. ``--output DIR`` writes somewhere else.

The expected values never come from the decoder under test: addresses come from the
sockets at both ends, TLV types from the sender's configuration, and the payload from
what the client sent (or, for curl, from the bytes after the header's own framing).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypedDict

if __name__ == "__main__" and not __package__:
    # Run as ``python tests/capture_fixtures.py``: make the ``tests`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.haproxy import (
    Address,
    HAProxy,
    Recorder,
    Recording,
    ServerProcess,
    connect_from,
    free_port,
    ipv6_available,
)

__all__ = [
    "CAPTURES",
    "CURL_CLIENT",
    "FIXTURES",
    "PAYLOAD",
    "RELAY_CLIENT",
    "Capture",
    "Expected",
    "Sender",
    "capture_all",
    "capture_curl_ipv4",
    "capture_curl_ipv6",
    "capture_haproxy_check_v1",
    "capture_haproxy_check_v2",
    "capture_haproxy_check_v2_crc32c",
    "capture_haproxy_v1",
    "capture_haproxy_v2",
    "capture_haproxy_v2_crc32c_unique_id",
    "capture_haproxy_v2_ipv6",
    "capture_nginx_stream",
    "main",
]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PAYLOAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
"""What the client sends through a relaying proxy; it must follow the header unchanged."""
RELAY_CLIENT = "127.0.0.2"
"""The address clients of HAProxy and nginx bind to, so that it differs from the proxy's."""
CURL_CLIENT = "127.0.0.3"
"""The address curl binds to (``--interface``)."""
HTTP_REPLY = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
UNIQUE_ID_FORMAT = r"%{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt"
"""HAProxy's unique id: client and frontend address and port in hex, time, request count."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TIMEOUT = 10.0


class Expected(TypedDict):
    """What a decoder must find in a fixture; ``source`` and ``destination`` are [host, port]."""

    description: str
    sender: str
    captured: str
    version: int
    command: str
    family: str
    transport: str
    source: list[str | int] | None
    destination: list[str | int] | None
    tlv_types: list[int]
    unique_id_prefix: str | None
    payload: str
    """The bytes after the header, as Latin-1 text."""


@dataclass(frozen=True)
class Capture:
    """One sender's first bytes and what they must decode to."""

    name: str
    data: bytes
    expected: Expected

    def save(self, outdir: Path) -> Capture:
        """Write the bytes to ``<outdir>/<name>.bin``."""
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / f"{self.name}.bin").write_bytes(self.data)
        return self


@functools.cache
def _version(executable: str) -> str:
    """The first line ``<executable> -v`` (``--version`` for curl) prints."""
    flag = "--version" if executable == "curl" else "-v"
    result = subprocess.run(
        [executable, flag], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    lines = (result.stdout or result.stderr).strip().splitlines()
    if not lines:
        return executable
    # curl's first line goes on to list every library it links; its own version is enough.
    return " ".join(lines[0].split()[:3]) if executable == "curl" else lines[0].strip()


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Separate a header from what follows by its own framing (CRLF, or v2's length)."""
    if data.startswith(V2_SIGNATURE) and len(data) >= 16:
        end = 16 + int.from_bytes(data[14:16], "big")
    else:
        end = data.index(b"\r\n") + 2
    return data[:end], data[end:]


def _hex(host: str) -> str:
    """An address as HAProxy's ``%{+X}`` log format writes it."""
    return ipaddress.ip_address(host).packed.hex().upper()


def _family(host: str) -> str:
    return "INET6" if ":" in host else "INET"


def _pair(address: Address | None) -> list[str | int] | None:
    return None if address is None else [address[0], address[1]]


def _expected(
    *,
    description: str,
    sender: str,
    data: bytes,
    version: int,
    command: str = "PROXY",
    source: Address | None,
    destination: Address | None,
    tlv_types: Sequence[int] = (),
    unique_id_prefix: str | None = None,
    payload: bytes | None = None,
) -> Expected:
    """The expected values; ``payload`` (when known) must be what follows the header."""
    _, after = _split(data)
    if payload is not None and after != payload:
        raise RuntimeError(f"{sender}: the header is followed by {after!r}, not {payload!r}")
    relayed = source is not None
    return {
        "description": description,
        "sender": sender,
        "captured": _today(),
        "version": version,
        "command": command,
        "family": _family(source[0]) if source is not None else "UNSPEC",
        "transport": "STREAM" if relayed else "UNSPEC",
        "source": _pair(source),
        "destination": _pair(destination),
        "tlv_types": sorted(tlv_types),
        "unique_id_prefix": unique_id_prefix,
        "payload": after.decode("latin-1"),
    }


def _haproxy_config(frontend: Address, server: str) -> str:
    host, port = frontend
    return f"""\
global
    nbthread 1

defaults
    mode tcp
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout check 2s

frontend fe
    bind {f"[{host}]" if ":" in host else host}:{port}
    unique-id-format {UNIQUE_ID_FORMAT}
    default_backend be

backend be
    server recorder {server}
"""


def _haproxy_relay(
    name: str,
    description: str,
    options: str,
    *,
    client: str = RELAY_CLIENT,
    frontend_host: str = "127.0.0.1",
    tlv_types: Sequence[int] = (),
    unique_id: bool = False,
) -> Capture:
    """A client connects through HAProxy to the recorder and sends :data:`PAYLOAD`."""
    with (
        tempfile.TemporaryDirectory(prefix="proxyproto-capture-") as workdir,
        Recorder(complete=lambda data: data.endswith(PAYLOAD), timeout=TIMEOUT) as recorder,
    ):
        frontend = (frontend_host, free_port(frontend_host))
        config = _haproxy_config(frontend, f"127.0.0.1:{recorder.port} {options}")
        with HAProxy(config, Path(workdir)):
            source = connect_from(client, frontend, PAYLOAD, TIMEOUT)
            (recording,) = recorder.wait_for(1, timeout=TIMEOUT)
    prefix = None
    if unique_id:
        prefix = f"{_hex(source[0])}:{source[1]:04X}_{_hex(frontend[0])}:{frontend[1]:04X}_"
    expected = _expected(
        description=description,
        sender=_version("haproxy"),
        data=recording.data,
        version=2 if "send-proxy-v2" in options else 1,
        source=source,
        destination=frontend,
        tlv_types=tlv_types,
        unique_id_prefix=prefix,
        payload=PAYLOAD,
    )
    return Capture(name, recording.data, expected)


def _haproxy_check(options: str) -> Recording:
    """The first health check connection that carried bytes, with ``options`` on the server."""
    with (
        tempfile.TemporaryDirectory(prefix="proxyproto-capture-") as workdir,
        Recorder(timeout=TIMEOUT) as recorder,
    ):
        frontend = ("127.0.0.1", free_port())
        server = f"127.0.0.1:{recorder.port} check inter 100ms {options}"
        with HAProxy(_haproxy_config(frontend, server), Path(workdir)):
            (recording,) = recorder.wait_for(1, where=lambda r: bool(r.data), timeout=TIMEOUT)
    return recording


def capture_haproxy_v1(outdir: Path) -> Capture:
    """HAProxy ``send-proxy``: a v1 line with the client's and the frontend's addresses."""
    return _haproxy_relay(
        "haproxy-send-proxy-v1",
        "HAProxy `send-proxy` (tcp mode) relaying a client on 127.0.0.2; v1 TCP4 line + request",
        "send-proxy",
    ).save(outdir)


def capture_haproxy_v2(outdir: Path) -> Capture:
    """HAProxy ``send-proxy-v2`` without options: an INET block and no TLVs."""
    return _haproxy_relay(
        "haproxy-send-proxy-v2",
        "HAProxy `send-proxy-v2` (tcp mode) relaying a client on 127.0.0.2; v2 PROXY INET, "
        "no TLVs + request",
        "send-proxy-v2",
    ).save(outdir)


def capture_haproxy_v2_crc32c_unique_id(outdir: Path) -> Capture:
    """HAProxy ``send-proxy-v2`` with ``proxy-v2-options crc32c,unique-id``."""
    return _haproxy_relay(
        "haproxy-send-proxy-v2-crc32c-unique-id",
        "HAProxy `send-proxy-v2 proxy-v2-options crc32c,unique-id` relaying a client on "
        "127.0.0.2; v2 PROXY INET with CRC32C and UNIQUE_ID TLVs + request",
        "send-proxy-v2 proxy-v2-options crc32c,unique-id",
        tlv_types=(0x03, 0x05),
        unique_id=True,
    ).save(outdir)


def capture_haproxy_v2_ipv6(outdir: Path) -> Capture:
    """HAProxy ``send-proxy-v2`` with CRC32C and unique id, client and frontend on ::1."""
    return _haproxy_relay(
        "haproxy-send-proxy-v2-ipv6",
        "HAProxy `send-proxy-v2 proxy-v2-options crc32c,unique-id`, client on ::1 to a "
        "frontend on [::1]; v2 PROXY INET6 with CRC32C and UNIQUE_ID TLVs + request",
        "send-proxy-v2 proxy-v2-options crc32c,unique-id",
        client="::1",
        frontend_host="::1",
        tlv_types=(0x03, 0x05),
        unique_id=True,
    ).save(outdir)


def capture_haproxy_check_v1(outdir: Path) -> Capture:
    """An HAProxy health check with ``send-proxy``: a real TCP4 line, HAProxy's own addresses."""
    description = (
        "HAProxy health check (`check send-proxy`): v1 TCP4 line with the check "
        "connection's own addresses, nothing after it (HAProxy then resets the connection)"
    )
    recording = _haproxy_check("send-proxy")
    expected = _expected(
        description=description,
        sender=_version("haproxy"),
        data=recording.data,
        version=1,
        source=recording.peer,
        destination=recording.local,
        payload=b"",
    )
    return Capture("haproxy-check-send-proxy-v1", recording.data, expected).save(outdir)


def _local_check(name: str, description: str, options: str, outdir: Path) -> Capture:
    recording = _haproxy_check(options)
    expected = _expected(
        description=description,
        sender=_version("haproxy"),
        data=recording.data,
        version=2,
        command="LOCAL",
        source=None,
        destination=None,
        payload=b"",
    )
    return Capture(name, recording.data, expected).save(outdir)


def capture_haproxy_check_v2(outdir: Path) -> Capture:
    """An HAProxy health check with ``send-proxy-v2``: LOCAL, family UNSPEC, no block."""
    return _local_check(
        "haproxy-check-send-proxy-v2",
        "HAProxy health check (`check send-proxy-v2`): v2 LOCAL, family UNSPEC, length 0, "
        "nothing after it",
        "send-proxy-v2",
        outdir,
    )


def capture_haproxy_check_v2_crc32c(outdir: Path) -> Capture:
    """A ``send-proxy-v2`` health check with ``proxy-v2-options crc32c``: LOCAL plus a TLV."""
    return _local_check(
        "haproxy-check-send-proxy-v2-crc32c",
        "HAProxy health check (`check send-proxy-v2 proxy-v2-options crc32c,unique-id`): "
        "v2 LOCAL, family UNSPEC, carrying a CRC32C TLV (a LOCAL block is discarded, "
        "so no TLV is expected from the decoder), nothing after it",
        "send-proxy-v2 proxy-v2-options crc32c,unique-id",
        outdir,
    )


def _curl(name: str, description: str, host: str, interface: str | None) -> Capture:
    executable = shutil.which("curl")
    if executable is None:
        raise RuntimeError("curl is not installed (apt-get install curl)")
    with Recorder(
        host, complete=lambda data: data.endswith(b"\r\n\r\n"), reply=HTTP_REPLY, timeout=TIMEOUT
    ) as recorder:
        url_host = f"[{host}]" if ":" in host else host
        argv = [executable, "--haproxy-protocol", "--globoff", "--silent", "--show-error"]
        if interface is not None:
            argv += ["--interface", interface]
        argv += ["--max-time", "5", "--output", "/dev/null", f"http://{url_host}:{recorder.port}/"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        (recording,) = recorder.wait_for(1, timeout=TIMEOUT)
    if interface is not None and recording.peer[0] != interface:
        raise RuntimeError(f"curl connected from {recording.peer}, not from {interface}")
    _, request = _split(recording.data)
    if not request.startswith(b"GET / HTTP/1.1\r\n"):
        raise RuntimeError(f"curl's header is not followed by its request: {recording.data!r}")
    expected = _expected(
        description=description,
        sender=_version("curl"),
        data=recording.data,
        version=1,
        source=recording.peer,
        destination=recording.local,
    )
    return Capture(name, recording.data, expected)


def capture_curl_ipv4(outdir: Path) -> Capture:
    """``curl --haproxy-protocol --interface 127.0.0.3``: v1 with curl's own socket addresses."""
    return _curl(
        "curl-haproxy-protocol-ipv4",
        "curl `--haproxy-protocol --interface 127.0.0.3 http://127.0.0.1:P/`: v1 TCP4 line "
        "with curl's socket addresses + curl's request",
        "127.0.0.1",
        CURL_CLIENT,
    ).save(outdir)


def capture_curl_ipv6(outdir: Path) -> Capture:
    """``curl --haproxy-protocol http://[::1]:P/``: a v1 TCP6 line."""
    return _curl(
        "curl-haproxy-protocol-ipv6",
        "curl `--haproxy-protocol http://[::1]:P/`: v1 TCP6 line with curl's socket "
        "addresses + curl's request",
        "::1",
        None,
    ).save(outdir)


def _nginx_config(listen: Address, upstream: Address) -> str:
    # A private instance: everything under its prefix directory, one process, no daemon.
    user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return f"""\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
{user}master_process off;
worker_processes 1;
pid nginx.pid;
error_log error.log info;

events {{
    worker_connections 64;
}}

stream {{
    server {{
        listen {listen[0]}:{listen[1]};
        proxy_pass {upstream[0]}:{upstream[1]};
        proxy_protocol on;
    }}
}}
"""


def capture_nginx_stream(outdir: Path) -> Capture:
    """nginx ``stream`` with ``proxy_protocol on;``: a v1 line, then the client's bytes."""
    executable = shutil.which("nginx")
    if executable is None:
        raise RuntimeError(
            "nginx is not installed (apt-get install nginx-light libnginx-mod-stream)"
        )
    with (
        tempfile.TemporaryDirectory(prefix="proxyproto-capture-") as directory,
        Recorder(complete=lambda data: data.endswith(PAYLOAD), timeout=TIMEOUT) as recorder,
    ):
        workdir = Path(directory)
        listen = ("127.0.0.1", free_port())
        config = workdir / "nginx.conf"
        config.write_text(_nginx_config(listen, recorder.address))
        error_log = str(workdir / "error.log")
        argv = [executable, "-c", str(config), "-p", f"{workdir}/", "-e", error_log]
        argv += ["-g", "daemon off;"]
        with ServerProcess(argv, workdir, [listen], name="nginx"):
            source = connect_from(RELAY_CLIENT, listen, PAYLOAD, TIMEOUT)
            (recording,) = recorder.wait_for(1, timeout=TIMEOUT)
    expected = _expected(
        description="nginx `stream { proxy_protocol on; }` relaying a client on 127.0.0.2; "
        "v1 TCP4 line + request",
        sender=_version("nginx"),
        data=recording.data,
        version=1,
        source=source,
        destination=listen,
        payload=PAYLOAD,
    )
    return Capture("nginx-stream-proxy-protocol", recording.data, expected).save(outdir)


@dataclass(frozen=True)
class Sender:
    """A capture function and what it needs on this machine."""

    name: str
    capture: Callable[[Path], Capture]
    needs: tuple[str, ...]
    ipv6: bool = False

    def missing(self) -> str | None:
        """Why this sender cannot run here, or None."""
        for executable in self.needs:
            if shutil.which(executable) is None:
                return f"{executable} is not installed"
        if self.ipv6 and not ipv6_available():
            return "there is no IPv6 loopback address"
        return None


CAPTURES: tuple[Sender, ...] = (
    Sender("haproxy-send-proxy-v1", capture_haproxy_v1, ("haproxy",)),
    Sender("haproxy-send-proxy-v2", capture_haproxy_v2, ("haproxy",)),
    Sender(
        "haproxy-send-proxy-v2-crc32c-unique-id", capture_haproxy_v2_crc32c_unique_id, ("haproxy",)
    ),
    Sender("haproxy-send-proxy-v2-ipv6", capture_haproxy_v2_ipv6, ("haproxy",), ipv6=True),
    Sender("haproxy-check-send-proxy-v1", capture_haproxy_check_v1, ("haproxy",)),
    Sender("haproxy-check-send-proxy-v2", capture_haproxy_check_v2, ("haproxy",)),
    Sender("haproxy-check-send-proxy-v2-crc32c", capture_haproxy_check_v2_crc32c, ("haproxy",)),
    Sender("curl-haproxy-protocol-ipv4", capture_curl_ipv4, ("curl",)),
    Sender("curl-haproxy-protocol-ipv6", capture_curl_ipv6, ("curl",), ipv6=True),
    Sender("nginx-stream-proxy-protocol", capture_nginx_stream, ("nginx",)),
)


_README_HEAD = """\
# Captured PROXY protocol headers

Each `<name>.bin` holds the first bytes one real sender delivered on one loopback connection:
its PROXY header, then whatever followed it (the client's request, or nothing for a health
check). `expected.json` says what each must decode to; `tests/test_fixtures.py` checks it.

Re-capture with `python tests/capture_fixtures.py` (needs haproxy, curl, nginx-light and
libnginx-mod-stream; a sender that is missing keeps its earlier file). Ports are ephemeral,
so every capture differs in its ports, and HAProxy's unique ids in their time stamp.

`expected.json`, per fixture: `version`, `command`, `family`, `transport` as the decoder names
them; `source` and `destination` as `[host, port]` (null when the real connection's addresses
apply: v2 LOCAL), taken from the sockets at both ends, not from the bytes; `tlv_types` from
the sender's configuration; `unique_id_prefix`, the start of HAProxy's unique id
(`%{+X}o %ci:%cp_%fi:%fp_`, addresses and ports in hex); `payload`, the bytes after the
header (Latin-1).
"""


def _readme(entries: dict[str, Expected], outdir: Path) -> str:
    lines = [_README_HEAD, "| file | what it is | sender | captured |", "|---|---|---|---|"]
    for name, entry in entries.items():
        lines.append(
            f"| `{name}.bin` | {entry['description']} | {entry['sender']} | {entry['captured']} |"
        )
    lines += ["", "## The headers", ""]
    for name in entries:
        path = outdir / f"{name}.bin"
        if path.exists():
            header, _ = _split(path.read_bytes())
            lines += [f"`{name}.bin` ({len(header)} header bytes):", "", "```", repr(header)]
            lines += ["```", ""]
    return "\n".join(lines)


def capture_all(outdir: Path = FIXTURES, names: Sequence[str] = ()) -> list[Capture]:
    """Capture every sender available (or those in ``names``) into ``outdir``.

    Rewrites ``expected.json`` and ``README.md`` there, keeping the entries of the
    fixtures that were not captured this time.
    """
    expected_path = outdir / "expected.json"
    entries: dict[str, Expected] = {}
    if expected_path.exists():
        entries = json.loads(expected_path.read_text())
    captures = []
    for sender in CAPTURES:
        if names and sender.name not in names:
            continue
        reason = sender.missing()
        if reason is not None:
            print(f"skipped {sender.name}: {reason}", file=sys.stderr)
            continue
        capture = sender.capture(outdir)
        captures.append(capture)
        entries[capture.name] = capture.expected
        print(f"{capture.name}.bin: {_split(capture.data)[0]!r}")
    rank = {sender.name: index for index, sender in enumerate(CAPTURES)}
    entries = {name: entries[name] for name in sorted(entries, key=lambda n: (rank.get(n, 99), n))}
    outdir.mkdir(parents=True, exist_ok=True)
    expected_path.write_text(json.dumps(entries, indent=2) + "\n")
    (outdir / "README.md").write_text(_readme(entries, outdir))
    return captures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: re-capture the fixtures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", help="capture only these fixtures")
    parser.add_argument("--output", type=Path, default=FIXTURES, help="directory to write to")
    arguments = parser.parse_args(argv)
    unknown = set(arguments.names) - {sender.name for sender in CAPTURES}
    if unknown:
        parser.error(f"unknown fixtures: {', '.join(sorted(unknown))}")
    capture_all(arguments.output, arguments.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
