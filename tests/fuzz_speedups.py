"""Differential fuzz of the C accelerator against the pure-Python decoder.

Loads ``_speedups`` from the file given with ``--extension`` (a build under
AddressSanitizer and UndefinedBehaviorSanitizer made by ``tests/sanitize.sh``, never the
installed one), configures it with the pure-Python decoder as its fallback, and feeds
both the same inputs: random bytes, valid headers (v1, v2 with random TLV sequences and
correct CRC32Cs), those headers mutated and truncated, and boundary cases (the longest
header, TLVs that end one byte early or late, UNIQUE_ID of 128 and 129 bytes). Every
input must give equal results of identical types, or the same error with the same
message. Each header decoded is also served through the uvicorn adapter's transport view,
the extension's ``TransportView`` against the pure-Python ``_PythonTransportView``: the
scope the app gets and every ``get_extra_info`` answer must be equal; and every input is
a connection's first read for the adapter's header phase, the extension's ``HeaderPhase``
against the Python reference: the same hand-over with the same view, or the same close.
The run stops after ``--iterations`` inputs or ``--seconds``, whichever comes first, and
exits 1 at the first mismatch (a sanitizer report aborts the process itself).

``--atheris`` runs a coverage-guided search instead (atheris' libFuzzer), seeded with
valid headers; the coverage it follows is the pure-Python reference decoder's, whose
branches mirror the C code's (the C code itself is not instrumented for coverage:
libFuzzer's ``-fsanitize=fuzzer`` needs clang, and the sanitizer build uses gcc).

Run it through ``bash tests/sanitize.sh``, which builds the extension and sets up the
sanitizer runtime; ``tests/test_sanitizers.py`` runs a bounded pass in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.machinery
import importlib.util
import inspect
import ipaddress
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from crc32c import crc32c

from proxyproto_mw import TrustPolicy, deadlines
from proxyproto_mw import decoder as decoder_module
from proxyproto_mw import header as header_module
from proxyproto_mw.decoder import Decoded, _decode_python
from proxyproto_mw.header import TLV, Command, Family, ProxyHeader, TransportProtocol
from proxyproto_mw.policy import logger

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def load_extension(path: Path) -> ModuleType:
    """The extension built at ``path``, under a name of its own (not the installed module)."""
    loader = importlib.machinery.ExtensionFileLoader("sanitized._speedups", str(path))
    spec = importlib.util.spec_from_file_location("sanitized._speedups", path, loader=loader)
    if spec is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class Differential:
    """Both decoders on the same input; counts what the C code decoded itself."""

    def __init__(self, extension: ModuleType) -> None:
        self.reference: Callable[[bytes], object] = _decode_python
        self.fallbacks = 0
        self.inputs = 0

        def fallback(*args: Any, **kwargs: Any) -> object:
            self.fallbacks += 1
            return _decode_python(*args, **kwargs)

        extension.configure(
            fallback,
            Decoded,
            ProxyHeader,
            Command.PROXY,
            Family.INET,
            Family.INET6,
            TransportProtocol.STREAM,
            (),
            TLV,
        )
        self.accelerated: Callable[[bytes], object] = extension.decode
        self.views = Views(extension)
        self.phases = Phases(extension, self.views)

    @staticmethod
    def _outcome(decode: Callable[[bytes], object], data: bytes) -> tuple[object, ...]:
        try:
            return ("result", decode(data))
        except Exception as error:  # every error must be the same, whatever its type
            return ("error", type(error), str(error), getattr(error, "data", None))

    def check(self, data: bytes) -> None:
        """Raise AssertionError unless both decoders answer ``data`` identically."""
        self.inputs += 1
        expected = self._outcome(self.reference, data)
        actual = self._outcome(self.accelerated, data)
        where = f"input {data!r}"
        if not identical(actual, expected):
            raise AssertionError(f"{where}: C gave {actual!r}, Python {expected!r}")
        if expected[0] == "result" and isinstance(expected[1], Decoded):
            self.views.check(expected[1].header, self.inputs)
        self.phases.check(data, self.inputs)

    @property
    def decoded_in_c(self) -> int:
        return self.inputs - self.fallbacks


class _Transport:
    """What the view needs of a transport: ``write`` and ``get_extra_info``."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("real", name) if name in ("peername", "sockname", "cipher") else default


SCOPES: tuple[dict[str, Any], ...] = (
    {"type": "http", "scheme": "http", "path": "/"},
    {"type": "http", "scheme": "http", "extensions": {"http.response.trailers": {}}},
    {"type": "http", "extensions": None},
    {"type": "websocket", "scheme": "ws"},
    {"type": "websocket", "extensions": {"websocket.http.response": {}}},
)
EXTRA = ("socket", "sockname", "peername", "sslcontext", "proxy_protocol", "cipher", "other")


class Views:
    """The uvicorn adapter's view, C against Python, for one decoded header at a time."""

    def __init__(self, extension: ModuleType) -> None:
        from proxyproto_mw.uvicorn import (  # noqa: PLC0415  (needs uvicorn; its base is Python here)
            ProxiedTransport,
            _LocalHeaderTransport,
        )

        def on(base: type[Any], cls: type[Any]) -> type[Any]:
            members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            return type(cls.__name__, (base,), members)

        proxied = on(extension.TransportView, ProxiedTransport)
        self.c = (proxied, on(proxied, _LocalHeaderTransport))
        self.python = (ProxiedTransport, _LocalHeaderTransport)

    @staticmethod
    def _served(
        view_class: type[Any], header: ProxyHeader, scope: dict[str, Any], tls: bool
    ) -> Any:
        seen: list[dict[str, Any]] = []

        def app(scope: dict[str, Any], receive: object, send: object) -> None:
            seen.append(scope)

        view = view_class(_Transport(), header, ("10.0.0.1", 40000), app, tls)
        view(scope, None, None)
        extra = [view.get_extra_info(name) for name in EXTRA]
        extra += [view.get_extra_info(name, "default") for name in EXTRA]
        return seen, scope, extra

    def check(self, header: ProxyHeader, count: int) -> None:
        """Raise AssertionError unless both views serve ``header`` identically."""
        index = 0 if header.source is not None else 1
        scope = SCOPES[count % len(SCOPES)]
        tls = count % 7 == 0
        c = self._served(self.c[index], header, _copy(scope), tls)
        python = self._served(self.python[index], header, _copy(scope), tls)
        if c != python:
            raise AssertionError(f"view of {header!r}: C gave {c!r}, Python {python!r}")


class _Recorded:
    """Stands in for uvicorn's HTTP protocol: records what the hand-over gives it."""

    ws_protocol_class = None

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any) -> None:
        self.app = config.app
        self.seen: list[object] = []

    def connection_made(self, transport: Any) -> None:
        extra = [transport.get_extra_info(name) for name in EXTRA if name != "socket"]
        fields = [getattr(transport, name, None) for name in ("_peer", "_tls", "_app")]
        self.seen.append((type(transport).__name__, extra, fields))

    def data_received(self, data: bytes) -> None:
        self.seen.append(data)


class _PhaseTransport:
    """The real transport of a connection in the header phase."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.protocol: Any = None
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class Phases:
    """The uvicorn adapter's header phase, C (``HeaderPhase``) against the Python reference
    (``ProxyProtocol._connection_made_python`` and friends), for each input as a
    connection's first read: what is handed to uvicorn's protocol, with which view, or
    whether the connection is closed."""

    PEERS = (("127.0.0.1", 40000), ("192.0.2.1", 1))

    def __init__(self, extension: ModuleType, views: Views) -> None:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware  # noqa: PLC0415

        from proxyproto_mw import uvicorn as adapter  # noqa: PLC0415

        reference = ("connection_made", "data_received", "_hand_over", "__dict__", "__weakref__")
        members = {k: v for k, v in vars(adapter.ProxyProtocol).items() if k not in reference}
        accelerated = type("ProxyProtocol", (extension.HeaderPhase, asyncio.Protocol), members)
        twin = type(
            "ProxyProtocol",
            (adapter.ProxyProtocol,),
            {
                "__slots__": (),
                "connection_made": adapter.ProxyProtocol._connection_made_python,
                "data_received": adapter.ProxyProtocol._data_received_python,
                "_hand_over": adapter.ProxyProtocol._hand_over_python,
            },
        )
        extension.configure_protocol(
            deadlines.by_loop,
            adapter._OFF,
            asyncio.get_event_loop,
            views.c[0],
            views.c[1],
            ProxyHeadersMiddleware,
            {},
            adapter._ws_protocol_with_header,
            adapter._AT_SHUTDOWN,
        )
        self.loop = asyncio.new_event_loop()  # never run: the sweep stays scheduled
        self.classes = {}
        for mode in ("require", "optional"):
            policy = TrustPolicy(trusted="127.0.0.1", mode=mode, timeout=60)
            namespace = {"__slots__": (), "policy": policy, "http_protocol": _Recorded}
            self.classes[mode] = tuple(
                type(f"{mode}-{impl}", (base,), namespace)
                for impl, base in (("c", accelerated), ("python", twin))
            )
        self.config = type("Config", (), {"app": staticmethod(lambda *args: None)})()
        self.server_state = type("ServerState", (), {})()
        self.server_state.connections = set()
        logger.disabled = True  # the rejection lines of random bytes

    def _served(self, protocol_class: type[Any], data: bytes, peer: tuple[str, int]) -> Any:
        protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state={}, _loop=self.loop
        )
        transport = _PhaseTransport(peer)
        protocol.connection_made(transport)
        protocol.data_received(data)
        handed = transport.protocol
        outcome = (
            transport.aborted,
            protocol._waiting is None,
            protocol._peer,
            None if handed is None else handed.seen,
        )
        protocol.connection_lost(None)
        if self.server_state.connections:
            raise AssertionError(f"input {data!r}: left among the connections")
        return outcome

    def check(self, data: bytes, count: int) -> None:
        """Raise AssertionError unless both header phases serve ``data`` alike."""
        peer = self.PEERS[count % 2]
        c_class, python_class = self.classes["require" if count % 3 else "optional"]
        c = self._served(c_class, data, peer)
        python = self._served(python_class, data, peer)
        if c != python:
            raise AssertionError(f"header phase of {data!r}: C gave {c!r}, Python {python!r}")


def _copy(scope: dict[str, Any]) -> dict[str, Any]:
    extensions = scope.get("extensions")
    return {**scope, "extensions": dict(extensions)} if extensions else dict(scope)


def identical(actual: object, expected: object) -> bool:
    """Equal and of identical types, recursively through tuples, hashes included."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple)
        return (
            len(actual) == len(expected)
            and all(identical(a, e) for a, e in zip(actual, expected, strict=True))
            and (not _hashable(expected) or hash(actual) == hash(expected))
        )
    return actual == expected


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# --- inputs -------------------------------------------------------------------------------


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


class Inputs:
    """Random, valid, mutated, truncated and boundary inputs from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def _ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.random.getrandbits(32))

    def _ipv6(self) -> ipaddress.IPv6Address:
        words = [
            self.random.choice([0, 0, 1, 0xFFFF, self.random.getrandbits(16)]) for _ in range(8)
        ]
        return ipaddress.IPv6Address(b"".join(word.to_bytes(2, "big") for word in words))

    def v1(self) -> bytes:
        r = self.random
        if r.random() < 0.5:
            hosts, name = (str(self._ipv4()), str(self._ipv4())), "TCP4"
        else:
            pick: list[Callable[[ipaddress.IPv6Address], str]] = [
                str,
                lambda address: address.exploded,
                lambda address: address.exploded.upper(),
            ]
            hosts = (r.choice(pick)(self._ipv6()), r.choice(pick)(self._ipv6()))
            name = "TCP6"
        ports = [str(r.choice([0, 1, 80, 65535, r.getrandbits(16)])) for _ in range(2)]
        return f"PROXY {name} {hosts[0]} {hosts[1]} {ports[0]} {ports[1]}\r\n".encode()

    def tlv_record(self) -> bytes:
        r = self.random
        choice = r.randrange(10)
        if choice == 0:
            return _tlv(0x01, r.choice([b"h2", b"http/1.1", b""]))
        if choice == 1:
            text = r.choice(["api.example.com", "bücher.example", "\U0001d518", ""]).encode()
            broken = r.choice([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"])
            return _tlv(0x02, broken if r.random() < 0.1 else text)
        if choice == 2:
            return _tlv(0x04, bytes(r.randrange(12)))
        if choice == 3:
            return _tlv(0x05, r.randbytes(r.choice([0, 46, 46, 127, 128, 128, 129])))
        if choice == 4:
            sub = b"".join(
                _tlv(r.randrange(0x21, 0x29), r.randbytes(r.randrange(10)))
                for _ in range(r.randrange(4))
            )
            return _tlv(0x20, bytes([r.randrange(8)]) + r.randbytes(4) + sub)
        if choice == 5:
            return _tlv(0xEA, b"\x01vpce-" + r.randbytes(r.randrange(20)).hex().encode())
        if choice == 6:
            return _tlv(r.choice([0xE0, 0xEE, 0x30]), r.randbytes(r.choice([4, 5, 8, 9])))
        return _tlv(r.randrange(256), r.randbytes(r.randrange(24)))

    def v2(self) -> bytes:
        r = self.random
        if r.random() < 0.6:
            family, block = 0x11, self._ipv4().packed + self._ipv4().packed
        else:
            family, block = 0x21, self._ipv6().packed + self._ipv6().packed
        if r.random() < 0.1:
            family = r.choice([0x00, 0x01, 0x10, 0x12, 0x22, 0x31])
        block += r.randbytes(4)
        records = [self.tlv_record() for _ in range(r.choice([0, 1, 2, 3, 5, 7]))]
        checksum_at = r.randrange(len(records) + 1) if r.random() < 0.5 else None
        if checksum_at is not None:
            records.insert(checksum_at, _tlv(0x03, bytes(4)))
        body = block + b"".join(records)
        command = 0x21 if r.random() < 0.9 else 0x20
        data = SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body
        if checksum_at is not None:
            at = 16 + len(block) + sum(len(record) for record in records[:checksum_at]) + 3
            data = data[:at] + crc32c(data).to_bytes(4, "big") + data[at + 4 :]
        return data

    def boundary(self) -> bytes:
        r = self.random
        block = self._ipv4().packed * 2 + b"\x00\x50\x01\xbb"
        cases = [
            # the longest header: one TLV filling 65535 bytes
            _tlv(0xE5, bytes(0xFFFF - 12 - 3)),
            # a TLV ending one byte before, at, or after the declared end
            _tlv(0x01, b"h2")[: r.choice([1, 2, 4, 5])],
            _tlv(0x20, bytes(5) + _tlv(0x21, b"TLSv1.3"))[:-1],
            _tlv(0x05, bytes(r.choice([128, 129]))),
            bytes([0x03, 0x00, 0x04]) + r.randbytes(4),
        ]
        body = block + r.choice(cases)
        length = len(body) + r.choice([0, 0, 0, -1, 1, -3])
        data = SIGNATURE + b"\x21\x11" + max(0, min(length, 0xFFFF)).to_bytes(2, "big") + body
        return data

    def mutate(self, data: bytes) -> bytes:
        r = self.random
        mutable = bytearray(data)
        for _ in range(r.randrange(1, 4)):
            operation = r.randrange(5)
            at = r.randrange(len(mutable) + 1)
            if operation == 0 and at < len(mutable):
                mutable[at] ^= 1 << r.randrange(8)
            elif operation == 1 and at < len(mutable):
                mutable[at] = r.choice([0, 0xFF, 0x20, 0x0D, 0x0A, r.randrange(256)])
            elif operation == 2:
                mutable.insert(at, r.randrange(256))
            elif operation == 3 and at < len(mutable):
                del mutable[at]
            elif len(mutable) >= 16 and mutable[:12] == SIGNATURE:
                length = r.randrange(min(len(mutable) + 8, 0x10000))
                mutable[14:16] = length.to_bytes(2, "big")
        return bytes(mutable)

    def random_bytes(self) -> bytes:
        r = self.random
        prefix = r.choice(
            [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", SIGNATURE, SIGNATURE + b"\x21\x11"]
        )
        return prefix + r.randbytes(r.randrange(120))

    def __iter__(self) -> Iterator[bytes]:
        r = self.random
        makers = [self.v1, self.v2, self.v2, self.v2, self.boundary, self.random_bytes]
        while True:
            data = r.choice(makers)()
            yield data
            yield data + r.choice([b"", b"GET / HTTP/1.1\r\n", SIGNATURE])
            yield self.mutate(data)
            if len(data) < 400 and r.random() < 0.02:  # now and then every cut
                cuts: list[int] | range = range(len(data))
            else:
                cuts = [r.randrange(len(data) + 1) for _ in range(3)]
            for end in cuts:
                yield data[:end]


# --- modes ---------------------------------------------------------------------------------


def run_random(differential: Differential, seed: int, iterations: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    for count, data in enumerate(Inputs(seed), 1):
        differential.check(data)
        if count >= iterations or (count % 256 == 0 and time.monotonic() >= deadline):
            break
    return 0


def run_atheris(
    extension_path: Path, seed: int, iterations: int, seconds: float, corpus: Path | None
) -> int:
    """Coverage-guided: libFuzzer, following the pure-Python reference's coverage."""
    try:
        import atheris  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        print("atheris is not installed (pip install atheris); skipping the guided run")
        return 0
    # The reference decoder's own functions, where the rules are; instrumenting everything
    # loaded (instrument_all) takes minutes and mostly measures the standard library.
    # (instrument_imports() would miss modules found by the editable install's finder.)
    for module in (decoder_module, header_module):
        for function in vars(module).values():
            if inspect.isfunction(function) and function.__module__ == module.__name__:
                atheris.instrument_func(function)
    differential = Differential(load_extension(extension_path))
    if corpus is None:
        corpus = Path(tempfile.mkdtemp(prefix="proxyproto-corpus-"))
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = Path(tempfile.gettempdir()) / "proxyproto-fuzz-artifacts"
    artifacts.mkdir(exist_ok=True)
    print(f"corpus {corpus}; a failing input is written to {artifacts}", flush=True)
    inputs = Inputs(seed)
    for index in range(64):
        maker = [inputs.v1, inputs.v2, inputs.boundary][index % 3]
        (corpus / f"seed-{index}").write_bytes(maker())
    arguments = [
        sys.argv[0],
        f"-runs={iterations}",
        f"-max_total_time={max(1, int(seconds))}",
        f"-seed={seed}",
        "-max_len=1024",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    atheris.Setup(arguments, differential.check)
    atheris.Fuzz()  # exits the process: 0 when the budget is spent, non-zero on a mismatch
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--extension", type=Path, required=True, help="the built _speedups .so")
    parser.add_argument("--iterations", type=int, default=10**9, help="inputs at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds at most")
    parser.add_argument("--seed", type=int, default=None, help="seed (random by default)")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided (atheris)")
    parser.add_argument("--corpus", type=Path, default=None, help="atheris' corpus directory")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed}; at most {args.iterations} inputs or {args.seconds:g} s", flush=True)
    if args.atheris:
        return run_atheris(args.extension, seed, args.iterations, args.seconds, args.corpus)
    differential = Differential(load_extension(args.extension))
    started = time.monotonic()
    try:
        run_random(differential, seed, args.iterations, args.seconds)
    except AssertionError as error:
        print(f"MISMATCH (seed {seed}): {error}", file=sys.stderr)
        return 1
    print(
        f"{differential.inputs} inputs in {time.monotonic() - started:.1f} s, "
        f"{differential.decoded_in_c} decoded in C, 0 mismatches",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
