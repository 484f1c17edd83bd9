"""Read a PROXY header from a blocking socket, and leave every byte after it unread.

Servers that read plain blocking sockets (werkzeug's development server, gunicorn's sync
and gthread workers) call :func:`receive_header` on each accepted connection before they
read anything else. It peeks at the socket (``MSG_PEEK``), feeds what it sees to the
policy's :class:`~proxyproto_mw.policy.Admission`, then takes exactly the header's bytes
off the socket: the server's own HTTP reading, or a TLS handshake started on the socket
afterwards, begins with the first byte after the header. When the connection cannot be
served, :func:`reject` logs why and closes it without writing a byte.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Final

from .decoder import NEED_DATA, V1_MAX_LENGTH, V2_SIGNATURE
from .errors import ConnectionClosed, ProxyProtocolError
from .header import Address, ProxyHeader
from .policy import TrustPolicy, log_rejection

__all__ = ["receive_header", "reject"]

_POLL_INTERVAL: Final = 0.005
"""Seconds to wait before peeking again while a header that has started is incomplete."""

_V2_FIXED_LENGTH: Final = 16
_POLLRDHUP: Final[int] = getattr(select, "POLLRDHUP", 0)
_CLOSED: Final = "connection closed before the PROXY header was complete"


def receive_header(
    sock: socket.socket, policy: TrustPolicy, peer: Address | None
) -> ProxyHeader | None:
    """Read the PROXY header at the start of ``sock``, a connection from ``peer``.

    Only the header's bytes are taken from the socket; everything after it stays there for
    the server to read. Returns the header, or None when the connection is admitted
    without one (mode ``optional`` and no header, a peer that is not trusted sending
    plain bytes, mode ``off``); then not a byte is taken, and with mode ``off`` the
    socket is not touched at all.

    Raises the admission's :class:`~proxyproto_mw.errors.ProxyProtocolError` when the
    connection must be closed, :class:`~proxyproto_mw.errors.HeaderTimeout` when the
    header is not complete within ``policy.timeout`` seconds, and
    :class:`ConnectionClosed` when the peer goes away first. The socket's own timeout is
    restored before returning.
    """
    admission = policy.admission(peer)
    if admission is None:
        return None
    original_timeout = sock.gettimeout()
    deadline = time.monotonic() + policy.timeout
    # Peek no further than the header can reach: a whole v1 line (or the fixed part of a
    # v2 header), then, once a v2 header states its length, exactly that header.
    window = V1_MAX_LENGTH
    fed = 0
    hung_up = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise admission.timed_out()
            sock.settimeout(remaining)
            try:
                peeked = sock.recv(window, socket.MSG_PEEK)
            except TimeoutError:
                raise admission.timed_out() from None
            except ConnectionError as error:
                raise ConnectionClosed(
                    f"connection reset before the PROXY header was complete ({error})"
                ) from None
            if not peeked:
                raise ConnectionClosed(_CLOSED)
            if len(peeked) == fed:
                # Part of the header is in and a peek answers at once with the same bytes:
                # wait for the rest. With bytes unread a peek never shows the end of the
                # stream, so watch for the peer shutting its side; it may have sent the
                # rest just before, hence one more peek before giving up.
                if hung_up:
                    raise ConnectionClosed(_CLOSED)
                hung_up = _wait_for_more(sock, min(_POLL_INTERVAL, remaining))
                continue
            admitted = admission.receive(peeked[fed:])
            fed = len(peeked)
            if admitted is not NEED_DATA:
                _take(sock, fed - len(admitted.data))
                return admitted.header
            if fed >= _V2_FIXED_LENGTH and peeked.startswith(V2_SIGNATURE):
                window = _V2_FIXED_LENGTH + int.from_bytes(peeked[14:16], "big")
    finally:
        sock.settimeout(original_timeout)


def _wait_for_more(sock: socket.socket, seconds: float) -> bool:
    """Wait ``seconds`` for more bytes; return True early if the peer shut its side."""
    if not _POLLRDHUP:  # pragma: no cover - not Linux: the header timeout ends such a peer
        time.sleep(seconds)
        return False
    hangup = select.poll()
    hangup.register(sock, _POLLRDHUP)  # POLLIN is not asked for: bytes are already there
    return bool(hangup.poll(seconds * 1000))


def _take(sock: socket.socket, size: int) -> None:
    """Take ``size`` bytes, already peeked at, off the socket."""
    while size > 0:
        taken = len(sock.recv(size))
        if not taken:  # pragma: no cover - peeked bytes cannot vanish
            raise ConnectionClosed("connection closed while its PROXY header was read")
        size -= taken


def reject(sock: socket.socket, peer: Address | str | None, error: ProxyProtocolError) -> None:
    """Close a connection that :func:`receive_header` refused, without writing to it.

    Logs one WARNING line on the ``proxyproto_mw`` logger naming ``peer`` and the reason,
    unless the peer itself closed the connection (:class:`ConnectionClosed`). The socket
    is shut down first, so that file objects made from it cannot keep it open.
    """
    if not isinstance(error, ConnectionClosed):
        log_rejection(peer, error)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
