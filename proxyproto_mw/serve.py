"""``proxyproto-mw serve``: uvicorn with the PROXY protocol, TLS behind the header included.

``proxyproto-mw serve APP [--proxy-trusted ...] [--proxy-mode ...] [--proxy-timeout ...]
[any uvicorn option]`` runs uvicorn with this package's protocol classes. The PROXY
options override the ``PROXYPROTO_*`` variables; the policy and the TLS settings reach
uvicorn's worker and reload processes inside the protocol class, which pickles (the key's
password never goes through the environment). With ``--ssl-keyfile`` / ``--ssl-certfile``
the header is read in clear first and TLS starts after it on the same connection, as
behind an ELB TCP listener on 443 or nginx's ``listen 443 proxy_protocol ssl``.
"""

from __future__ import annotations

import logging
import os
import platform
import ssl
from importlib.metadata import version as installed_version
from importlib.util import find_spec
from typing import Any

import click
from uvicorn.main import main as uvicorn_main

from . import __version__
from . import uvicorn as protocols
from .errors import ConfigurationError
from .policy import (
    DEFAULT_TIMEOUT,
    DEFAULT_TRUSTED,
    MODE_VARIABLE,
    TIMEOUT_VARIABLE,
    TRUSTED_VARIABLE,
    Mode,
    TrustPolicy,
)
from .uvicorn import TLSSettings

__all__ = ["serve"]

_HTTP_CHOICES = ("auto", "h11", "httptools")
_LEFT_OUT = frozenset({"http", "http2", "version"})
"""uvicorn options ``serve`` replaces (``--http``, ``--version``) or cannot offer
(``--http2`` needs uvicorn's own zttp protocol, which reads no PROXY header)."""


def _protocol_class(choice: str, policy: TrustPolicy, tls: TLSSettings | None) -> Any:
    """This package's uvicorn protocol for ``--http`` (httptools when installed, for
    ``auto``), carrying ``policy`` and ``tls`` into uvicorn's worker and reload processes."""
    has_httptools = find_spec("httptools") is not None
    if choice == "httptools" and not has_httptools:
        raise click.UsageError(
            "--http httptools: httptools is not installed "
            "(pip install httptools, or use --http h11)"
        )
    # The classes themselves: looking them up as uvicorn does would check the environment's
    # policy, which the flags may override.
    base: Any = protocols._PROTOCOLS["H11Protocol"]
    if choice != "h11" and has_httptools:
        base = protocols._PROTOCOLS["HttpToolsProtocol"]
    try:
        return base.with_policy(policy, tls=tls)
    except (OSError, ssl.SSLError) as error:
        raise click.UsageError(f"cannot load the TLS certificate or key: {error}") from None


def _policy(
    proxy_trusted: str | None, proxy_mode: str | None, proxy_timeout: float | None
) -> TrustPolicy:
    """The policy of the flags, each overriding its ``PROXYPROTO_*`` variable; an error
    names the flag or the variable that holds the bad value."""
    if proxy_trusted is not None and not proxy_trusted.strip(" ,"):
        raise click.UsageError("--proxy-trusted is empty: list the load balancers' addresses")
    overridden = {
        TRUSTED_VARIABLE: proxy_trusted is not None,
        MODE_VARIABLE: proxy_mode is not None,
        TIMEOUT_VARIABLE: proxy_timeout is not None,
    }
    environ = {
        name: os.environ[name]
        for name, flag_given in overridden.items()
        if not flag_given and name in os.environ
    }
    try:
        return TrustPolicy.from_environ(
            environ,
            trusted=DEFAULT_TRUSTED if proxy_trusted is None else proxy_trusted,
            mode=Mode.REQUIRE if proxy_mode is None else proxy_mode,
            timeout=DEFAULT_TIMEOUT if proxy_timeout is None else proxy_timeout,
            setting=TRUSTED_VARIABLE if proxy_trusted is None else "--proxy-trusted",
        )
    except ConfigurationError as error:
        message = str(error)
        # What is still named after the policy's field came from a flag.
        for field, flag in (("mode:", "--proxy-mode:"), ("timeout:", "--proxy-timeout:")):
            if message.startswith(field):
                message = flag + message[len(field) :]
        raise click.UsageError(message) from None


def _serve(
    proxy_trusted: str | None,
    proxy_mode: str | None,
    proxy_timeout: float | None,
    http: str,
    **uvicorn_options: Any,
) -> None:
    policy = _policy(proxy_trusted, proxy_mode, proxy_timeout)
    tls = None
    if uvicorn_options["ssl_certfile"]:
        tls = TLSSettings(
            certfile=uvicorn_options["ssl_certfile"],
            keyfile=uvicorn_options["ssl_keyfile"],
            password=uvicorn_options["ssl_keyfile_password"],
            ssl_version=uvicorn_options["ssl_version"],
            cert_reqs=uvicorn_options["ssl_cert_reqs"],
            ca_certs=uvicorn_options["ssl_ca_certs"],
            ciphers=uvicorn_options["ssl_ciphers"],
        )
    elif uvicorn_options["ssl_keyfile"]:
        raise click.UsageError("--ssl-keyfile needs --ssl-certfile")
    # TLS is ours, after the header: uvicorn must not put its own in front of it. The policy
    # and the TLS settings reach uvicorn's worker and reload processes inside the class.
    for name in ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs"):
        uvicorn_options[name] = None
    uvicorn_options["http"] = _protocol_class(http, policy, tls)
    for param in uvicorn_main.params:
        if param.name in _LEFT_OUT and param.expose_value and param.name != "http":
            uvicorn_options[param.name] = param.default
    if tls is not None:
        logging.getLogger("uvicorn.error").addFilter(_announce_https)
    assert uvicorn_main.callback is not None
    uvicorn_main.callback(**uvicorn_options)


def _announce_https(record: logging.LogRecord) -> bool:
    """uvicorn announces ``http://`` because TLS is ours, not its: say ``https://``."""
    if (
        isinstance(record.msg, str)
        and record.msg.startswith("Uvicorn running on")
        and isinstance(record.args, tuple)
        and record.args[:1] == ("http",)
    ):
        record.args = ("https", *record.args[1:])
    return True


def _print_version(context: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or context.resilient_parsing:
        return
    click.echo(
        f"proxyproto-mw {__version__} (uvicorn {installed_version('uvicorn')}, "
        f"{platform.python_implementation()} {platform.python_version()} on {platform.system()})"
    )
    context.exit()


serve = click.Command(
    "serve",
    callback=_serve,
    help=(
        "Run APP with uvicorn behind a PROXY protocol sender (ELB, NLB, HAProxy). "
        "Takes uvicorn's options; --ssl-* serve TLS after the PROXY header."
    ),
    params=[
        click.Option(
            ["--proxy-trusted"],
            help=(
                "Peers whose PROXY header is believed: IPs, CIDRs or '*' (comma-separated). "
                f"[env {TRUSTED_VARIABLE}; default: 127.0.0.1,::1]"
            ),
        ),
        click.Option(
            ["--proxy-mode"],
            type=click.Choice([mode.value for mode in Mode]),
            help=(
                "require: trusted peers must send a header; optional: they may; off: no "
                f"header is read. [env {MODE_VARIABLE}; default: require]"
            ),
        ),
        click.Option(
            ["--proxy-timeout"],
            type=float,
            help=(
                "Seconds a header may take to arrive, at least 3. "
                f"[env {TIMEOUT_VARIABLE}; default: {DEFAULT_TIMEOUT:g}]"
            ),
        ),
        click.Option(
            ["--http"],
            type=click.Choice(_HTTP_CHOICES),
            default="auto",
            show_default=True,
            help="HTTP parser: auto is httptools when it is installed, else h11.",
        ),
        click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_print_version,
            help="Show the versions of proxyproto-mw, uvicorn and Python, and exit.",
        ),
        *(param for param in uvicorn_main.params if param.name not in _LEFT_OUT),
    ],
)
