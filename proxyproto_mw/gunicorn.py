"""gunicorn workers that read PROXY headers with this package's engine and trust policy.

``gunicorn -k proxyproto_mw.gunicorn.UvicornWorker app:app --proxy-protocol v2
--proxy-allow-from 10.0.0.0/8`` runs ASGI apps as the ``uvicorn-worker`` package does, with
this package's uvicorn protocols. gunicorn's own settings keep their documented meaning:

- ``--proxy-protocol``: ``off`` (gunicorn's default: no header is read), ``v1``, ``v2`` or
  ``auto`` (both), the versions accepted;
- ``--proxy-allow-from``: the peers whose header is believed (IPs, CIDRs, ``*``);
  connections without an IP address (UNIX sockets) are trusted, as gunicorn documents;
- ``--keyfile`` / ``--certfile``: TLS served after the header, on the same port.

``PROXYPROTO_MODE`` and ``PROXYPROTO_TIMEOUT`` cover what gunicorn has no setting for
(``PROXYPROTO_TRUSTED`` is not read: ``--proxy-allow-from`` decides). The settings are
checked when gunicorn starts, so a bad value stops the master with a message naming it.
"""

from __future__ import annotations

import os
import ssl
import sys
from typing import Any

from uvicorn.config import create_ssl_context
from uvicorn_worker import UvicornWorker as _UvicornWorker

from .errors import ConfigurationError
from .policy import MODE_VARIABLE, TIMEOUT_VARIABLE, Mode, TrustPolicy
from .uvicorn import H11Protocol, HttpToolsProtocol

__all__ = ["UvicornH11Worker", "UvicornWorker", "policy_from_config", "tls_context_from_config"]

_VERSIONS = {"v1": (1,), "v2": (2,), "auto": (1, 2)}


def policy_from_config(cfg: Any) -> TrustPolicy:
    """The trust policy of a gunicorn configuration (plus ``PROXYPROTO_MODE`` / ``_TIMEOUT``)."""
    setting = cfg.proxy_protocol
    if setting is True:  # gunicorn before 24.1: a flag
        setting = "auto"
    elif setting is False or setting is None:
        setting = "off"
    if setting != "off" and setting not in _VERSIONS:
        raise ConfigurationError(f"--proxy-protocol: {setting!r} is not one of off, v1, v2, auto")
    # gunicorn's --proxy-allow-from decides whom to trust, not PROXYPROTO_TRUSTED; with
    # --proxy-protocol off no header is read, whatever PROXYPROTO_MODE says.
    variables = (TIMEOUT_VARIABLE,) if setting == "off" else (MODE_VARIABLE, TIMEOUT_VARIABLE)
    trusted = cfg.proxy_allow_ips
    return TrustPolicy.from_environ(
        {name: os.environ[name] for name in variables if name in os.environ},
        trusted=trusted.split(",") if isinstance(trusted, str) else trusted,
        mode=Mode.OFF if setting == "off" else Mode.REQUIRE,
        versions=_VERSIONS.get(setting, (1, 2)),
        setting="--proxy-allow-from",
        trust_unix_peers=True,
    )


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


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """``uvicorn_worker.UvicornWorker`` with PROXY protocol (httptools when installed)."""

    protocol_class: Any = HttpToolsProtocol if HttpToolsProtocol is not None else H11Protocol

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Check the PROXY settings once, in the master, before any worker starts."""
        try:
            policy_from_config(cfg)
        except ConfigurationError as error:
            log.error("Error: %s", error)
            sys.exit(1)

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
