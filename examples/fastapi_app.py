"""A FastAPI app behind a TCP load balancer: the real client in ``request.client``.

Serve it with this package's uvicorn protocol, trusting headers from the balancers only::

    PROXYPROTO_TRUSTED=10.0.0.0/8 uvicorn examples.fastapi_app:app --host 0.0.0.0 \\
        --port 8000 --http proxyproto_mw.uvicorn:HttpToolsProtocol

or, with TLS after the header (an ELB/NLB TCP listener on 443 passing TLS through)::

    proxyproto-mw serve examples.fastapi_app:app --host 0.0.0.0 --port 8443 \\
        --proxy-trusted 10.0.0.0/8 --ssl-keyfile key.pem --ssl-certfile cert.pem

``examples/haproxy.cfg`` and ``examples/nginx-stream.conf`` put a balancer in front of it;
``GET /healthz`` answers the balancer's health checks. ``GET /`` shows what the app knows
of the client: the address, the scheme, the forwarding headers the middleware writes (as
nginx's ``proxy_set_header`` lines did) and the decoded header, TLVs included.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from proxyproto_mw.asgi import ProxyProtocolMiddleware, proxy_protocol

__all__ = ["app"]

app = FastAPI(title="proxyproto-mw FastAPI example")
# Innermost (added first): keeps the header's client whatever an outer middleware believes.
app.add_middleware(
    ProxyProtocolMiddleware, x_real_ip=True, x_forwarded_for="append", x_forwarded_proto=True
)


@app.get("/")
async def whoami(request: Request) -> dict[str, object]:
    """What the app knows of the client."""
    header = proxy_protocol(request)
    return {
        "client": None if request.client is None else [request.client.host, request.client.port],
        "scheme": request.url.scheme,
        "x_real_ip": request.headers.get("x-real-ip"),
        "x_forwarded_for": request.headers.get("x-forwarded-for"),
        "proxy_protocol": None
        if header is None
        else {
            "version": header["version"],
            "command": header["command"],
            "client": header["client"],
            "server": header["server"],
            "peer": header["peer"],
            "tls": header["tls"],
            "aws_vpce_id": header["aws_vpce_id"],
            "unique_id": None if header["unique_id"] is None else header["unique_id"].hex(),
        },
    }


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    """For the load balancer's health checks (HAProxy's, an NLB target group's)."""
    return "ok"
