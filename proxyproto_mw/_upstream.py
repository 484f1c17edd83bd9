"""Every private attribute or behaviour of another project that proxyproto-mw relies on.

The adapters use public seams where the servers have them (asyncio's Protocol and
Transport, uvicorn's ``--http`` class, gunicorn's worker classes, websockets'
``create_connection=``). What is left is listed here, once, and
``tests/test_contracts.py`` checks each entry against the installed versions, so that an
upstream release that changes one fails the suite naming the seam instead of serving
a wrong address.

An adapter that starts relying on something private adds a :class:`Seam` here in the same
change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from .errors import ConfigurationError

__all__ = ["SEAMS", "Seam", "require"]


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"26.0.1rc1"`` is ``(26, 0, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        return ()
    parts = [int(part) for part in match.group().split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 26 == 26.0 == 26.0.0
        parts.pop()
    return tuple(parts)


def require(distribution: str, minimum: str, feature: str) -> None:
    """Raise :class:`ConfigurationError` unless ``distribution`` >= ``minimum`` is installed.

    For a feature that needs a newer release than the package's declared minimum: the user
    gets one line naming the feature, the release needed and the one installed, instead of
    a traceback from deep inside the other project. Pre-releases count as their release.
    """
    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise ConfigurationError(
            f"{feature} needs {distribution} >= {minimum} (not installed); "
            f"install it with pip install '{distribution}>={minimum}'"
        ) from None
    if _release(installed) < _release(minimum):
        raise ConfigurationError(
            f"{feature} needs {distribution} >= {minimum} (installed: {installed}); "
            f"upgrade with pip install '{distribution}>={minimum}'"
        )


@dataclass(frozen=True)
class Seam:
    """One private name (or behaviour) of another project that an adapter relies on."""

    project: str
    """The distribution that provides it, as pip names it (``uvicorn``, ``gunicorn``)."""
    target: str
    """``module:qualified.name``; the contract test imports it and resolves the name."""
    relied_on: str
    """What the adapter relies on, in one sentence."""
    used_by: str
    """The module of ours that relies on it."""
    parameters: tuple[str, ...] = ()
    """For a callable: parameter names it must accept."""
    attributes: tuple[str, ...] = ()
    """For a class: attributes its instances or the class must have (checked on the class
    or in its ``__init__``'s source when set per instance)."""
    mentions: tuple[str, ...] = ()
    """For a behaviour: what the target's source must still contain (``"self.client"`` where
    the parser is built from the client we set), as far as source can show a behaviour."""


_GUNICORN = "proxyproto_mw.gunicorn"
_UVICORN_WORKER = "proxyproto_mw.uvicorn_worker"
_UVICORN = "proxyproto_mw.uvicorn"
_WERKZEUG = "proxyproto_mw.werkzeug"
_SERVE = "proxyproto_mw.serve"

SEAMS: tuple[Seam, ...] = (
    # gunicorn: the sync and gthread workers (proxyproto_mw.gunicorn's SyncWorker, ThreadWorker)
    Seam(
        "gunicorn",
        "gunicorn.workers.sync:SyncWorker.handle",
        "handle(listener, client, addr) serves one accepted connection and hands addr on "
        "as the client, so the header's address reaches the environ and the logs",
        _GUNICORN,
        parameters=("listener", "client", "addr"),
        mentions=("addr",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker.enqueue_req",
        "accept() hands each new connection to enqueue_req(conn) as a TConn, and keep-alive "
        "connections come back through it, so we can swap in our TConn subclass",
        _GUNICORN,
        parameters=("conn",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker.accept",
        "a new connection becomes TConn(cfg, sock, client, server) and goes to enqueue_req",
        _GUNICORN,
        mentions=("TConn(", "enqueue_req"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker.handle",
        "handle(conn) runs in a pool thread for each request of the connection, before "
        "conn.init() builds the parser from conn.client; finish_request closes the "
        "connection when it returns False",
        _GUNICORN,
        parameters=("conn",),
        mentions=("conn.init()",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker.finish_request",
        "a False result from handle() closes the connection (conn.close)",
        _GUNICORN,
        mentions=("conn.close(",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:TConn",
        "TConn(cfg, sock, client, server) keeps them as attributes; we subclass it and set "
        "client before init() builds the parser",
        _GUNICORN,
        parameters=("cfg", "sock", "client", "server"),
        attributes=("cfg", "sock", "client", "server"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:TConn.init",
        "init() wraps TLS and builds the request parser from self.client, the address we set",
        _GUNICORN,
        mentions=("self.client",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:TConn.close",
        "close(graceful) closes the socket (the graceful argument since gunicorn 26)",
        _GUNICORN,
        parameters=("graceful",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker.run",
        "the main thread's loop calls murder_pending() each time its select wakes (at "
        "least once a second), where we close connections whose header is late",
        _GUNICORN,
        mentions=("self.murder_pending()", "wait_for_and_dispatch_events(timeout=1.0)"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker.wait_for_and_dispatch_events",
        "each ready key of self.poller is dispatched as key.data(key.fileobj), so we "
        "register a connection whose header is incomplete with our own callback",
        _GUNICORN,
        mentions=("self.poller.select(", "callback(key.fileobj)"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.gthread:ThreadWorker",
        "poller (the main thread's selector, set in init_process) and nr_conns (open "
        "connections, lowered when we refuse one in the main thread)",
        _GUNICORN,
        attributes=("poller", "nr_conns", "murder_pending"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.workers.base:Worker.load_wsgi",
        "load_wsgi() sets self.wsgi, the app that each request calls, which we wrap",
        _GUNICORN,
        attributes=("wsgi",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.glogging:Logger",
        "the worker's log has error_log, the logging.Logger of gunicorn's error log, whose "
        "handlers our WARNING lines reuse",
        _GUNICORN,
        attributes=("error_log",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.config:ProxyProtocol",
        "the proxy_protocol setting takes off|v1|v2|auto (a flag before 24.1), and "
        "cfg.set('proxy_protocol', 'off') in a worker turns gunicorn's own parsing off",
        _GUNICORN,
        mentions=('"off"', "auto"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.config:Config.set",
        "cfg.set(name, value) changes a setting in the worker's own copy of the config",
        _GUNICORN,
        parameters=("name", "value"),
    ),
    Seam(
        "gunicorn",
        "gunicorn.http.message:Request.parse",
        "the request parser reads a PROXY header itself only as cfg.proxy_protocol says",
        _GUNICORN,
        mentions=("proxy_protocol",),
    ),
    Seam(
        "gunicorn",
        "gunicorn.http.wsgi:create",
        "create(req, sock, client, server, cfg) sets REMOTE_ADDR and REMOTE_PORT from client, "
        "the header's client we hand to the worker",
        _GUNICORN,
        parameters=("req", "sock", "client", "server", "cfg"),
        mentions=("REMOTE_ADDR",),
    ),
    # uvicorn-worker: proxyproto_mw.uvicorn_worker's UvicornWorker, UvicornH11Worker
    Seam(
        "uvicorn-worker",
        "uvicorn_worker:UvicornWorker",
        "__init__ builds self.config, a uvicorn Config from CONFIG_KWARGS and gunicorn's "
        "settings, which the server uses only after __init__, so we can replace config.http "
        "and clear its ssl_* options",
        _UVICORN_WORKER,
        attributes=("CONFIG_KWARGS", "config"),
        mentions=("CONFIG_KWARGS",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.config:Config",
        "Config keeps http and ssl_keyfile, ssl_certfile, ssl_keyfile_password, ssl_ca_certs "
        "as attributes read when the server starts",
        _UVICORN_WORKER,
        attributes=("http", "ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs"),
    ),
    Seam(
        "uvicorn",
        "uvicorn.config:create_ssl_context",
        "create_ssl_context builds the TLS context from uvicorn's TLS options",
        _UVICORN,
        parameters=(
            "certfile",
            "keyfile",
            "password",
            "ssl_version",
            "cert_reqs",
            "ca_certs",
            "ciphers",
        ),
    ),
    # uvicorn's command line, extended by proxyproto-mw serve
    Seam(
        "uvicorn",
        "uvicorn.main:main",
        "uvicorn's command is a click Command whose params are its options and whose "
        "callback(**options) runs uvicorn: serve takes both",
        _SERVE,
        attributes=("params", "callback"),
    ),
    # uvicorn: proxyproto_mw.uvicorn's ProxyProtocol hands each connection to uvicorn's own
    # HTTP protocol once the header is in (set_protocol), through a ProxiedTransport
    Seam(
        "uvicorn",
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
        "built with the keywords config, server_state, app_state and _loop (as uvicorn's "
        "server builds any --http class); its app and ws_protocol_class, set in __init__, "
        "are read per request and on an upgrade, so we set them before connection_made",
        _UVICORN,
        parameters=("config", "server_state", "app_state", "_loop"),
        attributes=("app", "ws_protocol_class"),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.http.h11_impl:H11Protocol",
        "built with the keywords config, server_state, app_state and _loop; its app and "
        "ws_protocol_class, set in __init__, are read per request and on an upgrade",
        _UVICORN,
        parameters=("config", "server_state", "app_state", "_loop"),
        attributes=("app", "ws_protocol_class"),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.handle_websocket_upgrade",
        "the upgrade connects the --ws protocol to self.transport (our ProxiedTransport) and "
        "then calls set_protocol on it, so the WebSocket sees the header's addresses",
        _UVICORN,
        mentions=("connection_made(self.transport)", "set_protocol"),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.http.h11_impl:H11Protocol.handle_websocket_upgrade",
        "the upgrade connects the --ws protocol to self.transport (our ProxiedTransport)",
        _UVICORN,
        mentions=("connection_made(self.transport)", "set_protocol"),
    ),
    Seam(
        "uvicorn",
        "uvicorn.server:Server.shutdown",
        "shutdown calls shutdown() on every protocol in server_state.connections and waits "
        "while the set is not empty: a connection waiting for its header joins it, and leaves "
        "it when it closes or is handed over",
        _UVICORN,
        mentions=("self.server_state.connections", "connection.shutdown()"),
    ),
    Seam(
        "uvicorn",
        "uvicorn.server:ServerState",
        "server_state.connections is the set of the server's open connections",
        _UVICORN,
        attributes=("connections",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.utils:get_remote_addr",
        "the client address comes from get_extra_info('socket') first, then 'peername': "
        "the ProxiedTransport answers socket with None and peername from the header",
        _UVICORN,
        mentions=('"socket"', '"peername"'),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.utils:get_local_addr",
        "the server address comes from get_extra_info('socket') first, then 'sockname'",
        _UVICORN,
        mentions=('"socket"', '"sockname"'),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.websockets.websockets_impl:WebSocketProtocol",
        "the ASGI app is self.app, read when the handshake's task starts, after "
        "connection_made, where we set it to the app with the header's extension",
        _UVICORN,
        attributes=("app",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol",
        "the ASGI app is self.app, read after connection_made, where we set it",
        _UVICORN,
        attributes=("app",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.protocols.websockets.wsproto_impl:WSProtocol",
        "the ASGI app is self.app, read after connection_made, where we set it",
        _UVICORN,
        attributes=("app",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.middleware.proxy_headers:ProxyHeadersMiddleware",
        "Config.load() wraps the app in it (--proxy-headers); its app attribute is the app "
        "inside, which connections with a header call so X-Forwarded-For cannot override it",
        _UVICORN,
        attributes=("app",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.config:Config.load",
        "load() looks a --http string up with import_from_string (getattr on our module) "
        "in every serving process before it listens: there check_start_up runs",
        _UVICORN,
        mentions=("import_from_string(",),
    ),
    Seam(
        "uvicorn",
        "uvicorn.main:main.callback",
        "under the uvicorn command, click's current context is uvicorn's main command and "
        "its params hold --ssl-keyfile / --ssl-certfile, which check_start_up refuses",
        _UVICORN,
        parameters=("ssl_keyfile", "ssl_certfile"),
    ),
    # werkzeug: proxyproto_mw.werkzeug's ProxyProtocolRequestHandler
    Seam(
        "werkzeug",
        "werkzeug.serving:WSGIRequestHandler.make_environ",
        "make_environ() builds REMOTE_ADDR and REMOTE_PORT from self.client_address, which "
        "handle() replaces with the header's client before the requests",
        _WERKZEUG,
        mentions=("client_address",),
    ),
    Seam(
        "werkzeug",
        "werkzeug.serving:BaseWSGIServer",
        "the server's ssl_context is None unless werkzeug puts TLS in front of the handler",
        _WERKZEUG,
        attributes=("ssl_context",),
    ),
    Seam(
        "werkzeug",
        "werkzeug.serving:run_simple",
        "run_simple takes request_handler, threaded, processes and ssl_context",
        _WERKZEUG,
        parameters=("hostname", "port", "application", "request_handler", "threaded", "processes"),
    ),
    # websockets: proxyproto_mw.websockets and proxyproto_mw.websockets.sync
    Seam(
        "websockets",
        "websockets.asyncio.server:ServerConnection.connection_made",
        "connection_made() takes the transport and starts the handler task (opening "
        "handshake under open_timeout) without reading: the adapter calls it while its own "
        "reader holds the bytes until the header is in (with TLS, once TLS is up)",
        "proxyproto_mw.websockets.__init__",
        parameters=("transport",),
        mentions=("super().connection_made(transport)", "handler"),
    ),
    Seam(
        "websockets",
        "websockets.sync.server:serve",
        "the threaded server builds each connection with create_connection(sock, protocol, "
        "...) in the connection's own thread before reading from it, and closes the socket "
        "quietly when building it raises",
        "proxyproto_mw.websockets.sync",
        parameters=("handler", "host", "port", "sock", "ssl", "create_connection"),
        mentions=("create_connection(", "sock.close()"),
    ),
)
