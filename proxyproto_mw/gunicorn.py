"""gunicorn workers that read PROXY headers with this package's engine and trust policy.

``gunicorn -k proxyproto_mw.gunicorn.UvicornWorker app:app --proxy-protocol v2
--proxy-allow-from 10.0.0.0/8`` runs ASGI apps as the ``uvicorn-worker`` package does, with
this package's uvicorn protocols. ``-k proxyproto_mw.gunicorn.ThreadWorker`` (gunicorn's
gthread worker) and ``-k proxyproto_mw.gunicorn.SyncWorker`` (its sync worker) run WSGI
apps. gunicorn's own settings keep their documented meaning:

- ``--proxy-protocol``: ``off`` (gunicorn's default: no header is read), ``v1``, ``v2`` or
  ``auto`` (both), the versions accepted;
- ``--proxy-allow-from``: the peers whose header is believed (IPs, CIDRs, ``*``);
  connections without an IP address (UNIX sockets) are trusted, as gunicorn documents;
- ``--keyfile`` / ``--certfile``: TLS served after the header, on the same port.

``PROXYPROTO_MODE`` and ``PROXYPROTO_TIMEOUT`` cover what gunicorn has no setting for
(``PROXYPROTO_TRUSTED`` is not read: ``--proxy-allow-from`` decides). The settings are
checked when gunicorn starts, so a bad value stops the master with a message naming it.

The WSGI workers read the header once per connection, before gunicorn's parser or its TLS
sees a byte, and gunicorn's own PROXY parsing is off in them. ``ThreadWorker`` reads it in
the worker's main thread as the bytes arrive, so that slow or stalled headers hold no pool
thread; ``SyncWorker`` waits for it in its only thread (see :class:`SyncWorker`). At
start-up the master logs one INFO line saying what the policy does. Every request of the
connection then gets ``REMOTE_ADDR`` / ``REMOTE_PORT`` from the header's client (as do
gunicorn's access and error logs, and its ``--forwarded-allow-ips`` check: the client
wrote the request's headers, not the balancer), ``SERVER_NAME`` / ``SERVER_PORT`` from
the address the client reached, ``wsgi.url_scheme`` ``https`` when the header's SSL TLV
says the client used TLS, and ``environ["proxy_protocol"]``, the header as a plain dict
(:meth:`~proxyproto_mw.header.ProxyHeader.as_dict`). v1 ``UNKNOWN`` and v2 ``LOCAL``
headers (health checks) keep the socket's addresses. A connection that breaks the policy
is closed without a byte written, and one WARNING line in gunicorn's error log names the
peer and the reason.

gunicorn swaps any ``-k ...SyncWorker`` for its own gthread worker when ``--threads`` is
more than 1, so none of this package's code runs then: use ``SyncWorker`` with one thread
(gunicorn's default), ``ThreadWorker`` for threads.
"""

from __future__ import annotations

import importlib
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from gunicorn.workers import gthread as _gthread
from gunicorn.workers import sync as _sync

from ._upstream import require
from .blocking import HeaderReader, finish_header, receive_header, reject
from .decoder import NEED_DATA
from .errors import ConfigurationError, ConnectionClosed, ProxyProtocolError
from .header import Address, ProxyHeader
from .policy import MODE_VARIABLE, TIMEOUT_VARIABLE, Mode, TrustPolicy, logger
from .wsgi import apply_header

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .uvicorn_worker import UvicornH11Worker, UvicornWorker

__all__ = [
    "SyncWorker",
    "ThreadWorker",
    "UvicornH11Worker",
    "UvicornWorker",
    "policy_from_config",
]

_ASGI_WORKERS = frozenset({"UvicornWorker", "UvicornH11Worker"})


def __getattr__(name: str) -> Any:
    """The ASGI workers, from :mod:`proxyproto_mw.uvicorn_worker`, imported on first use so
    that the WSGI workers need neither uvicorn nor uvicorn-worker."""
    if name in _ASGI_WORKERS:
        return getattr(importlib.import_module(".uvicorn_worker", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class _ChecksProxySettings:
    """The PROXY settings checked once, in the master, before any worker starts."""

    GUNICORN_MINIMUM: ClassVar[str] = "26"
    """The oldest gunicorn these workers are tested with (``TConn.close(graceful)``, the
    ``--proxy-protocol`` choices)."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Stop gunicorn with a message naming the setting that cannot be used."""
        try:
            require("gunicorn", cls.GUNICORN_MINIMUM, f"-k {cls.__module__}.{cls.__name__}")
            policy_from_config(cfg)
        except ConfigurationError as error:
            log.error("Error: %s", error)
            sys.exit(1)
        # gunicorn calls only the worker class's check_config: chain to the worker's own.
        inherited = getattr(super(), "check_config", None)
        if inherited is not None:
            inherited(cfg, log)


# --- WSGI: gunicorn's sync and gthread workers -----------------------------------------------
#
# What these workers rely on in gunicorn (27.0.1):
# - sync: ``SyncWorker.handle(listener, client, addr)`` serves one accepted connection
#   (TLS wrapping, parser, request) and passes ``addr`` on as the client;
# - gthread: ``ThreadWorker.accept`` hands each new connection to ``enqueue_req`` as a
#   ``TConn(cfg, sock, client, server)`` with a non-blocking socket, in the main thread;
#   the main thread's loop calls ``key.data(key.fileobj)`` for each ready key of
#   ``self.poller`` and ``murder_pending()`` each time it wakes (at least once a second);
#   ``self.nr_conns`` counts open connections; ``ThreadWorker.handle(conn)`` runs in a pool
#   thread for each request of the connection (it may return ``_DEFER`` before the first);
#   ``TConn.init`` wraps TLS and builds the parser from ``conn.client``; ``finish_request``
#   closes the connection when ``handle`` returns False;
# - both: the parser reads ``cfg.proxy_protocol`` (gunicorn's own PROXY parsing), which
#   ``cfg.set`` turns off in a worker's process; ``self.wsgi(environ, start_response)``
#   calls the app with the environ that ``gunicorn.http.wsgi.create`` built from the
#   client and the listening socket's address.


class _Admitted(NamedTuple):
    """A connection the policy admitted: its header (if any), and the addresses gunicorn uses."""

    header: ProxyHeader | None
    peer: Address | None
    """The socket's peer (the balancer), or None on a UNIX socket."""
    client: Any
    """What gunicorn takes for the client: the header's source, or the socket's peer."""

    def update(self, environ: WSGIEnvironment, tls: bool) -> None:
        """Put what the header says about the request's connection into ``environ``."""
        if self.header is not None:
            apply_header(environ, self.header.as_dict(self.peer, tls=tls), server=True)


def _peer(client: Any) -> Address | None:
    """The socket's peer as gunicorn's ``accept()`` gave it; None on a UNIX socket."""
    return (client[0], client[1]) if isinstance(client, tuple) else None


def _admit(
    sock: socket.socket, client: Any, policy: TrustPolicy, reader: HeaderReader | None = None
) -> _Admitted | None:
    """Read the PROXY header of an accepted connection (or finish ``reader``'s), blocking;
    None when the connection was refused and closed."""
    peer = _peer(client)
    try:
        header = receive_header(sock, policy, peer) if reader is None else finish_header(reader)
    except ProxyProtocolError as error:
        reject(sock, peer, error)
        return None
    except OSError as error:  # the socket failed otherwise: no one is left to serve
        reject(sock, peer, ConnectionClosed(str(error)))
        return None
    return _admitted(header, peer, client)


def _admitted(header: ProxyHeader | None, peer: Address | None, client: Any) -> _Admitted:
    """The addresses gunicorn is to use for a connection admitted with ``header``."""
    if header is None or header.is_local:
        return _Admitted(header, peer, client)
    # A header of family UNIX carries no address: the client is a UNIX-socket peer, which
    # gunicorn writes as an empty address.
    return _Admitted(header, peer, header.source or "")


_serving = threading.local()
"""``admitted``: the connection this thread serves a request of (None between requests)."""


def _app_with_header(app: WSGIApplication, tls: bool) -> WSGIApplication:
    """``app`` called with the environ of the connection's header (``tls``: gunicorn's own)."""

    def with_header(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        admitted: _Admitted | None = getattr(_serving, "admitted", None)
        if admitted is not None:
            admitted.update(environ, tls)
        return app(environ, start_response)

    return with_header


def _log_like_gunicorn(log: Any) -> None:
    """Send our log lines to gunicorn's error log, unless logging is configured already."""
    if logger.handlers or logging.getLogger().handlers:
        return
    error_log = log.error_log
    for handler in error_log.handlers:
        logger.addHandler(handler)
    logger.setLevel(error_log.level)
    logger.propagate = False


class _ReadsHeader(_ChecksProxySettings):
    """What the WSGI workers share: the policy, gunicorn's PROXY parsing off, the environ."""

    policy: TrustPolicy
    cfg: Any
    log: Any
    wsgi: WSGIApplication

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # in the master, before the fork
        self.policy = policy_from_config(self.cfg)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Check the settings, then say in one INFO line what PROXY handling does."""
        super().check_config(cfg, log)
        log.info("%s", policy_from_config(cfg).describe())

    def init_process(self) -> None:
        """Start the worker, in its own process: gunicorn's PROXY parsing off, our log lines
        in its error log."""
        # This process's copy of the settings (the master keeps its own): the header is read,
        # or the connection refused, before gunicorn's parser sees a byte; parsing again
        # would take the application's bytes for a second header.
        self.cfg.set("proxy_protocol", "off")
        _log_like_gunicorn(self.log)
        super().init_process()  # type: ignore[misc]

    def load_wsgi(self) -> None:
        """gunicorn's app, called with the environ of the connection's header."""
        super().load_wsgi()  # type: ignore[misc]
        self.wsgi = _app_with_header(self.wsgi, bool(self.cfg.is_ssl))


class SyncWorker(_ReadsHeader, _sync.SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker, reading the PROXY header of each connection first.

    A sync worker serves one connection at a time and closes it after one response, as
    gunicorn's does; while a header is late it waits (on the socket, using no CPU), for at
    most the header timeout. So each slow peer holds a whole worker for up to that long,
    and as many slow peers as workers hold up everyone else: behind a balancer that
    sends the header at once this does not happen, but where clients can reach the port
    use :class:`ThreadWorker` or the ASGI workers. gunicorn runs its own gthread worker
    instead of this one when ``--threads`` is more than 1: use :class:`ThreadWorker` for
    threads.
    """

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        """Admit the connection through the policy, then let gunicorn serve it."""
        admitted = _admit(client, addr, self.policy)
        if admitted is None:
            return
        _serving.admitted = admitted
        try:
            super().handle(listener, client, admitted.client)
        finally:
            _serving.admitted = None


class _Connection(_gthread.TConn):  # type: ignore[misc]
    """gunicorn's gthread connection, with its header reader and then its admission."""

    reader: HeaderReader | None = None
    """While the header is read in the worker's main thread."""
    admitted: _Admitted | None = None

    def close(self, graceful: bool = False) -> None:
        """Close the connection, unless it is closed already (a refused one is)."""
        if self.sock.fileno() != -1:
            super().close(graceful)


class ThreadWorker(_ReadsHeader, _gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, reading the PROXY header of each connection first.

    The header is read in the worker's main thread, driven by its selector as the bytes
    arrive, before the connection is handed to the thread pool: a peer that sends its
    header slowly, or not at all, holds no pool thread, only a socket, until the header
    timeout (checked each time the loop wakes, at least once a second) closes it. Once the
    header is in, a pool thread serves the connection as gunicorn does. Only on a UNIX
    socket in mode ``optional``, while the first bytes could still be a request's, does a
    pool thread wait for the rest of a signature.
    """

    _reading: dict[_Connection, None]
    """Connections whose header is being read, oldest (first to time out) first."""

    def init_process(self) -> None:
        """Start the worker, with no header being read yet."""
        self._reading = {}
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        """Read a new connection's header in this thread, then hand it to a pool thread."""
        if isinstance(conn, _Connection):  # admitted, kept alive or deferred by gunicorn
            super().enqueue_req(conn)
            return
        conn = _Connection(conn.cfg, conn.sock, conn.client, conn.server)  # from accept()
        conn.reader = HeaderReader.start(conn.sock, self.policy, _peer(conn.client))
        if conn.reader is None:  # mode off
            conn.admitted = _Admitted(None, _peer(conn.client), conn.client)
            super().enqueue_req(conn)
            return
        self._read_header(conn)

    def _read_header(self, conn: _Connection, _sock: Any = None) -> None:
        """Take in what has arrived of the header; hand the connection on once it is in."""
        assert conn.reader is not None
        peer = _peer(conn.client)
        try:
            header = conn.reader.read()
        except ProxyProtocolError as error:
            self._refuse(conn, error)
            return
        except OSError as error:  # the socket failed otherwise: no one is left to serve
            self._refuse(conn, ConnectionClosed(str(error)))
            return
        if header is NEED_DATA:
            if conn.reader.stalled:  # the selector cannot wait for more: a thread will
                self._stop_reading(conn)
                super().enqueue_req(conn)
            elif conn not in self._reading:
                self._reading[conn] = None
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self._read_header, conn)
                )
            return
        self._stop_reading(conn)
        conn.reader = None
        conn.admitted = _admitted(header, peer, conn.client)
        conn.client = conn.admitted.client  # before gunicorn builds the parser from it
        super().enqueue_req(conn)

    def _stop_reading(self, conn: _Connection) -> None:
        if conn in self._reading:
            del self._reading[conn]
            self.poller.unregister(conn.sock)

    def _refuse(self, conn: _Connection, error: ProxyProtocolError) -> None:
        """Close a connection the policy refused, in this thread."""
        self._stop_reading(conn)
        reject(conn.sock, _peer(conn.client), error)
        self.nr_conns -= 1

    def murder_pending(self) -> None:
        """gunicorn's sweep of connections waiting for a request, then ours: close the
        connections whose header is late."""
        super().murder_pending()
        now = time.monotonic()
        while self._reading:
            conn = next(iter(self._reading))  # the oldest: the first to time out
            assert conn.reader is not None
            if conn.reader.deadline > now:
                break
            self._refuse(conn, conn.reader.timed_out())

    def handle(self, conn: _Connection) -> Any:
        """Serve a request of an admitted connection as gunicorn does (a connection whose
        header this thread must finish reading is admitted first)."""
        admitted = conn.admitted
        if admitted is None:
            admitted = _admit(conn.sock, conn.client, self.policy, conn.reader)
            if admitted is None:
                return False  # refused and closed
            conn.reader = None
            conn.admitted = admitted
            conn.client = admitted.client  # before gunicorn builds the parser from it
        _serving.admitted = admitted
        try:
            return super().handle(conn)
        finally:
            _serving.admitted = None
