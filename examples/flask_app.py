"""A Flask app behind a TCP load balancer: the real client in ``request.remote_addr``.

Run it with werkzeug's development server (``python examples/flask_app.py``, listening on
127.0.0.1:8002 or ``$PORT``, trusting PROXY headers from ``$PROXYPROTO_TRUSTED``), or in
production with ``gunicorn -k proxyproto_mw.gunicorn.ThreadWorker --threads 8
--proxy-protocol auto --proxy-allow-from 10.0.0.0/8 examples.flask_app:app``. Either
way, send it PROXY headers, for example ``curl --haproxy-protocol http://127.0.0.1:8002/``.
"""

from __future__ import annotations

import os

from flask import Flask, request

from proxyproto_mw.wsgi import ProxyProtocolMiddleware, proxy_protocol

app = Flask(__name__)
# As nginx's proxy_set_header lines did: X-Real-IP and X-Forwarded-For from the real client.
app.wsgi_app = ProxyProtocolMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, x_real_ip=True, x_forwarded_for="append", x_forwarded_proto=True
)


@app.get("/")
def whoami() -> dict[str, object]:
    """What the app knows of the client."""
    header = proxy_protocol(request.environ)
    return {
        "remote_addr": request.remote_addr,
        "x_real_ip": request.headers.get("X-Real-IP"),
        "x_forwarded_for": request.headers.get("X-Forwarded-For"),
        "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
        "scheme": request.scheme,
        "proxy_protocol": None
        if header is None
        else {"version": header["version"], "command": header["command"], "peer": header["peer"]},
    }


if __name__ == "__main__":
    from proxyproto_mw.werkzeug import run_simple

    run_simple("127.0.0.1", int(os.environ.get("PORT", "8002")), app)
