"""``proxyproto-mw serve``: uvicorn with the PROXY protocol, TLS behind the header included.

``proxyproto-mw serve APP [--proxy-trusted ...] [--proxy-mode ...] [--proxy-timeout ...]
[any uvicorn option]`` runs uvicorn with this package's protocol classes. The PROXY
options override the ``PROXYPROTO_*`` variables and are handed to uvicorn's worker and
reload processes through them. With ``--ssl-keyfile`` / ``--ssl-certfile`` the header is
read in clear first and TLS starts after it on the same connection, as behind an ELB TCP
listener on 443 or nginx's ``listen 443 proxy_protocol ssl``.
"""

from __future__ import annotations

import json
import os
import ssl
from importlib.util import find_spec
from typing import Any

import click
from uvicorn.config import create_ssl_context
from uvicorn.main import main as uvicorn_main

from . import __version__
from .errors import ConfigurationError
from .policy import MODE_VARIABLE, TIMEOUT_VARIABLE, TRUSTED_VARIABLE, Mode, TrustPolicy
from .uvicorn import H11Protocol, HttpToolsProtocol

__all__ = ["ServeH11Protocol", "ServeHttpToolsProtocol", "main"]

TLS_VARIABLE = "PROXYPROTO_SERVE_TLS"
"""Set by ``serve`` for its own processes: uvicorn's SSL options, as JSON."""

_SSL_OPTIONS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_keyfile_password",
    "ssl_version",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ciphers",
)


def _tls_context_from_environment() -> ssl.SSLContext | None:
    raw = os.environ.get(TLS_VARIABLE)
    if not raw:
        return None
    options = json.loads(raw)
    return create_ssl_context(
        certfile=options["ssl_certfile"],
        keyfile=options["ssl_keyfile"],
        password=options["ssl_keyfile_password"],
        ssl_version=options["ssl_version"],
        cert_reqs=options["ssl_cert_reqs"],
        ca_certs=options["ssl_ca_certs"],
        ciphers=options["ssl_ciphers"],
    )


_tls_context = _tls_context_from_environment()

ServeH11Protocol = H11Protocol.with_policy(None, tls_context=_tls_context)
"""The h11 protocol as ``serve`` runs it: policy from the environment, TLS after the header."""

ServeHttpToolsProtocol = HttpToolsProtocol.with_policy(None, tls_context=_tls_context)
"""The httptools protocol as ``serve`` runs it."""

_HTTP_CLASSES = {
    "h11": "proxyproto_mw.cli:ServeH11Protocol",
    "httptools": "proxyproto_mw.cli:ServeHttpToolsProtocol",
}


def _http_class(choice: str) -> str:
    if choice == "auto":
        return _HTTP_CLASSES["httptools" if find_spec("httptools") else "h11"]
    if choice not in _HTTP_CLASSES:
        raise click.UsageError(f"--http must be auto, h11 or httptools, not {choice!r}")
    return _HTTP_CLASSES[choice]


def _serve(
    proxy_trusted: str | None,
    proxy_mode: str | None,
    proxy_timeout: float | None,
    **uvicorn_options: Any,
) -> None:
    for variable, value in (
        (TRUSTED_VARIABLE, proxy_trusted),
        (MODE_VARIABLE, proxy_mode),
        (TIMEOUT_VARIABLE, None if proxy_timeout is None else repr(proxy_timeout)),
    ):
        if value is not None:
            os.environ[variable] = value
    try:
        policy = TrustPolicy.from_environ()
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from None
    tls = {name: uvicorn_options[name] for name in _SSL_OPTIONS}
    if tls["ssl_certfile"]:
        os.environ[TLS_VARIABLE] = json.dumps(tls)
        try:
            context = _tls_context_from_environment()
        except (OSError, ssl.SSLError) as error:
            raise click.UsageError(f"cannot load the TLS certificate or key: {error}") from None
        # This process imported the classes before the variable was set; worker and
        # reload processes read it when they import them.
        ServeH11Protocol.tls_context = ServeHttpToolsProtocol.tls_context = context
    elif tls["ssl_keyfile"]:
        raise click.UsageError("--ssl-keyfile needs --ssl-certfile")
    else:
        os.environ.pop(TLS_VARIABLE, None)
    for name in ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs"):
        uvicorn_options[name] = None
    uvicorn_options["http"] = _http_class(uvicorn_options["http"])
    click.echo(f"proxyproto-mw: {policy!r}, TLS {'on' if tls['ssl_certfile'] else 'off'}", err=True)
    assert uvicorn_main.callback is not None
    uvicorn_main.callback(**uvicorn_options)


serve = click.Command(
    "serve",
    callback=_serve,
    help=(
        "Run APP with uvicorn behind a PROXY protocol sender (ELB, NLB, HAProxy). "
        "Takes every uvicorn option; --ssl-* serve TLS after the PROXY header."
    ),
    params=[
        click.Option(
            ["--proxy-trusted"],
            help=(
                f"Peers whose PROXY header is believed: IPs, CIDRs or '*' "
                f"(comma-separated). [env {TRUSTED_VARIABLE}; default 127.0.0.1,::1]"
            ),
        ),
        click.Option(
            ["--proxy-mode"],
            type=click.Choice([mode.value for mode in Mode]),
            help=f"require: trusted peers must send a header; optional; off. [env {MODE_VARIABLE}]",
        ),
        click.Option(
            ["--proxy-timeout"],
            type=float,
            help=f"Seconds a header may take to arrive, at least 3. [env {TIMEOUT_VARIABLE}]",
        ),
        *uvicorn_main.params,
    ],
)


@click.group()
@click.version_option(__version__, prog_name="proxyproto-mw")
def main() -> None:
    """PROXY protocol for Python web servers."""


main.add_command(serve)

if __name__ == "__main__":  # pragma: no cover
    main()
