"""PROXY protocol v1 and v2 for Python web servers: real client addresses behind TCP balancers.

The decoder (:mod:`proxyproto_mw.decoder`) and the trust policy (:mod:`proxyproto_mw.policy`)
do no I/O; the server adapters live in modules named after their servers.
"""

from .decoder import NEED_DATA, Decoded, HeaderDecoder, NeedData, decode, match_signature
from .encoder import encode, encode_tlv, encode_v1, encode_v2, ssl_tlv
from .errors import (
    ChecksumMismatch,
    ConfigurationError,
    ConnectionClosed,
    HeaderTimeout,
    InvalidHeader,
    MissingHeader,
    NotAHeader,
    ProxyProtocolError,
    UntrustedHeader,
)
from .header import (
    TLV,
    Address,
    Command,
    Family,
    ProxyHeader,
    SSLInfo,
    TLVType,
    TransportProtocol,
    UnixAddresses,
)
from .policy import Admission, Admitted, Mode, TrustPolicy

__version__ = "0.1.0"

__all__ = [
    "NEED_DATA",
    "TLV",
    "Address",
    "Admission",
    "Admitted",
    "ChecksumMismatch",
    "Command",
    "ConfigurationError",
    "ConnectionClosed",
    "Decoded",
    "Family",
    "HeaderDecoder",
    "HeaderTimeout",
    "InvalidHeader",
    "MissingHeader",
    "Mode",
    "NeedData",
    "NotAHeader",
    "ProxyHeader",
    "ProxyProtocolError",
    "SSLInfo",
    "TLVType",
    "TransportProtocol",
    "TrustPolicy",
    "UnixAddresses",
    "UntrustedHeader",
    "decode",
    "encode",
    "encode_tlv",
    "encode_v1",
    "encode_v2",
    "match_signature",
    "ssl_tlv",
]
