"""The trust policy: whose header is believed, what a connection must send, and the log line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import pytest

from proxyproto_mw import (
    NEED_DATA,
    Admission,
    Admitted,
    Command,
    ConfigurationError,
    Family,
    HeaderTimeout,
    InvalidHeader,
    MissingHeader,
    Mode,
    ProxyHeader,
    ProxyProtocolError,
    TransportProtocol,
    TrustPolicy,
    UntrustedHeader,
    encode_v2,
)
from proxyproto_mw.policy import log_rejection, rejection_log
from proxyproto_mw.rejections import BURST

V1 = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 80\r\n"
V1_HEADER = ProxyHeader(
    1,
    Command.PROXY,
    Family.INET,
    TransportProtocol.STREAM,
    ("198.51.100.22", 35646),
    ("203.0.113.7", 80),
)
V2 = encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443))
V2_HEADER = ProxyHeader(
    2,
    Command.PROXY,
    Family.INET,
    TransportProtocol.STREAM,
    ("192.0.2.1", 56324),
    ("198.51.100.7", 443),
)
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
BALANCER = ("10.0.0.5", 40000)
STRANGER = ("203.0.113.99", 51515)


# --- which peers are trusted ---------------------------------------------------------------


def test_defaults_trust_loopback_only() -> None:
    policy = TrustPolicy()
    assert policy.trusted == ("127.0.0.1", "::1")
    assert (policy.mode, policy.timeout, policy.versions) == (Mode.REQUIRE, 10.0, frozenset({1, 2}))
    assert policy.trusts("127.0.0.1")
    assert policy.trusts("::1")
    assert policy.trusts("::ffff:127.0.0.1")
    for host in ("127.0.0.2", "10.0.0.1", "::2", "0.0.0.0", "localhost", "", None):
        assert not policy.trusts(host), host


@pytest.mark.parametrize(
    ("trusted", "yes", "no"),
    [
        pytest.param("10.0.0.5", ["10.0.0.5"], ["10.0.0.6", "127.0.0.1"], id="ipv4-address"),
        pytest.param(
            "10.0.0.0/8",
            ["10.0.0.0", "10.255.255.255"],
            ["11.0.0.1", "9.255.255.255"],
            id="v4-cidr",
        ),
        pytest.param("10.1.2.3/8", ["10.9.9.9"], ["11.1.2.3"], id="v4-cidr-host-bits-set"),
        pytest.param("2001:DB8::1", ["2001:db8::1"], ["2001:db8::2", "::1"], id="ipv6-address"),
        pytest.param(
            "2001:db8::/32", ["2001:db8:ffff::1"], ["2001:db9::1", "10.0.0.1"], id="v6-cidr"
        ),
        pytest.param(
            " 10.0.0.5 ,, 192.168.0.0/16 , fd00::/8 ",
            ["10.0.0.5", "192.168.44.1", "fd12::1"],
            ["10.0.0.6", "fe80::1"],
            id="comma-string-with-whitespace",
        ),
        pytest.param(
            ["10.0.0.5", " 172.16.0.0/12 ", ""],
            ["10.0.0.5", "172.31.255.254"],
            ["172.32.0.1"],
            id="list",
        ),
        pytest.param("*", ["203.0.113.99", "2001:db8::1", None], [], id="star"),
        pytest.param(" * ", ["198.51.100.1"], [], id="star-with-spaces"),
        pytest.param(
            "10.0.0.0/8",
            ["::ffff:10.1.2.3", "::FFFF:10.1.2.3"],
            ["::ffff:11.1.2.3", "::10.1.2.3"],
            id="ipv4-mapped-peer-in-v4-network",
        ),
        pytest.param(
            "10.1.2.3", ["::ffff:10.1.2.3"], ["::ffff:10.1.2.4"], id="ipv4-mapped-peer-address"
        ),
    ],
)
def test_trusts(trusted: str | list[str], yes: list[str | None], no: list[str | None]) -> None:
    policy = TrustPolicy(trusted)
    for host in yes:
        assert policy.trusts(host), host
    for host in no:
        assert not policy.trusts(host), host


def test_trusted_entries_are_kept_as_given_without_blanks() -> None:
    assert TrustPolicy(" 10.0.0.5 ,, 192.168.0.0/16 ").trusted == ("10.0.0.5", "192.168.0.0/16")
    assert TrustPolicy(["fd00::/8", " "]).trusted == ("fd00::/8",)


@pytest.mark.parametrize(
    ("trusted", "host"),
    [
        pytest.param("::ffff:10.1.2.3", "::ffff:10.1.2.3", id="mapped-entry-same-text"),
        pytest.param("fe80::1", "fe80::1%eth0", id="scoped-link-local"),
        pytest.param("::1", "0:0:0:0:0:0:0:1", id="uncompressed-loopback"),
    ],
)
def test_trusts_any_spelling_of_a_trusted_address(trusted: str, host: str) -> None:
    assert TrustPolicy(trusted).trusts(host)


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.256", "10.0.0.0/33", "fd00::/129", "example.com", "10.0.0.1;10.0.0.2", "**"],
)
def test_bad_trusted_entry_is_a_configuration_error_naming_the_setting(entry: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrustPolicy(f"127.0.0.1,{entry}")
    assert str(caught.value).startswith("trusted: ")
    assert repr(entry) in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"^--proxy-allow-from: "):
        TrustPolicy([entry], setting="--proxy-allow-from")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"mode": "sometimes"}, "mode: 'sometimes' is not one of", id="mode"),
        pytest.param({"timeout": 2.9}, "timeout: 2.9 must be", id="timeout-below-3"),
        pytest.param({"timeout": 0}, "timeout: 0 must be", id="timeout-0"),
        pytest.param({"timeout": float("nan")}, "timeout: nan must be", id="timeout-nan"),
        pytest.param({"timeout": "10"}, "timeout: '10' must be", id="timeout-string"),
        pytest.param({"versions": [3]}, "versions: [3] must be 1, 2 or both", id="versions-3"),
        pytest.param({"versions": []}, "versions: [] must be 1, 2 or both", id="versions-none"),
    ],
)
def test_bad_setting_is_a_configuration_error_naming_it(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrustPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_good_settings() -> None:
    policy = TrustPolicy("10.0.0.0/8", mode="OPTIONAL", timeout=3, versions=[2])
    assert (policy.mode, policy.timeout, policy.versions) == (Mode.OPTIONAL, 3.0, frozenset({2}))
    assert TrustPolicy(mode=Mode.OFF).mode is Mode.OFF
    assert TrustPolicy(mode="require").mode is Mode.REQUIRE


# --- from the environment -----------------------------------------------------------------


def test_from_environ_unset_keeps_defaults() -> None:
    policy = TrustPolicy.from_environ({"UNRELATED": "1"})
    assert policy.trusted == ("127.0.0.1", "::1")
    # Log lines name the variable that would make a peer trusted, even while it is unset.
    assert (policy.mode, policy.timeout, policy.setting) == (
        Mode.REQUIRE,
        10.0,
        "PROXYPROTO_TRUSTED",
    )
    given = TrustPolicy.from_environ({}, trusted="10.0.0.0/8", mode="optional", timeout=4)
    assert (given.trusted, given.mode, given.timeout) == (("10.0.0.0/8",), Mode.OPTIONAL, 4.0)


def test_from_environ_reads_the_variables() -> None:
    policy = TrustPolicy.from_environ(
        {
            "PROXYPROTO_TRUSTED": " 10.0.0.0/8 , fd00::/8 ",
            "PROXYPROTO_MODE": " Optional ",
            "PROXYPROTO_TIMEOUT": "4.5",
        },
        trusted="192.0.2.1",
        mode="require",
        timeout=20,
    )
    assert policy.trusted == ("10.0.0.0/8", "fd00::/8")
    assert policy.trusts("10.200.0.1") and policy.trusts("fd00::1")
    assert not policy.trusts("192.0.2.1")
    assert (policy.mode, policy.timeout) == (Mode.OPTIONAL, 4.5)
    assert policy.setting == "PROXYPROTO_TRUSTED"


def test_from_environ_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXYPROTO_TRUSTED", "*")
    monkeypatch.setenv("PROXYPROTO_MODE", "off")
    monkeypatch.delenv("PROXYPROTO_TIMEOUT", raising=False)
    policy = TrustPolicy.from_environ()
    assert policy.trusts("203.0.113.99")
    assert (policy.mode, policy.timeout) == (Mode.OFF, 10.0)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "PROXYPROTO_TRUSTED", "10.0.0.300", "PROXYPROTO_TRUSTED: '10.0.0.300'", id="trusted"
        ),
        pytest.param("PROXYPROTO_TRUSTED", "", "PROXYPROTO_TRUSTED is empty", id="trusted-empty"),
        pytest.param("PROXYPROTO_TRUSTED", "  ", "PROXYPROTO_TRUSTED is empty", id="trusted-blank"),
        pytest.param("PROXYPROTO_MODE", "sometimes", "PROXYPROTO_MODE: 'sometimes'", id="mode"),
        pytest.param("PROXYPROTO_MODE", "", "PROXYPROTO_MODE: ''", id="mode-empty"),
        pytest.param(
            "PROXYPROTO_TIMEOUT", "ten", "PROXYPROTO_TIMEOUT='ten' is not a number", id="timeout"
        ),
        pytest.param("PROXYPROTO_TIMEOUT", "2", "PROXYPROTO_TIMEOUT: 2.0 must be", id="timeout-2"),
        pytest.param(
            "PROXYPROTO_TIMEOUT", "nan", "PROXYPROTO_TIMEOUT: nan must be", id="timeout-nan"
        ),
    ],
)
def test_from_environ_bad_value_names_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrustPolicy.from_environ({variable: value})
    assert str(caught.value).startswith(message)


def test_from_environ_trusted_without_entries_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="PROXYPROTO_TRUSTED is empty"):
        TrustPolicy.from_environ({"PROXYPROTO_TRUSTED": " , "})


def test_from_environ_bad_argument_does_not_blame_an_unset_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TrustPolicy.from_environ({}, timeout=1)
    assert "PROXYPROTO_TIMEOUT" not in str(caught.value)


# --- admission of one connection --------------------------------------------------------------


def policy(mode: Mode, versions: Iterable[int] = (1, 2)) -> TrustPolicy:
    return TrustPolicy("10.0.0.0/8, fd00::/8", mode=mode, versions=versions)


def receive_all(policy: TrustPolicy, peer: tuple[str, int] | None, chunks: list[bytes]) -> Admitted:
    """Feed ``chunks``; every one but the last must answer NEED_DATA, the last Admitted."""
    admission = policy.admission(peer)
    assert admission is not None
    for chunk in chunks[:-1]:
        assert admission.receive(chunk) is NEED_DATA, chunk
    result = admission.receive(chunks[-1])
    assert isinstance(result, Admitted), result
    return result


@pytest.mark.parametrize("mode", [Mode.REQUIRE, Mode.OPTIONAL])
@pytest.mark.parametrize(
    ("chunks", "header", "data"),
    [
        pytest.param([V1 + REQUEST], V1_HEADER, REQUEST, id="v1-one-chunk"),
        pytest.param([V1[:1], V1[1:20], V1[20:] + b"GET"], V1_HEADER, b"GET", id="v1-split"),
        pytest.param([V2], V2_HEADER, b"", id="v2-alone"),
        pytest.param(
            [V2[:5], V2[5:13], V2[13:17], V2[17:] + REQUEST], V2_HEADER, REQUEST, id="v2-split"
        ),
    ],
)
def test_trusted_peer_with_header_is_admitted_with_its_header(
    mode: Mode, chunks: list[bytes], header: ProxyHeader, data: bytes
) -> None:
    assert receive_all(policy(mode), BALANCER, chunks) == (header, data)
    assert receive_all(policy(mode), ("fd00::7", 1, 0, 0), chunks) == (header, data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([REQUEST], id="get"),
        pytest.param([b"P", b"R", b"I * HTTP/2.0\r\n"], id="h2-preface-split"),
        pytest.param([b"\r\n\r\n", b"\x00\r\nQUIX"], id="v2-signature-prefix"),
    ],
)
def test_trusted_peer_without_header_in_require_mode_is_refused(chunks: list[bytes]) -> None:
    admission = policy(Mode.REQUIRE).admission(BALANCER)
    assert admission is not None and admission.trusted
    for chunk in chunks[:-1]:
        assert admission.receive(chunk) is NEED_DATA
    with pytest.raises(MissingHeader) as caught:
        admission.receive(chunks[-1])
    assert "trusted peer 10.0.0.5" in str(caught.value)
    assert "mode is require" in str(caught.value)


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([REQUEST], id="get"),
        pytest.param([b"P", b"R", b"I * HTTP/2.0\r\n"], id="h2-preface-split"),
        pytest.param([b"\r\n\r\n", b"\x00\r\nQUIX"], id="v2-signature-prefix"),
        pytest.param([b"\x16\x03\x01\x02\x00"], id="tls"),
    ],
)
def test_trusted_peer_without_header_in_optional_mode_keeps_every_byte(
    chunks: list[bytes],
) -> None:
    assert receive_all(policy(Mode.OPTIONAL), BALANCER, chunks) == (None, b"".join(chunks))


@pytest.mark.parametrize("mode", [Mode.REQUIRE, Mode.OPTIONAL])
def test_trusted_peer_with_invalid_header_is_refused_in_every_mode(mode: Mode) -> None:
    admission = policy(mode).admission(BALANCER)
    assert admission is not None
    with pytest.raises(InvalidHeader, match=r"invalid IPv4 address '01\.2\.3\.4'"):
        admission.receive(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n")


@pytest.mark.parametrize("mode", [Mode.REQUIRE, Mode.OPTIONAL])
@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([V1 + REQUEST], id="v1"),
        pytest.param([b"PRO", b"XY", b" TCP4 1.2.3.4"], id="v1-split"),
        pytest.param([b"PROXY UNKNOWN\r\n"], id="v1-unknown"),
        pytest.param([V2], id="v2"),
        pytest.param([V2[:3], V2[3:11], V2[11:12]], id="v2-split-signature-only"),
    ],
)
def test_untrusted_peer_sending_a_header_is_refused(mode: Mode, chunks: list[bytes]) -> None:
    admission = policy(mode).admission(STRANGER)
    assert admission is not None and not admission.trusted
    for chunk in chunks[:-1]:
        assert admission.receive(chunk) is NEED_DATA
    with pytest.raises(UntrustedHeader) as caught:
        admission.receive(chunks[-1])
    message = str(caught.value)
    assert "PROXY header from 203.0.113.99, which is not trusted" in message
    assert "add 203.0.113.99 to trusted" in message


def test_untrusted_header_names_the_environment_variable() -> None:
    from_env = TrustPolicy.from_environ({"PROXYPROTO_TRUSTED": "10.0.0.0/8"})
    admission = from_env.admission(STRANGER)
    assert admission is not None
    with pytest.raises(UntrustedHeader, match="to PROXYPROTO_TRUSTED"):
        admission.receive(V1)


def test_peer_without_address_is_untrusted() -> None:
    admission = policy(Mode.REQUIRE).admission(None)
    assert admission is not None and not admission.trusted
    with pytest.raises(UntrustedHeader) as caught:
        admission.receive(V2)
    assert str(caught.value).startswith("PROXY header from a peer without an IP address")
    assert "trusted only by '*' in trusted" in str(caught.value)
    assert receive_all(policy(Mode.REQUIRE), None, [REQUEST]) == (None, REQUEST)


@pytest.mark.parametrize("mode", [Mode.REQUIRE, Mode.OPTIONAL])
@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([REQUEST], id="get"),
        pytest.param([b"P", b"", b"OST / HTTP/1.1\r\n"], id="post-split"),
        pytest.param([b"\r\n\r\n\x00", b"\r\nQUIT!"], id="v2-signature-prefix"),
        pytest.param([b"\x16\x03\x01"], id="tls"),
    ],
)
def test_untrusted_peer_with_plain_bytes_is_admitted_unchanged(
    mode: Mode, chunks: list[bytes]
) -> None:
    assert receive_all(policy(mode), STRANGER, chunks) == (None, b"".join(chunks))


def test_mode_off_has_no_admission() -> None:
    assert policy(Mode.OFF).admission(BALANCER) is None
    assert policy(Mode.OFF).admission(STRANGER) is None


@pytest.mark.parametrize(
    ("versions", "data", "message"),
    [
        pytest.param({1}, V2, "v2 PROXY header, but only v1 accepted", id="v1-only"),
        pytest.param({2}, V1, "v1 PROXY header, but only v2 accepted", id="v2-only"),
    ],
)
def test_versions_not_accepted_are_invalid(versions: set[int], data: bytes, message: str) -> None:
    admission = policy(Mode.REQUIRE, versions).admission(BALANCER)
    assert admission is not None
    with pytest.raises(InvalidHeader, match=message):
        admission.receive(data)


def test_timed_out_says_how_long_and_how_much_arrived() -> None:
    admission = TrustPolicy(timeout=3).admission(("127.0.0.1", 1))
    assert admission is not None
    assert admission.receive(b"PROXY") is NEED_DATA
    error = admission.timed_out()
    assert isinstance(error, HeaderTimeout)
    assert str(error) == "no complete PROXY header within 3 s (5 bytes received)"


# --- the log line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "where"),
    [
        pytest.param(("10.0.0.5", 40000), "10.0.0.5:40000", id="ipv4"),
        pytest.param(("2001:db8::1", 443), "[2001:db8::1]:443", id="ipv6"),
        pytest.param("unix:/run/app.sock", "unix:/run/app.sock", id="text"),
        pytest.param(None, "unknown peer", id="none"),
    ],
)
def test_log_rejection_logs_one_warning(
    caplog: pytest.LogCaptureFixture, peer: tuple[str, int] | str | None, where: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxyproto_mw")
    log_rejection(peer, MissingHeader("no PROXY header from trusted peer 10.0.0.5"))
    records = [record for record in caplog.records if record.name == "proxyproto_mw"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].getMessage() == (
        f"closing connection from {where}: no PROXY header from trusted peer 10.0.0.5"
    )


def test_log_rejection_counts_a_flood_from_one_peer(caplog: pytest.LogCaptureFixture) -> None:
    """The process's log: a peer refused for the same kind of reason again and again gets its
    first lines in full, then the rest are counted, not written (tests/test_rejections.py
    has the whole story)."""
    caplog.set_level(logging.DEBUG, logger="proxyproto_mw")
    rejection_log.flush()
    for port in range(1000):
        log_rejection(("10.9.9.9", port), InvalidHeader("v1 header has an invalid port"))
    rejection_log.flush()
    lines = [record.getMessage() for record in caplog.records if record.name == "proxyproto_mw"]
    assert lines[:2] == [
        "closing connection from 10.9.9.9:0: v1 header has an invalid port",
        "closing connection from 10.9.9.9:1: v1 header has an invalid port",
    ]
    assert len(lines) == BURST + 1
    assert re.fullmatch(
        rf"suppressed {1000 - BURST} more rejections from 10\.9\.9\.9 \(InvalidHeader\) "
        r"in the last \d+ s",
        lines[-1],
    ), lines[-1]


# --- advice in the messages and the start-up line -----------------------------------------


def test_missing_header_says_how_to_try_without_a_balancer() -> None:
    admission = TrustPolicy().admission(("127.0.0.1", 1))
    assert admission is not None
    with pytest.raises(MissingHeader) as raised:
        admission.receive(REQUEST)
    assert "PROXYPROTO_MODE=optional" in str(raised.value)
    assert "curl --haproxy-protocol" in str(raised.value)


def test_untrusted_header_points_to_the_nlb_guide() -> None:
    """AWS NLB with client IP preservation: the peer is the client, whom no allowlist of
    balancer addresses names; the message says so instead of only 'add it'."""
    admission = TrustPolicy("10.0.0.0/8", setting="PROXYPROTO_TRUSTED").admission(STRANGER)
    assert admission is not None
    with pytest.raises(UntrustedHeader) as raised:
        admission.receive(V2)
    message = str(raised.value)
    assert "add 203.0.113.99 to PROXYPROTO_TRUSTED if it is your load balancer" in message
    assert "README#aws-nlb-trust" in message


@pytest.mark.parametrize(
    ("policy", "line"),
    [
        (
            TrustPolicy(),
            "PROXY protocol on (mode require, v1 and v2): headers believed from 127.0.0.1, ::1 "
            "(trusted) within 10 s; other peers are served with their own address",
        ),
        (
            TrustPolicy(
                "10.0.0.0/8",
                "optional",
                5,
                [2],
                setting="--proxy-allow-from",
                trust_unix_peers=True,
            ),
            "PROXY protocol on (mode optional, v2): headers believed from 10.0.0.0/8 and "
            "UNIX-socket peers (--proxy-allow-from) within 5 s; other peers are served with "
            "their own address",
        ),
        (
            TrustPolicy("*", setting="PROXYPROTO_TRUSTED"),
            "PROXY protocol on (mode require, v1 and v2): headers believed from every peer "
            "(PROXYPROTO_TRUSTED) within 10 s",
        ),
        (
            TrustPolicy(mode="off"),
            "PROXY protocol off: no header is read, connections keep their own addresses",
        ),
    ],
    ids=["default", "optional-v2-unix", "star", "off"],
)
def test_describe_is_one_line_for_the_start_up_log(policy: TrustPolicy, line: str) -> None:
    assert policy.describe() == line


def _outcome(step: Any) -> object:
    """What ``step()`` answered, or the type and message of what it raised."""
    try:
        return step()
    except ProxyProtocolError as error:
        return type(error), str(error)


def _by_admission(policy: TrustPolicy, peer: Any, chunks: list[bytes]) -> list[object]:
    admission = policy.admission(peer)
    assert admission is not None
    return [_outcome(lambda chunk=chunk: admission.receive(chunk)) for chunk in chunks]


def _by_admit(policy: TrustPolicy, peer: Any, chunks: list[bytes]) -> list[object]:
    first = _outcome(lambda: policy.admit(peer, chunks[0]))
    if not isinstance(first, Admission):
        return [first]
    rest = [_outcome(lambda chunk=chunk: first.receive(chunk)) for chunk in chunks[1:]]
    return [NEED_DATA, *rest]


ADMIT_CASES = {
    "v1 whole": [V1 + REQUEST],
    "v1 split": [V1[:1], V1[1:20], V1[20:] + b"GET"],
    "v2 alone": [V2],
    "v2 split": [V2[:5], V2[5:13], V2[13:17], V2[17:] + REQUEST],
    "request": [REQUEST],
    "h2 preface split": [b"P", b"R", b"I * HTTP/2.0\r\n"],
    "invalid v1": [b"PROXY TCP4 10.0.0.1 nonsense\r\n" + REQUEST],
    "invalid v2": [V2[:12] + b"\x99" + V2[13:]],
}


@pytest.mark.parametrize("versions", [(1, 2), (1,), (2,)])
@pytest.mark.parametrize("mode", [Mode.REQUIRE, Mode.OPTIONAL])
@pytest.mark.parametrize("peer", [BALANCER, STRANGER, None], ids=["balancer", "stranger", "unix"])
@pytest.mark.parametrize("case", sorted(ADMIT_CASES))
def test_admit_decides_as_the_admission(
    case: str, peer: Any, mode: Mode, versions: tuple[int, ...]
) -> None:
    """``admit`` (the first bytes, without an Admission when they decide) answers and
    raises exactly as an Admission fed the same bytes."""
    chunks = ADMIT_CASES[case]
    by_admission = _by_admission(policy(mode, versions), peer, chunks)
    by_admit = _by_admit(policy(mode, versions), peer, chunks)
    assert _decision(by_admit) == _decision(by_admission)


def _decision(outcomes: list[object]) -> tuple[int, object] | None:
    """The first outcome that is not NEED_DATA, with the chunk it came at."""
    for index, outcome in enumerate(outcomes):
        if outcome is not NEED_DATA:
            return index, outcome
    return None
