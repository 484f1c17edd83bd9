"""Errors, grouped by meaning so that callers catch what they can act on.

Every error about a connection's first bytes derives from :class:`ProxyProtocolError`;
its message says what was wrong and is what the server adapters log before they close
the connection. Configuration mistakes raise :class:`ConfigurationError` at start-up.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatch",
    "ConfigurationError",
    "ConnectionClosed",
    "HeaderTimeout",
    "InvalidHeader",
    "MissingHeader",
    "NotAHeader",
    "ProxyProtocolError",
    "UntrustedHeader",
]


class ProxyProtocolError(Exception):
    """The first bytes of a connection cannot be accepted; the connection must be closed."""


class InvalidHeader(ProxyProtocolError):
    """The bytes start a PROXY header but break the specification's grammar."""


class ChecksumMismatch(InvalidHeader):
    """A v2 header's CRC32C TLV does not match the header it came with."""


class NotAHeader(ProxyProtocolError):
    """The connection does not start with a PROXY header at all.

    ``data`` holds every byte received so far, so that a server that may accept
    plain connections can hand them on unchanged.
    """

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class MissingHeader(ProxyProtocolError):
    """A trusted peer sent no PROXY header where the policy requires one."""


class UntrustedHeader(ProxyProtocolError):
    """A peer that the policy does not trust sent a PROXY header; it is never believed."""


class ConnectionClosed(ProxyProtocolError):
    """The peer closed (or reset) the connection before its header was complete.

    Nothing is wrong with what it sent and no one is left to serve, so adapters close
    such a connection without logging it.
    """


class HeaderTimeout(ProxyProtocolError):
    """The header was not complete within the policy's timeout."""


class ConfigurationError(ValueError):
    """A setting (argument or environment variable) has a value that cannot be used."""
