"""The request headers that nginx set from the PROXY header, rewritten the same way here.

The nginx configuration this package replaces set, for every request::

    proxy_set_header X-Real-IP $proxy_protocol_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;

Apps that read these headers (rate limiters, audit logs) keep working when
:class:`ForwardedHeaders` rewrites them from the connection's real client. The ASGI and
WSGI middlewares share this one set of rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "NO_IP_ADDRESS",
    "X_FORWARDED_FOR",
    "X_FORWARDED_PROTO",
    "X_REAL_IP",
    "ForwardedHeaders",
]

X_REAL_IP = "x-real-ip"
X_FORWARDED_FOR = "x-forwarded-for"
X_FORWARDED_PROTO = "x-forwarded-proto"
NO_IP_ADDRESS = "unix:"
"""What nginx writes as ``$remote_addr`` for a client without an IP address (a UNIX-socket
peer, or a v2 UNIX or LOCAL header on a UNIX socket): ``X-Forwarded-For`` ends with it, so
that its last entry is never one the client wrote."""

_HTTP_SCHEMES = {"ws": "http", "wss": "https"}


@dataclass(frozen=True)
class ForwardedHeaders:
    """Which request headers to set from the real client, as nginx did.

    - ``x_real_ip``: ``X-Real-IP`` becomes the client's address; a value the client sent
      is always dropped (and none is set for a client without an IP address).
    - ``x_forwarded_for``: ``"append"`` adds the client's address to whatever
      ``X-Forwarded-For`` the request carried (nginx's ``$proxy_add_x_forwarded_for``:
      only its last entry is trustworthy); ``"replace"`` makes it the client's address
      alone, dropping what the client wrote; ``None`` leaves the header alone. A client
      without an IP address is written ``unix:``, as nginx does.
    - ``x_forwarded_proto``: ``X-Forwarded-Proto`` becomes the connection's scheme
      (``http`` or ``https``); a value the client sent is dropped.
    """

    x_real_ip: bool = False
    x_forwarded_for: Literal["append", "replace"] | None = None
    x_forwarded_proto: bool = False

    def __post_init__(self) -> None:
        if self.x_forwarded_for not in (None, "append", "replace"):
            raise ValueError(
                f"x_forwarded_for must be 'append', 'replace' or None, not {self.x_forwarded_for!r}"
            )

    @property
    def enabled(self) -> bool:
        """Whether any header is rewritten."""
        return self.x_real_ip or self.x_forwarded_for is not None or self.x_forwarded_proto

    def rewrite(
        self, client_host: str | None, scheme: str, forwarded_for: list[str]
    ) -> dict[str, str | None]:
        """The new value of each header to change (None: remove it).

        ``client_host`` is None when the client has no IP address. ``forwarded_for`` holds
        the values of the ``X-Forwarded-For`` headers the request carried, in order.
        """
        changes: dict[str, str | None] = {}
        if self.x_real_ip:
            changes[X_REAL_IP] = client_host
        if self.x_forwarded_for == "replace":
            changes[X_FORWARDED_FOR] = client_host or NO_IP_ADDRESS
        elif self.x_forwarded_for == "append":
            changes[X_FORWARDED_FOR] = ", ".join([*forwarded_for, client_host or NO_IP_ADDRESS])
        if self.x_forwarded_proto:
            changes[X_FORWARDED_PROTO] = _HTTP_SCHEMES.get(scheme, scheme)
        return changes
