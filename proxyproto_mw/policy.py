"""The trust policy: whose PROXY header is believed, whether it is required, how long it may take.

A PROXY header states a client address that the receiver cannot check. Believing it from
anyone but your own load balancer lets any client choose the address your app sees, so
headers are believed only from the peers listed in ``trusted``, and a header from any
other peer closes the connection. Every server adapter applies the same
:class:`TrustPolicy` through :meth:`TrustPolicy.admission`.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import math
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from functools import lru_cache
from typing import Final, Literal, NamedTuple

from .decoder import NEED_DATA, HeaderDecoder, NeedData, decode, match_signature
from .errors import (
    ConfigurationError,
    HeaderTimeout,
    InvalidHeader,
    MissingHeader,
    NotAHeader,
    ProxyProtocolError,
    UntrustedHeader,
)
from .header import Address, ProxyHeader
from .rejections import RejectionLog

_new = tuple.__new__

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_TRUSTED",
    "Admission",
    "Admitted",
    "Mode",
    "TrustPolicy",
    "environment_policy",
    "log_rejection",
    "logger",
    "rejection_log",
]

logger = logging.getLogger("proxyproto_mw")
rejection_log: Final = RejectionLog(logger)
"""The process's :class:`~proxyproto_mw.rejections.RejectionLog`: a flood of rejections
is counted rather than written line by line. Its last counts are written at exit."""
atexit.register(rejection_log.flush)

DEFAULT_TRUSTED: Final = ("127.0.0.1", "::1")
"""Loopback only, as gunicorn's and uvicorn's forwarded-address settings default to."""
DEFAULT_TIMEOUT: Final = 10.0
"""Seconds a trusted peer has to complete its header (as go-proxyproto; nginx allows 30)."""
MINIMUM_TIMEOUT: Final = 3.0
"""The specification asks that a header timeout cover a TCP retransmit."""

TRUSTED_VARIABLE: Final = "PROXYPROTO_TRUSTED"
MODE_VARIABLE: Final = "PROXYPROTO_MODE"
TIMEOUT_VARIABLE: Final = "PROXYPROTO_TIMEOUT"


class Mode(str, Enum):
    """What a trusted peer must send."""

    REQUIRE = "require"
    """Every connection from a trusted peer starts with a header, or is closed (the default)."""
    OPTIONAL = "optional"
    """A trusted peer may send a header; connections without one keep the socket address.
    Use it only where every trusted peer is yours and mixes plain and PROXY traffic."""
    OFF = "off"
    """No header is decoded; connections start with application bytes."""


class Admitted(NamedTuple):
    """A connection the policy lets through: its header (or None) and its first bytes."""

    header: ProxyHeader | None
    data: bytes


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as compared with trusted entries: zone removed, IPv4-mapped made IPv4."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    network = ipaddress.ip_network(text, strict=False)
    mapped = network.network_address
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8 as a dual-stack socket reports it.
        prefix = max(network.prefixlen - 96, 0)
        return ipaddress.ip_network(f"{mapped.ipv4_mapped}/{prefix}", strict=False)
    return network


def _parse_address_strict(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = _parse_address(text)
    if address is None:
        raise ValueError(text)
    return address


def _parse_trusted(value: str | Iterable[str]) -> list[str]:
    entries = value.split(",") if isinstance(value, str) else value
    return [entry.strip() for entry in entries if entry.strip()]


class TrustPolicy:
    """Which peers may send a PROXY header, whether they must, and how long they may take.

    - ``trusted``: IP addresses and CIDR networks (IPv4 and IPv6), as a list or a
      comma-separated string; ``*`` trusts every peer, which is safe only where no client
      can reach the port except through your load balancer. Default: loopback only.
    - ``mode``: ``require`` (default), ``optional`` or ``off``; see :class:`Mode`.
    - ``timeout``: seconds for the header to arrive, at least 3 (a TCP retransmit).
    - ``versions``: header versions accepted (1, 2, or both).
    - ``setting``: the name of the setting that lists trusted peers, used in log lines.
    - ``trust_unix_peers``: believe headers on connections without an IP address (UNIX
      sockets, which only local processes reach); otherwise only ``*`` trusts them.

    A peer that is not trusted is served as a plain connection with its own address; if
    it sends a PROXY header, the connection is closed, whatever the mode.
    """

    __slots__ = (
        "_addresses",
        "_any",
        "_networks",
        "_parsed",
        "_verdict",
        "mode",
        "setting",
        "timeout",
        "trust_unix_peers",
        "trusted",
        "versions",
    )

    def __init__(
        self,
        trusted: str | Iterable[str] = DEFAULT_TRUSTED,
        mode: Mode | str = Mode.REQUIRE,
        timeout: float = DEFAULT_TIMEOUT,
        versions: Iterable[int] = (1, 2),
        *,
        setting: str = "trusted",
        trust_unix_peers: bool = False,
    ) -> None:
        self.setting = setting
        self.trust_unix_peers = trust_unix_peers
        self.trusted = tuple(_parse_trusted(trusted))
        self._any = "*" in self.trusted
        parsed: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in self.trusted:
            if entry == "*":
                continue
            try:
                if "/" in entry:
                    networks.append(_parse_network(entry))
                else:
                    parsed.add(_parse_address_strict(entry))
            except ValueError:
                raise ConfigurationError(
                    f"{setting}: {entry!r} is neither an IP address, a CIDR network nor '*'"
                ) from None
        self._parsed = frozenset(parsed)
        # The fast path: peers as getpeername() writes them.
        self._addresses = frozenset(str(address) for address in parsed)
        self._networks = tuple(networks)
        self._verdict = lru_cache(maxsize=4096)(self._decide)
        try:
            self.mode = Mode(mode.lower() if isinstance(mode, str) else mode)
        except ValueError:
            raise ConfigurationError(
                f"mode: {mode!r} is not one of require, optional, off"
            ) from None
        if (
            not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not timeout >= MINIMUM_TIMEOUT
        ):
            raise ConfigurationError(
                f"timeout: {timeout!r} must be a number of seconds, at least {MINIMUM_TIMEOUT:g}"
            )
        self.timeout = float(timeout)
        self.versions = frozenset(versions)
        if not self.versions or not self.versions <= {1, 2}:
            raise ConfigurationError(f"versions: {sorted(self.versions)!r} must be 1, 2 or both")

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        trusted: str | Iterable[str] = DEFAULT_TRUSTED,
        mode: Mode | str = Mode.REQUIRE,
        timeout: float = DEFAULT_TIMEOUT,
        versions: Iterable[int] = (1, 2),
        setting: str = TRUSTED_VARIABLE,
        trust_unix_peers: bool = False,
    ) -> TrustPolicy:
        """A policy from ``PROXYPROTO_TRUSTED``, ``PROXYPROTO_MODE`` and ``PROXYPROTO_TIMEOUT``.

        A variable that is unset keeps the given default; a variable set to a value that
        cannot be used raises :class:`ConfigurationError` naming it.
        """
        env = os.environ if environ is None else environ
        if TRUSTED_VARIABLE in env:
            trusted = env[TRUSTED_VARIABLE]
            if not _parse_trusted(trusted):
                raise ConfigurationError(
                    f"{TRUSTED_VARIABLE} is empty: list the load balancers' addresses or networks"
                )
        if MODE_VARIABLE in env:
            mode = env[MODE_VARIABLE].strip()
        raw_timeout = env.get(TIMEOUT_VARIABLE)
        if raw_timeout is not None:
            try:
                timeout = float(raw_timeout)
            except ValueError:
                raise ConfigurationError(
                    f"{TIMEOUT_VARIABLE}={raw_timeout!r} is not a number of seconds"
                ) from None
        try:
            return cls(
                trusted,
                mode,
                timeout,
                versions,
                setting=setting,
                trust_unix_peers=trust_unix_peers,
            )
        except ConfigurationError as error:
            raise ConfigurationError(_name_variable(str(error), env)) from None

    def __repr__(self) -> str:
        return (
            f"TrustPolicy(trusted={','.join(self.trusted)!r}, mode={self.mode.value!r}, "
            f"timeout={self.timeout:g}, versions={sorted(self.versions)!r})"
        )

    def describe(self) -> str:
        """One line saying what the policy does, for a server to log at start-up."""
        if self.mode is Mode.OFF:
            return "PROXY protocol off: no header is read, connections keep their own addresses"
        versions = " and ".join(f"v{version}" for version in sorted(self.versions))
        trusted = "every peer" if self._any else ", ".join(self.trusted) or "no peer"
        if self.trust_unix_peers and not self._any:
            trusted += " and UNIX-socket peers"
        others = "" if self._any else "; other peers are served with their own address"
        return (
            f"PROXY protocol on (mode {self.mode.value}, {versions}): headers believed from "
            f"{trusted} ({self.setting}) within {self.timeout:g} s{others}"
        )

    def trusts(self, host: str | None) -> bool:
        """Whether a header from the peer at ``host`` (an IP address) is believed."""
        return self._verdict(host)  # the last 4,096 hosts' verdicts are kept

    def _decide(self, host: str | None) -> bool:
        if self._any:
            return True
        if host is None:
            return self.trust_unix_peers
        if host in self._addresses:
            return True
        address = _parse_address(host)
        if address is None:
            return False
        if address in self._parsed:
            return True
        return any(address in network for network in self._networks)

    def admission(self, peer: Address | None) -> Admission | None:
        """The admission for a new connection from ``peer``, or None when mode is ``off``."""
        if self.mode is Mode.OFF:
            return None
        return Admission(self, peer)

    def admit(self, peer: Address | None, data: bytes) -> Admitted | Admission:
        """A new connection from ``peer`` (mode ``require`` or ``optional``), by its first
        bytes: :class:`Admitted` when they decide it, else its :class:`Admission`, to be
        fed the next bytes. Raises what :meth:`Admission.receive` raises.

        Most connections are decided here without an :class:`Admission`: a trusted
        balancer's first read holds its whole header.
        """
        if self._verdict(peer[0] if peer else None):
            try:
                decoded = decode(data)
            except ProxyProtocolError:
                decoded = NEED_DATA  # the admission says why, or serves it (mode optional)
            if decoded is not NEED_DATA and decoded.header.version in self.versions:
                return _new(Admitted, (decoded.header, decoded.rest))
        admission = Admission(self, peer)
        admitted = admission.receive(data)
        return admission if admitted is NEED_DATA else admitted


_environment_policy: TrustPolicy | None = None


def environment_policy() -> TrustPolicy:
    """The policy from the ``PROXYPROTO_*`` variables, read once per process."""
    global _environment_policy  # noqa: PLW0603
    if _environment_policy is None:
        _environment_policy = TrustPolicy.from_environ()
    return _environment_policy


def _name_variable(message: str, env: Mapping[str, str]) -> str:
    """Name the variable in an error about a value that came from the environment."""
    for field, variable in (("mode", MODE_VARIABLE), ("timeout", TIMEOUT_VARIABLE)):
        if message.startswith(field + ":") and variable in env:
            return variable + message[len(field) :]
    return message


class Admission:
    """One connection's way past the policy: feed its first bytes to :meth:`receive`.

    It answers :data:`~proxyproto_mw.decoder.NEED_DATA` or :class:`Admitted`, or raises a
    :class:`~proxyproto_mw.errors.ProxyProtocolError` whose message is the reason to close.
    """

    __slots__ = ("_decoder", "_policy", "peer", "trusted")

    def __init__(self, policy: TrustPolicy, peer: Address | None) -> None:
        self._policy = policy
        self.peer = peer
        self.trusted = policy.trusts(peer[0] if peer else None)
        # Made only when a header arrives in pieces; most come whole in the first read.
        self._decoder: HeaderDecoder | None = None

    def receive(self, data: bytes) -> Admitted | Literal[NeedData.NEED_DATA]:
        """Feed the connection's next bytes."""
        if not self.trusted:
            return self._receive_untrusted(data)
        try:
            if self._decoder is None:
                decoded = decode(data)
                if decoded is NEED_DATA:
                    self._buffer(data)
                    return NEED_DATA
            else:
                decoded = self._decoder.feed(data)
        except NotAHeader as error:
            if self._policy.mode is Mode.REQUIRE:
                raise MissingHeader(
                    f"no PROXY header from trusted peer {self._host} "
                    f"(mode is require; the connection starts with {error.data[:12]!r}); "
                    f"to try without a load balancer, set {MODE_VARIABLE}=optional or "
                    "send one with curl --haproxy-protocol"
                ) from None
            return Admitted(None, error.data)
        if decoded is NEED_DATA:
            return NEED_DATA
        header = decoded.header
        if header.version not in self._policy.versions:
            accepted = " and ".join(f"v{v}" for v in sorted(self._policy.versions))
            raise InvalidHeader(f"v{header.version} PROXY header, but only {accepted} accepted")
        return _new(Admitted, (header, decoded.rest))  # Admitted(...) without its Python __new__

    def _receive_untrusted(self, data: bytes) -> Admitted | Literal[NeedData.NEED_DATA]:
        buffered = self._decoder.buffered + data if self._decoder is not None else data
        signature = match_signature(buffered)
        if signature is None:
            self._buffer(data)
            return NEED_DATA
        if signature:
            setting = self._policy.setting
            if self.peer:
                advice = (
                    f"add {self._host} to {setting} if it is your load balancer; behind an "
                    "AWS NLB that preserves client IPs the peer is the client itself, see "
                    "README#aws-nlb-trust"
                )
            else:
                advice = f"peers without an IP address are trusted only by '*' in {setting}"
            raise UntrustedHeader(
                f"PROXY header from {self._host}, which is not trusted: "
                f"it is not believed ({advice})"
            )
        return Admitted(None, buffered)

    def _buffer(self, data: bytes) -> None:
        if self._decoder is None:
            self._decoder = HeaderDecoder()
        self._decoder.feed(data)

    @property
    def holds_every_byte(self) -> bool:
        """Whether every byte fed so far, and every later one up to the header's end, is part
        of the header or of a connection that will be refused: a reader of a socket may
        take them off it, and wait for new bytes only. False while bytes fed may still
        turn out to be the application's (a peer that is not trusted, mode ``optional``),
        that is until a signature is complete."""
        if not self.trusted:
            return False
        if self._policy.mode is Mode.REQUIRE:
            return True
        return self._decoder is not None and bool(match_signature(self._decoder.buffered))

    @property
    def _host(self) -> str:
        return self.peer[0] if self.peer else "a peer without an IP address"

    def timed_out(self) -> ProxyProtocolError:
        """The error to log when the header did not arrive within the policy's timeout."""
        received = 0 if self._decoder is None else len(self._decoder.buffered)
        expected = "PROXY header" if self.trusted else "request"
        return HeaderTimeout(
            f"no complete {expected} within {self._policy.timeout:g} s ({received} bytes received)"
        )


def log_rejection(peer: Address | str | None, error: ProxyProtocolError) -> None:
    """Log, as one WARNING line, why a connection is closed; count it instead when the same
    peer floods the log with the same kind of rejection (see :mod:`~proxyproto_mw.rejections`).
    """
    if isinstance(peer, tuple):
        host = peer[0]
        where = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    else:
        host = where = peer or "unknown peer"
    rejection_log.reject(where, host, type(error).__name__, error)
