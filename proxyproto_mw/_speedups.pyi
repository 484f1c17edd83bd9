"""Optional C accelerator of :func:`proxyproto_mw.decoder.decode` (``_speedups.c``)."""

from collections.abc import Callable
from typing import Any

from .decoder import Decoded, NeedData
from .header import TLV, Command, Family, ProxyHeader, TransportProtocol

def configure(
    fallback: Callable[[bytes], Decoded | NeedData],
    decoded_type: type[Decoded],
    header_type: type[ProxyHeader],
    proxy: Command,
    inet: Family,
    inet6: Family,
    stream: TransportProtocol,
    empty_tlvs: tuple[()],
    tlv_type: type[TLV],
    /,
) -> None:
    """Register the pure-Python decode, the result classes and the values results hold."""

def crc32c(data: bytes, table: bool = False, /) -> int:
    """CRC32C of ``data``: SSE4.2 where the CPU has it, the table otherwise or if ``table``."""

def decode(data: bytes) -> Decoded | NeedData:
    """Decode the header at the start of ``data``; input it does not handle goes to Python."""

class TransportView:
    """The accelerated base of ``proxyproto_mw.uvicorn.ProxiedTransport``."""

class HeaderPhase:
    """The accelerated base of ``proxyproto_mw.uvicorn.ProxyProtocol``."""

def configure_protocol(
    by_loop: dict[Any, Any],
    mode_off: object,
    get_event_loop: Callable[[], Any],
    proxied: type,
    local: type,
    proxy_headers: type,
    ws_classes: dict[Any, Any],
    ws_wrap: Callable[[Any], Any],
    at_shutdown: int,
    /,
) -> None:
    """Register what the uvicorn adapter's header phase uses."""
