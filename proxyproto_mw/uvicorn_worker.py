"""gunicorn's ASGI workers (the ``uvicorn-worker`` package's) with this package's uvicorn protocols.

``gunicorn -k proxyproto_mw.gunicorn.UvicornWorker app:app --proxy-protocol v2
--proxy-allow-from 10.0.0.0/8`` names these classes through :mod:`proxyproto_mw.gunicorn`,
which imports this module only when they are asked for, so that its WSGI workers need
neither uvicorn nor uvicorn-worker. The settings are read as described there.
"""

from __future__ import annotations

import ssl
from typing import Any

from uvicorn.config import create_ssl_context
from uvicorn_worker import UvicornWorker as _UvicornWorker

from .gunicorn import _ChecksProxySettings, policy_from_config
from .uvicorn import H11Protocol, HttpToolsProtocol

__all__ = ["UvicornH11Worker", "UvicornWorker", "tls_context_from_config"]


def tls_context_from_config(cfg: Any) -> ssl.SSLContext | None:
    """The TLS context of gunicorn's ``--keyfile`` / ``--certfile`` settings, or None."""
    if not cfg.is_ssl:
        return None
    options = cfg.ssl_options
    return create_ssl_context(
        certfile=options["certfile"],
        keyfile=options.get("keyfile"),
        password=options.get("password"),
        ssl_version=options.get("ssl_version", ssl.PROTOCOL_TLS_SERVER),
        cert_reqs=options.get("cert_reqs", ssl.CERT_NONE),
        ca_certs=options.get("ca_certs"),
        ciphers=options.get("ciphers"),
    )


class UvicornWorker(_ChecksProxySettings, _UvicornWorker):  # type: ignore[misc]
    """``uvicorn_worker.UvicornWorker`` with PROXY protocol (httptools when installed)."""

    protocol_class: Any = HttpToolsProtocol if HttpToolsProtocol is not None else H11Protocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tls_context = tls_context_from_config(self.cfg)
        # TLS starts after the header, in the protocol, not in front of it.
        for name in ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs"):
            setattr(self.config, name, None)
        self.config.http = self.protocol_class.with_policy(
            policy_from_config(self.cfg), tls_context=tls_context
        )


class UvicornH11Worker(UvicornWorker):
    """The same with the h11 parser and the asyncio loop (``uvicorn_worker.UvicornH11Worker``)."""

    CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}  # noqa: RUF012
    protocol_class = H11Protocol
