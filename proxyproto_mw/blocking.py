"""Read a PROXY header from a socket, and leave every byte after it unread.

Servers that read plain sockets (werkzeug's development server, gunicorn's sync and
gthread workers) read each accepted connection's header before they read anything else.
A :class:`HeaderReader` peeks at the socket (``MSG_PEEK``), feeds what it sees to the
policy's :class:`~proxyproto_mw.policy.Admission`, and takes off the socket only bytes
that are certainly the header's: the server's own HTTP reading, or a TLS handshake
started on the socket afterwards, begins with the first byte after the header. It never
blocks, so a server's event loop can drive it (gunicorn's gthread worker does);
:func:`receive_header` drives it on a blocking socket, waiting on the socket (``poll``)
between reads (a header that comes whole in the first read, as most do, needs no reader:
the policy decides it at once). When the connection cannot be served, :func:`reject`
logs why and closes it without writing a byte.

Waiting costs nothing while a header trickles in: bytes of a header are taken as they
arrive, so the socket is readable again only when new bytes come. Until a signature is
complete, bytes from a peer that is not trusted (or in mode ``optional``) may be the
application's and stay on the socket; a TCP socket is then told to wake only for more
(``SO_RCVLOWAT``), other sockets are checked every few milliseconds.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Final, Literal

from .decoder import NEED_DATA, V1_MAX_LENGTH, V2_FIXED_LENGTH, V2_SIGNATURE, NeedData
from .errors import ConnectionClosed, ProxyProtocolError
from .header import Address, ProxyHeader
from .policy import Admission, Mode, TrustPolicy, log_rejection

__all__ = ["HeaderReader", "finish_header", "receive_header", "reject"]

_POLL_INTERVAL: Final = 0.005
"""Seconds between checks of a socket that cannot be told to wake only for more bytes."""
_POLLRDHUP: Final[int] = getattr(select, "POLLRDHUP", 0)
_WAIT_EVENTS: Final = select.POLLIN | _POLLRDHUP
_NO_WAIT: Final = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_TCP_FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)
_CLOSED: Final = "connection closed before the PROXY header was complete"


class HeaderReader:
    """One connection's PROXY header, read from its socket as the bytes arrive.

    Call :meth:`read` whenever the socket is readable (and once right after ``accept()``),
    until it returns the header (or None: the connection is admitted without one). It
    raises the admission's :class:`~proxyproto_mw.errors.ProxyProtocolError` when the
    connection must be closed, and :class:`~proxyproto_mw.errors.ConnectionClosed` when
    the peer goes away first. The header timeout is the caller's to enforce: see
    :attr:`deadline` and :meth:`timed_out`. The socket must be non-blocking, or blocking
    without a timeout (with one, Python waits in ``recv`` before the kernel sees
    ``MSG_DONTWAIT``).
    """

    __slots__ = (
        "_admission",
        "_certain",
        "_head",
        "_hung_up",
        "_limit",
        "_lowat",
        "_pending",
        "_taken",
        "deadline",
        "sock",
        "stalled",
    )

    def __init__(self, sock: socket.socket, admission: Admission, timeout: float) -> None:
        self.sock = sock
        self._admission = admission
        self.deadline = time.monotonic() + timeout
        """When the header must be complete (``time.monotonic()``)."""
        self.stalled = False
        """True when the socket stays readable without new bytes and cannot be told to wait
        for more (not TCP): the caller must poll it rather than wait for readability."""
        self._certain = admission.holds_every_byte
        self._head = b""  # the connection's first 16 bytes: signature and v2 length
        self._limit = V1_MAX_LENGTH  # how far from the connection's start the header may reach
        self._taken = 0  # bytes taken off the socket
        self._pending = 0  # bytes fed but left on the socket
        self._lowat = False
        self._hung_up = False

    @classmethod
    def start(
        cls, sock: socket.socket, policy: TrustPolicy, peer: Address | None
    ) -> HeaderReader | None:
        """A reader for a new connection from ``peer``; None when the policy reads no header."""
        admission = policy.admission(peer)
        return None if admission is None else cls(sock, admission, policy.timeout)

    def read(self) -> ProxyHeader | Literal[NeedData.NEED_DATA] | None:
        """Take in what has arrived, without blocking; NEED_DATA until the header is complete."""
        try:
            peeked = self.sock.recv(self._limit - self._taken, _NO_WAIT)
        except BlockingIOError:
            return NEED_DATA
        except ConnectionError as error:
            raise _reset(error) from None
        if not peeked:
            raise ConnectionClosed(_CLOSED)
        if len(peeked) == self._pending:
            return self._no_new_bytes()
        self._hung_up = self.stalled = False
        new = peeked[self._pending :]
        admitted = self._admission.receive(new)
        if admitted is not NEED_DATA:
            self._take(len(peeked) - len(admitted.data))
            self.release()
            return admitted.header
        self._note_incomplete(peeked, new)
        return NEED_DATA

    def _note_incomplete(self, peeked: bytes, new: bytes) -> None:
        """Note what the admission was fed (``new``, the end of ``peeked``) and found to be
        incomplete; take off the socket what is certainly the header's."""
        if len(self._head) < V2_FIXED_LENGTH:
            self._head += new[: V2_FIXED_LENGTH - len(self._head)]
            if len(self._head) == V2_FIXED_LENGTH and self._head.startswith(V2_SIGNATURE):
                self._limit = V2_FIXED_LENGTH + int.from_bytes(self._head[14:16], "big")
        if not self._certain:
            self._certain = self._admission.holds_every_byte
        if self._certain:
            self._take(len(peeked))
            self._pending = 0
            self.release()  # the socket is empty: any new byte is worth a look
        else:
            self._pending = len(peeked)

    def _no_new_bytes(self) -> ProxyHeader | Literal[NeedData.NEED_DATA] | None:
        """The socket was readable, yet holds only bytes fed already: the peer may have shut
        its side (a peek never shows the end of the stream behind unread bytes)."""
        if self._hung_up:  # already seen, and one more peek showed nothing new
            raise ConnectionClosed(_CLOSED)
        if _POLLRDHUP:
            hangup = select.poll()
            hangup.register(self.sock, _POLLRDHUP)
            if hangup.poll(0):
                self._hung_up = True  # bytes sent just before may be in: peek once more
                return self.read()
        if self.sock.family in _TCP_FAMILIES:
            # Readable only once a byte more than those fed is in (or the peer hangs up).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self._pending + 1)
            self._lowat = True
        else:
            self.stalled = True
        return NEED_DATA

    def _take(self, size: int) -> None:
        """Take ``size`` bytes, already peeked at, off the socket."""
        self._taken += size
        _take(self.sock, size)

    def release(self) -> None:
        """Let the socket wake for any byte again, as the server expects."""
        if self._lowat:
            self._lowat = False
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def timed_out(self) -> ProxyProtocolError:
        """The error to log when :attr:`deadline` has passed."""
        return self._admission.timed_out()

    def wait(self) -> None:
        """Block until the socket may have more to :meth:`read`, or raise the timeout."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.timed_out()
        waiting = select.poll()
        if self.stalled:  # readable all along: watch only for a hang-up, a moment
            if _POLLRDHUP:
                waiting.register(self.sock, _POLLRDHUP)
                waiting.poll(min(_POLL_INTERVAL, remaining) * 1000)
            else:  # pragma: no cover - not Linux: the header timeout ends such a peer
                time.sleep(min(_POLL_INTERVAL, remaining))
            return
        waiting.register(self.sock, _WAIT_EVENTS)
        if not waiting.poll(remaining * 1000) and time.monotonic() >= self.deadline:
            raise self.timed_out()


def receive_header(
    sock: socket.socket, policy: TrustPolicy, peer: Address | None
) -> ProxyHeader | None:
    """Read the PROXY header at the start of ``sock``, a blocking connection from ``peer``.

    Only the header's bytes are taken from the socket; everything after it stays there for
    the server to read. Returns the header, or None when the connection is admitted
    without one (mode ``optional`` and no header, a peer that is not trusted sending
    plain bytes, mode ``off``); then not a byte is taken, and with mode ``off`` the
    socket is not touched at all.

    Raises the admission's :class:`~proxyproto_mw.errors.ProxyProtocolError` when the
    connection must be closed, :class:`~proxyproto_mw.errors.HeaderTimeout` when the
    header is not complete within ``policy.timeout`` seconds, and
    :class:`ConnectionClosed` when the peer goes away first. The socket's own timeout is
    as it was when this returns.
    """
    if policy.mode is Mode.OFF:
        return None
    if sock.gettimeout():  # a socket with a timeout waits in recv() before MSG_DONTWAIT
        return finish_header(HeaderReader(sock, Admission(policy, peer), policy.timeout))
    # Most headers come whole with the connection's first bytes: the policy decides them
    # at once (TrustPolicy.admit), and a HeaderReader starts only for the others, as if
    # its read() had made this first peek.
    try:
        peeked = sock.recv(V1_MAX_LENGTH, _NO_WAIT)
    except BlockingIOError:  # nothing yet
        return finish_header(HeaderReader(sock, Admission(policy, peer), policy.timeout))
    except ConnectionError as error:
        raise _reset(error) from None
    if not peeked:
        raise ConnectionClosed(_CLOSED)
    admitted = policy.admit(peer, peeked)
    if not isinstance(admitted, Admission):
        _take(sock, len(peeked) - len(admitted.data))
        return admitted.header
    reader = HeaderReader(sock, admitted, policy.timeout)
    reader._note_incomplete(peeked, peeked)
    reader.wait()  # the first read is done: read again once more may have come
    return finish_header(reader)


def finish_header(reader: HeaderReader) -> ProxyHeader | None:
    """Drive ``reader`` to its end on its socket, blocking this thread meanwhile."""
    sock = reader.sock
    original_timeout = sock.gettimeout()
    if original_timeout:
        # A socket with a timeout waits in recv() before it sees MSG_DONTWAIT.
        sock.settimeout(None)
    try:
        while True:
            header = reader.read()
            if header is not NEED_DATA:
                return header
            reader.wait()
    finally:
        if original_timeout:
            sock.settimeout(original_timeout)


def _take(sock: socket.socket, size: int) -> None:
    """Take ``size`` bytes, already peeked at, off ``sock``."""
    while size > 0:
        taken = len(sock.recv(size))
        if not taken:  # pragma: no cover - peeked bytes cannot vanish
            raise ConnectionClosed("connection closed while its PROXY header was read")
        size -= taken


def _reset(error: ConnectionError) -> ConnectionClosed:
    return ConnectionClosed(f"connection reset before the PROXY header was complete ({error})")


def reject(sock: socket.socket, peer: Address | str | None, error: ProxyProtocolError) -> None:
    """Close a connection that :func:`receive_header` refused, without writing to it.

    Logs one WARNING line on the ``proxyproto_mw`` logger naming ``peer`` and the reason
    (counted instead, when the peer floods the log: see :mod:`proxyproto_mw.rejections`),
    unless the peer itself closed the connection (:class:`ConnectionClosed`). The socket
    is shut down first, so that file objects made from it cannot keep it open.
    """
    if not isinstance(error, ConnectionClosed):
        log_rejection(peer, error)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
