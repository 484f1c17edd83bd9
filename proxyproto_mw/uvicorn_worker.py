"""gunicorn's ASGI workers (the ``uvicorn-worker`` package's) with this package's uvicorn protocols.

``gunicorn -k proxyproto_mw.gunicorn.UvicornWorker app:app --proxy-protocol v2
--proxy-allow-from 10.0.0.0/8`` names these classes through :mod:`proxyproto_mw.gunicorn`,
which imports this module only when they are asked for, so that its WSGI workers need
neither uvicorn nor uvicorn-worker. The settings are read as described there. Without
httptools, ``UvicornWorker`` uses the h11 protocol.
"""

from __future__ import annotations

import ssl
from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker

from .gunicorn import _ChecksProxySettings, policy_from_config
from .uvicorn import _PROTOCOLS, ProxyProtocol, TLSSettings

__all__ = ["UvicornH11Worker", "UvicornWorker", "tls_context_from_config", "tls_from_config"]


def tls_from_config(cfg: Any) -> TLSSettings | None:
    """The TLS of gunicorn's ``--keyfile`` / ``--certfile`` settings, or None."""
    if not cfg.is_ssl:
        return None
    options = cfg.ssl_options
    return TLSSettings(
        certfile=options["certfile"],
        keyfile=options.get("keyfile"),
        password=options.get("password"),
        ssl_version=options.get("ssl_version", ssl.PROTOCOL_TLS_SERVER),
        cert_reqs=options.get("cert_reqs", ssl.CERT_NONE),
        ca_certs=options.get("ca_certs"),
        ciphers=options.get("ciphers"),
    )


def tls_context_from_config(cfg: Any) -> ssl.SSLContext | None:
    """The TLS context of gunicorn's ``--keyfile`` / ``--certfile`` settings, or None."""
    tls = tls_from_config(cfg)
    return None if tls is None else tls.context()


_H11: type[ProxyProtocol] = _PROTOCOLS["H11Protocol"]  # type: ignore[assignment]  # always there


class UvicornWorker(_ChecksProxySettings, _UvicornWorker):  # type: ignore[misc]
    """``uvicorn_worker.UvicornWorker`` with PROXY protocol (httptools when installed)."""

    protocol_class: type[ProxyProtocol] = _PROTOCOLS["HttpToolsProtocol"] or _H11

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # TLS starts after the header, in the protocol, not in front of it.
        for name in ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs"):
            setattr(self.config, name, None)
        self.config.http = self.protocol_class.with_policy(
            policy_from_config(self.cfg), tls=tls_from_config(self.cfg)
        )


class UvicornH11Worker(UvicornWorker):
    """The same with the h11 parser and the asyncio loop (``uvicorn_worker.UvicornH11Worker``)."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}  # noqa: RUF012
    protocol_class = _H11
