"""What a PROXY header says: the decoded header, its TLVs and the SSL details."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum, IntEnum
from typing import NamedTuple, TypedDict

__all__ = [
    "TLV",
    "Address",
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyProtocolInfo",
    "SSLInfo",
    "TLVType",
    "TransportProtocol",
    "UnixAddresses",
]

Address = tuple[str, int]
"""A host and port, as ASGI's ``scope["client"]`` and ``scope["server"]`` hold them."""


class Command(str, Enum):
    """What the sender asks of the receiver (v1 headers are always ``PROXY``)."""

    LOCAL = "LOCAL"
    """The sender's own connection (a health check): use the real socket addresses."""
    PROXY = "PROXY"
    """A relayed connection: the header carries the original addresses."""


class Family(IntEnum):
    """Address family, the high nibble of a v2 header's 14th byte."""

    UNSPEC = 0
    INET = 1
    INET6 = 2
    UNIX = 3


_PROXY_COMMAND = Command.PROXY


class TransportProtocol(IntEnum):
    """Transport protocol, the low nibble of a v2 header's 14th byte."""

    UNSPEC = 0
    STREAM = 1
    DGRAM = 2


class TLVType(IntEnum):
    """Type-length-value records of version 2 (section 2.2 of the specification)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    SSL_VERSION = 0x21
    SSL_CN = 0x22
    SSL_CIPHER = 0x23
    SSL_SIG_ALG = 0x24
    SSL_KEY_ALG = 0x25
    SSL_GROUP = 0x26
    SSL_SIG_SCHEME = 0x27
    SSL_CLIENT_CERT = 0x28
    NETNS = 0x30
    GCP_PSC = 0xE0
    """Google Cloud Private Service Connect: the 8-byte connection id."""
    AWS = 0xEA
    """AWS (NLB through PrivateLink): subtype byte 0x01, then the VPC endpoint id."""
    AZURE = 0xEE
    """Azure Private Link: subtype byte 0x01, then the LINKID, 32-bit little-endian."""


AWS_VPCE_ID = 0x01
AZURE_PRIVATE_LINK_ID = 0x01

SSL_CLIENT_SSL = 0x01
SSL_CLIENT_CERT_CONN = 0x02
SSL_CLIENT_CERT_SESS = 0x04


class TLV(NamedTuple):
    """One type-length-value record, its value kept raw."""

    type: int
    value: bytes


class UnixAddresses(NamedTuple):
    """The two socket paths of a v2 header of family UNIX, NUL padding removed."""

    source: bytes
    destination: bytes


def _find(tlvs: tuple[TLV, ...], kind: int) -> bytes | None:
    for tlv in tlvs:
        if tlv.type == kind:
            return tlv.value
    return None


def _values(tlvs: tuple[TLV, ...], kind: int) -> Iterator[bytes]:
    """The values of every TLV of type ``kind``, in header order."""
    return (tlv.value for tlv in tlvs if tlv.type == kind)


class SSLInfo(NamedTuple):
    """The SSL TLV: how the client reached the sender, and the sender's TLS details."""

    client: int
    """Bit field: 0x01 client connected over TLS, 0x02 certificate on this
    connection, 0x04 certificate in the session."""
    verify: int
    """0 when the client presented a certificate that the sender verified."""
    tlvs: tuple[TLV, ...] = ()
    """The sub-TLVs (version, CN, cipher, ...), raw."""

    @property
    def tls(self) -> bool:
        """The client connected to the sender over TLS."""
        return bool(self.client & SSL_CLIENT_SSL)

    @property
    def certificate_presented(self) -> bool:
        """The client presented a certificate, on this connection or in its session."""
        return bool(self.client & (SSL_CLIENT_CERT_CONN | SSL_CLIENT_CERT_SESS))

    @property
    def verified(self) -> bool:
        """The client presented a certificate and the sender verified it."""
        return self.certificate_presented and self.verify == 0

    def _text(self, kind: int) -> str | None:
        value = _find(self.tlvs, kind)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def version(self) -> str | None:
        """TLS version, such as ``TLSv1.3``."""
        return self._text(TLVType.SSL_VERSION)

    @property
    def common_name(self) -> str | None:
        """Common name of the client certificate's subject."""
        return self._text(TLVType.SSL_CN)

    @property
    def cipher(self) -> str | None:
        """Cipher suite, such as ``ECDHE-RSA-AES128-GCM-SHA256``."""
        return self._text(TLVType.SSL_CIPHER)

    @property
    def signature_algorithm(self) -> str | None:
        """Algorithm that signed the client certificate."""
        return self._text(TLVType.SSL_SIG_ALG)

    @property
    def key_algorithm(self) -> str | None:
        """Algorithm of the client certificate's key, such as ``RSA2048``."""
        return self._text(TLVType.SSL_KEY_ALG)

    @property
    def group(self) -> str | None:
        """Key exchange group."""
        return self._text(TLVType.SSL_GROUP)

    @property
    def signature_scheme(self) -> str | None:
        """Signature scheme of the handshake."""
        return self._text(TLVType.SSL_SIG_SCHEME)

    @property
    def client_certificate(self) -> bytes | None:
        """The client certificate, DER-encoded."""
        return _find(self.tlvs, TLVType.SSL_CLIENT_CERT)

    def as_dict(self) -> dict[str, object]:
        """Plain values, for JSON or an ASGI scope."""
        return {
            "tls": self.tls,
            "client": self.client,
            "verify": self.verify,
            "verified": self.verified,
            "version": self.version,
            "common_name": self.common_name,
            "cipher": self.cipher,
            "signature_algorithm": self.signature_algorithm,
            "key_algorithm": self.key_algorithm,
            "group": self.group,
            "signature_scheme": self.signature_scheme,
        }


class ProxyProtocolInfo(TypedDict):
    """The header as ASGI's ``scope["extensions"]["proxy_protocol"]`` and WSGI's
    ``environ["proxy_protocol"]`` hold it: plain values only."""

    version: int
    command: str
    client: Address | None
    server: Address | None
    peer: Address | None
    tls: bool
    tlvs: dict[int, bytes]
    alpn: bytes | None
    authority: str | None
    unique_id: bytes | None
    ssl: dict[str, object] | None
    aws_vpce_id: str | None
    gcp_psc_connection_id: int | None
    azure_private_link_id: int | None


class ProxyHeader(NamedTuple):
    """A decoded PROXY header.

    ``source`` and ``destination`` are the client's and the original server's
    addresses; both are ``None`` when the header carries none (v1 ``UNKNOWN``,
    v2 ``LOCAL``, families UNSPEC and UNIX, transport UNSPEC), and the real socket
    addresses apply. ``unix`` holds a UNIX family's paths (``None`` when its transport
    is UNSPEC).
    """

    version: int
    command: Command
    family: Family
    transport: TransportProtocol
    source: Address | None
    destination: Address | None
    tlvs: tuple[TLV, ...] = ()
    unix: UnixAddresses | None = None

    @property
    def is_local(self) -> bool:
        """True when the real connection's addresses apply (LOCAL, UNKNOWN, an UNSPEC
        family or transport)."""
        return self.source is None and self.unix is None

    def as_dict(self, peer: Address | None = None, *, tls: bool = False) -> ProxyProtocolInfo:
        """Plain values for an ASGI scope extension or a WSGI environ.

        ``peer`` is the address of the load balancer that sent the header; ``tls`` whether
        the server itself runs TLS on the connection. The dict's ``tls`` is true when
        it does, or when the balancer's SSL TLV says the client connected over TLS.
        """
        tlvs = self.tlvs  # most headers have none: skip the look-ups then
        ssl = self.ssl if tlvs else None
        return {
            "version": self.version,
            "command": "PROXY" if self.command is _PROXY_COMMAND else "LOCAL",
            "client": self.source,
            "server": self.destination,
            "peer": peer,
            "tls": tls or (ssl is not None and ssl.tls),
            "tlvs": {tlv.type: tlv.value for tlv in tlvs} if tlvs else {},
            "alpn": self.alpn if tlvs else None,
            "authority": self.authority if tlvs else None,
            "unique_id": self.unique_id if tlvs else None,
            "ssl": None if ssl is None else ssl.as_dict(),
            "aws_vpce_id": self.aws_vpce_id if tlvs else None,
            "gcp_psc_connection_id": self.gcp_psc_connection_id if tlvs else None,
            "azure_private_link_id": self.azure_private_link_id if tlvs else None,
        }

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or ``None``."""
        return _find(self.tlvs, kind)

    @property
    def alpn(self) -> bytes | None:
        """Application protocol the client negotiated with the sender, e.g. ``b"h2"``."""
        return _find(self.tlvs, TLVType.ALPN)

    @property
    def authority(self) -> str | None:
        """Host name the client asked for (TLS SNI)."""
        value = _find(self.tlvs, TLVType.AUTHORITY)
        return None if value is None else value.decode("utf-8")

    @property
    def crc32c(self) -> int | None:
        """The checksum the header carried (already verified by the decoder)."""
        value = _find(self.tlvs, TLVType.CRC32C)
        return None if value is None else int.from_bytes(value, "big")

    @property
    def unique_id(self) -> bytes | None:
        """The sender's unique id for this connection."""
        return _find(self.tlvs, TLVType.UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """Network namespace the sender accepted the connection in."""
        value = _find(self.tlvs, TLVType.NETNS)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def ssl(self) -> SSLInfo | None:
        """The SSL TLV, when the sender terminated or saw TLS."""
        value = _find(self.tlvs, TLVType.SSL)
        if value is None:
            return None
        return SSLInfo(value[0], int.from_bytes(value[1:5], "big"), split_tlvs(value, 5))

    # The cloud TLVs: a balancer may send one a receiver cannot read (another subtype, a
    # wrong length); each accessor skips those and answers from the first well-formed one.

    @property
    def aws_vpce_id(self) -> str | None:
        """AWS PrivateLink: the VPC endpoint id (``vpce-...``)."""
        for value in _values(self.tlvs, TLVType.AWS):
            if len(value) >= 2 and value[0] == AWS_VPCE_ID and value.isascii():
                return value[1:].decode("ascii")
        return None

    @property
    def gcp_psc_connection_id(self) -> int | None:
        """Google Cloud Private Service Connect: the connection id."""
        for value in _values(self.tlvs, TLVType.GCP_PSC):
            if len(value) == 8:
                return int.from_bytes(value, "big")
        return None

    @property
    def azure_private_link_id(self) -> int | None:
        """Azure Private Link: the LINKID of the private endpoint."""
        for value in _values(self.tlvs, TLVType.AZURE):
            if len(value) == 5 and value[0] == AZURE_PRIVATE_LINK_ID:
                return int.from_bytes(value[1:], "little")
        return None


def split_tlvs(data: bytes, start: int = 0, end: int | None = None) -> tuple[TLV, ...]:
    """Split ``data[start:end]`` into TLVs; a record running past ``end`` is a ``ValueError``."""
    if end is None:
        end = len(data)
    tlvs = []
    offset = start
    while offset < end:
        if offset + 3 > end:
            raise ValueError(f"a TLV header at offset {offset} runs past the end")
        kind = data[offset]
        length = (data[offset + 1] << 8) | data[offset + 2]
        value_end = offset + 3 + length
        if value_end > end:
            raise ValueError(f"TLV 0x{kind:02X} of length {length} runs past the end")
        tlvs.append(TLV(kind, data[offset + 3 : value_end]))
        offset = value_end
    return tuple(tlvs)
