# ruff: noqa: N999 -- gunicorn looks for this file name; it is no importable module
"""gunicorn settings of the chat example: PROXY v2 headers from HAProxy at 127.0.0.3.

``gunicorn -c examples/chat/gunicorn.conf.py`` from the repository root.
``CHAT_BIND`` (default ``127.0.0.1:8001``) and ``CHAT_WORKERS`` (default 1) override the
address and the number of workers.
"""

import os

wsgi_app = "examples.chat.app:app"
worker_class = "proxyproto_mw.gunicorn.UvicornWorker"

# Read a PROXY v2 header on every connection, and believe it only from HAProxy's address
# (haproxy.cfg connects from 127.0.0.3; in production, the balancers' addresses or subnet).
proxy_protocol = "v2"
proxy_allow_ips = "127.0.0.3"

bind = [os.environ.get("CHAT_BIND", "127.0.0.1:8001")]

# One worker: the chat room lives in the worker's memory, so clients connected to different
# workers would not see each other's messages. With more workers, broadcast through a shared
# broker (Redis pub/sub, for example); PROXY headers work the same in every worker.
workers = int(os.environ.get("CHAT_WORKERS", "1"))
