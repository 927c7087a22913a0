"""Sans-I/O codec for the PROXY protocol, versions 1 (text) and 2 (binary)."""

# Design notes
# ------------
# * Sans-I/O, in the style of h11: parse() looks at whatever the caller has buffered and either
#   returns the header and how many bytes it occupies, returns None to ask for more, or raises.
#   It never consumes anything, so the caller keeps ownership of its buffer and of the payload
#   that follows the header.
# * Fail fast. A check that no later byte can change is made as soon as its bytes are present:
#   a prefix that no valid header starts with raises at once, while every prefix of a valid
#   header yields None. That way a client that is not speaking the protocol at all is dropped
#   after its first bytes instead of after a read timeout.
# * Every rejection of peer input is a ProxyProtocolError, so that callers can turn any
#   malformed header into one log line and a closed connection without a catch-all that would
#   also hide our own bugs. The encoders raise ValueError instead: bad arguments there are a
#   bug in the caller, not bad input from the network.
# * Stricter than nginx on v1: nginx only checks the character set of the addresses and uses
#   ngx_atoi() for ports. We require what the spec requires (valid addresses of the announced
#   family, no leading zeros, single spaces), because the text ends up in access rules and logs.
# * Addresses are returned as text, normalised so that v1 and v2 agree and so that the value
#   does not depend on the Python version: ipaddress prints IPv4-mapped IPv6 addresses as
#   "::ffff:7f00:1" before 3.13 and "::ffff:127.0.0.1" since; we always use the dotted form,
#   which is also what nginx's ngx_inet6_ntop() prints.
# * MAX_HEADER is a receiver policy (nginx's read buffer), not a wire limit, so the encoder only
#   enforces the 16-bit length field.
# * Only the header is ever copied out of the caller's buffer, and every memoryview taken on it
#   is released before returning (or raising), so a bytearray stays resizable afterwards.

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from crc32c import crc32c as _crc32c

V1_MAX_HEADER = 107  # spec: the longest v1 line, CRLF included
V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_HEADER = 16  # signature, ver_cmd, fam, len
V2_VERSION = 2
MAX_HEADER = 4096  # nginx's NGX_PROXY_PROTOCOL_MAX_HEADER
V2_MAX_LENGTH = 0xFFFF  # the len field is 16 bits
UNIX_PATH_LEN = 108  # sizeof(sun_path), which v2 copies verbatim


class Family(IntEnum):
    UNSPEC = 0
    INET = 1
    INET6 = 2
    UNIX = 3


class Transport(IntEnum):
    UNSPEC = 0
    STREAM = 1
    DGRAM = 2


class Command(IntEnum):
    LOCAL = 0
    PROXY = 1


ADDRESS_BLOCK_SIZES: dict[Family, int] = {
    Family.UNSPEC: 0,
    Family.INET: 2 * 4 + 2 * 2,
    Family.INET6: 2 * 16 + 2 * 2,
    Family.UNIX: 2 * UNIX_PATH_LEN,
}

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

# Bits of the `client` field of a PP2_TYPE_SSL value.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

TLV_HEADER = 3  # type (1 byte) + length (2 bytes)
TLV_MAX_VALUE = 0xFFFF
CRC32C_VALUE_LEN = 4
SSL_TLV_FIXED = 5  # client (1 byte) + verify (4 bytes)

_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_V1_TCP4 = b"TCP4 "
_V1_TCP6 = b"TCP6 "
_V1_UNKNOWN = b"UNKNOWN"
_V1_LINE_CHARS = frozenset(b"0123456789abcdefABCDEF:. ")
_V1_MAX_PORT_DIGITS = 5
_MAX_PORT = 0xFFFF
_IPV4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_PORTS = struct.Struct(">HH")
_COMMANDS = frozenset(int(c) for c in Command)
_FAMILIES = frozenset(int(f) for f in Family)
_TRANSPORTS = frozenset(int(t) for t in Transport)


class ProxyProtocolError(Exception):
    """A PROXY protocol header was rejected.

    `header` holds the start of the offending input (at most V1_MAX_HEADER bytes) so that it can
    be logged the way nginx logs `broken header: "..."`.
    """

    header: bytes

    def __init__(self, message: str, header: bytes = b"") -> None:
        super().__init__(message)
        self.header = bytes(header[:V1_MAX_HEADER])


class BrokenHeader(ProxyProtocolError):
    """The header is malformed."""


class HeaderTooLong(ProxyProtocolError):
    """The header exceeds the size limits before it is complete."""


class ChecksumMismatch(BrokenHeader):
    """A PP2_TYPE_CRC32C TLV is present and does not match the header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    command: Command
    family: Family
    transport: Transport
    src_addr: str | None
    dst_addr: str | None
    src_port: int | None
    dst_port: int | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, type_: int) -> bytes | None:
        """The value of the first TLV of type `type_`, or None."""
        for tlv_type, value in self.tlvs:
            if tlv_type == type_:
                return value
        return None


# --------------------------------------------------------------------------------------------
# Parsing


def parse(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY protocol header at the start of `data`.

    Returns (header, consumed) where `consumed` is the exact length of the header, or None if
    more bytes are needed. Raises BrokenHeader, HeaderTooLong or ChecksumMismatch.
    """
    with memoryview(data) as raw, raw.cast("B") as view:
        size = len(view)
        if size == 0:
            return None
        start = bytes(view[: len(V2_SIGNATURE)])
        binary = start == V2_SIGNATURE[: len(start)]
        try:
            if binary:
                return _parse_v2(view, size)
            if start[: len(V1_PREFIX)] != V1_PREFIX[: min(size, len(V1_PREFIX))]:
                raise BrokenHeader("not a PROXY protocol header")
            return _parse_v1(bytes(view[:V1_MAX_HEADER]), size)
        except ProxyProtocolError as exc:
            # Filled in here, where the caller's buffer is known, rather than threaded through
            # every helper.
            exc.header = _log_excerpt(bytes(view[:V1_MAX_HEADER]), binary)
            raise


def _log_excerpt(head: bytes, binary: bool) -> bytes:
    # Like nginx, stop text at the first CR or LF so that one log line shows one line. A binary
    # header starts with CRLF, so that rule would show nothing of it; it is kept whole.
    if binary:
        return head
    for i, byte in enumerate(head):
        if byte in b"\r\n":
            return head[:i]
    return head


# v1 --------------------------------------------------------------------------------------------


def _parse_v1(window: bytes, size: int) -> tuple[ProxyHeader, int] | None:
    # `window` is at most V1_MAX_HEADER bytes, so a CRLF found in it ends the line in time.
    end = window.find(b"\r\n")
    if end == -1:
        _check_v1_partial(window)
        if size >= V1_MAX_HEADER:
            raise HeaderTooLong(f"no CRLF within the first {V1_MAX_HEADER} bytes")
        return None
    return _decode_v1(window[:end]), end + 2


def _check_v1_partial(window: bytes) -> None:
    # Only what no later byte can repair is rejected: a CR as the last byte may still be
    # followed by its LF, and a truncated protocol token may still be completed.
    text = window[:-1] if window.endswith(b"\r") else window
    if b"\r" in text or b"\n" in text:
        raise BrokenHeader("PROXY line not terminated by CRLF")
    rest = text[len(V1_PREFIX) :]
    if not any(rest.startswith(p) or p.startswith(rest) for p in _V1_PROTOCOLS):
        raise BrokenHeader("unknown PROXY protocol family")
    if rest.startswith((_V1_TCP4, _V1_TCP6)) and not _V1_LINE_CHARS.issuperset(rest[5:]):
        raise BrokenHeader("invalid character in PROXY line")


def _decode_v1(line: bytes) -> ProxyHeader:
    if b"\r" in line or b"\n" in line:
        raise BrokenHeader("PROXY line not terminated by CRLF")
    rest = line[len(V1_PREFIX) :]
    if rest.startswith(_V1_UNKNOWN):
        # The spec tells receivers to ignore whatever follows UNKNOWN; nginx does the same.
        return ProxyHeader(
            1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, None, None
        )
    protocol = rest[: len(_V1_TCP4)]
    if protocol not in (_V1_TCP4, _V1_TCP6):
        raise BrokenHeader("unknown PROXY protocol family")
    fields = rest[len(protocol) :].split(b" ")
    if len(fields) != 4:
        raise BrokenHeader("PROXY line must have 4 space-separated fields")
    ipv6 = protocol == _V1_TCP6
    return ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=Family.INET6 if ipv6 else Family.INET,
        transport=Transport.STREAM,
        src_addr=_v1_address(fields[0], ipv6),
        dst_addr=_v1_address(fields[1], ipv6),
        src_port=_v1_port(fields[2]),
        dst_port=_v1_port(fields[3]),
    )


def _v1_address(field: bytes, ipv6: bool) -> str:
    # The character check comes first because ipaddress accepts more than the spec does, such
    # as IPv6 scope ids ("fe80::1%eth0").
    if not field or not _V1_LINE_CHARS.issuperset(field):
        raise BrokenHeader("invalid address in PROXY line")
    text = field.decode("ascii")
    try:
        if ipv6:
            return _format_ipv6(ipaddress.IPv6Address(text).packed)
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise BrokenHeader("invalid address in PROXY line") from None


def _v1_port(field: bytes) -> int:
    # The spec forbids leading zeros (octal confusion); nginx's ngx_atoi() would accept them.
    if (
        not 1 <= len(field) <= _V1_MAX_PORT_DIGITS
        or not field.isdigit()
        or (len(field) > 1 and field.startswith(b"0"))
    ):
        raise BrokenHeader("invalid port in PROXY line")
    port = int(field)
    if port > _MAX_PORT:
        raise BrokenHeader("invalid port in PROXY line")
    return port


# v2 --------------------------------------------------------------------------------------------


def _parse_v2(view: memoryview, size: int) -> tuple[ProxyHeader, int] | None:
    sig_len = len(V2_SIGNATURE)
    if size > sig_len:
        _check_ver_cmd(view[sig_len])
    if size > sig_len + 1:
        _check_fam(view[sig_len + 1])
    if size < V2_FIXED_HEADER:
        return None
    total = V2_FIXED_HEADER + (view[14] << 8 | view[15])
    if total > MAX_HEADER:
        raise HeaderTooLong(f"PROXY protocol v2 header of {total} bytes exceeds {MAX_HEADER}")
    if size < total:
        return None
    return _decode_v2(bytes(view[:total])), total


def _check_ver_cmd(ver_cmd: int) -> None:
    if ver_cmd >> 4 != V2_VERSION:
        raise BrokenHeader(f"unknown PROXY protocol version: {ver_cmd >> 4}")
    if ver_cmd & 0x0F not in _COMMANDS:
        raise BrokenHeader(f"unknown PROXY protocol v2 command: {ver_cmd & 0x0F}")


def _check_fam(fam: int) -> None:
    if fam >> 4 not in _FAMILIES:
        raise BrokenHeader(f"unknown PROXY protocol v2 address family: {fam >> 4}")
    if fam & 0x0F not in _TRANSPORTS:
        raise BrokenHeader(f"unknown PROXY protocol v2 transport: {fam & 0x0F}")


def _decode_v2(header: bytes) -> ProxyHeader:
    command = Command(header[12] & 0x0F)
    family = Family(header[13] >> 4)
    transport = Transport(header[13] & 0x0F)
    block_end = V2_FIXED_HEADER + ADDRESS_BLOCK_SIZES[family]
    src_addr = dst_addr = None
    src_port = dst_port = None

    if command is Command.PROXY:
        if len(header) < block_end:
            raise BrokenHeader(f"PROXY protocol v2 address block too short for {family.name}")
        src_addr, dst_addr, src_port, dst_port = _decode_addresses(
            family, header[V2_FIXED_HEADER:block_end]
        )
    elif len(header) < block_end:
        # LOCAL: the spec says to accept it and ignore the block, family included, and that a
        # LOCAL sender should present no address at all, so a block that is shorter than the
        # family claims is not an error; it just cannot hold TLVs we could find.
        block_end = len(header)

    entries = _walk_tlvs(header, block_end, len(header))
    for tlv_type, start, length in entries:
        if tlv_type == PP2_TYPE_CRC32C:
            _verify_crc32c(header, start, length)
    tlvs = tuple((tlv_type, header[start : start + length]) for tlv_type, start, length in entries)
    return ProxyHeader(2, command, family, transport, src_addr, dst_addr, src_port, dst_port, tlvs)


def _decode_addresses(
    family: Family, block: bytes
) -> tuple[str | None, str | None, int | None, int | None]:
    if family is Family.INET:
        src_port, dst_port = _PORTS.unpack_from(block, 8)
        src = str(ipaddress.IPv4Address(block[0:4]))
        return src, str(ipaddress.IPv4Address(block[4:8])), src_port, dst_port
    if family is Family.INET6:
        src_port, dst_port = _PORTS.unpack_from(block, 32)
        return _format_ipv6(block[0:16]), _format_ipv6(block[16:32]), src_port, dst_port
    if family is Family.UNIX:
        src = _decode_unix_path(block[:UNIX_PATH_LEN])
        return src, _decode_unix_path(block[UNIX_PATH_LEN:]), None, None
    return None, None, None, None


def _format_ipv6(packed: bytes) -> str:
    addr = ipaddress.IPv6Address(packed)
    if addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return addr.compressed


def _decode_unix_path(raw: bytes) -> str:
    # sun_path is a C string, so it ends at the first NUL (nginx uses strnlen). A Linux
    # abstract name starts with NUL and is not a C string; its trailing padding is dropped.
    if raw.startswith(b"\x00"):
        path = raw.rstrip(b"\x00")
    else:
        path = raw.split(b"\x00", 1)[0]
    # surrogateescape, like os.fsdecode(): paths need not be UTF-8, and the round trip
    # through encode_v2() must give back the same bytes.
    return path.decode("utf-8", "surrogateescape")


def _walk_tlvs(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(type, value offset, value length) of each TLV in buf[pos:end]."""
    entries = []
    while pos < end:
        if end - pos < TLV_HEADER:
            raise BrokenHeader("truncated PROXY protocol TLV")
        tlv_type = buf[pos]
        length = buf[pos + 1] << 8 | buf[pos + 2]
        start = pos + TLV_HEADER
        pos = start + length
        if pos > end:
            raise BrokenHeader(f"PROXY protocol TLV 0x{tlv_type:02x} runs past the header")
        entries.append((tlv_type, start, length))
    return entries


def _verify_crc32c(header: bytes, start: int, length: int) -> None:
    if length != CRC32C_VALUE_LEN:
        raise BrokenHeader(f"PROXY protocol CRC32C TLV has length {length}, not 4")
    expected = int.from_bytes(header[start : start + CRC32C_VALUE_LEN], "big")
    zeroed = header[:start] + bytes(CRC32C_VALUE_LEN) + header[start + CRC32C_VALUE_LEN :]
    actual = _crc32c(zeroed)
    if actual != expected:
        raise ChecksumMismatch(
            f"PROXY protocol CRC32C mismatch: header says 0x{expected:08x}, computed 0x{actual:08x}"
        )


def parse_ssl_tlv(value: bytes) -> tuple[int, int, tuple[tuple[int, bytes], ...]]:
    """Split a PP2_TYPE_SSL value into (client, verify, sub_tlvs). Raises BrokenHeader."""
    data = bytes(value)
    try:
        if len(data) < SSL_TLV_FIXED:
            raise BrokenHeader(f"PROXY protocol SSL TLV shorter than {SSL_TLV_FIXED} bytes")
        entries = _walk_tlvs(data, SSL_TLV_FIXED, len(data))
    except ProxyProtocolError as exc:
        exc.header = data[:V1_MAX_HEADER]
        raise
    subs = tuple((tlv_type, data[start : start + length]) for tlv_type, start, length in entries)
    return data[0], int.from_bytes(data[1:SSL_TLV_FIXED], "big"), subs


# --------------------------------------------------------------------------------------------
# Encoding


def encode_v1(
    src_addr: str | None, src_port: int | None, dst_addr: str | None, dst_port: int | None
) -> bytes:
    """A v1 line as nginx's ngx_proxy_protocol_write() produces it.

    The protocol follows the source address (TCP4 or TCP6) and addresses are written exactly as
    given; if any value is None (a unix socket) the line is b"PROXY UNKNOWN\\r\\n".
    """
    if src_addr is None or src_port is None or dst_addr is None or dst_port is None:
        return b"PROXY UNKNOWN\r\n"
    src = _ip_address(src_addr)
    _ip_address(dst_addr)
    _check_port(src_port)
    _check_port(dst_port)
    protocol = "TCP4" if src.version == 4 else "TCP6"
    line = f"PROXY {protocol} {src_addr} {dst_addr} {src_port:d} {dst_port:d}\r\n"
    return line.encode("ascii")


def encode_v1_trusted(src_addr: str, src_port: int, dst_addr: str, dst_port: int) -> bytes:
    """encode_v1 for addresses that are well-formed by construction (the kernel's peer and
    local addresses, or a parsed header's): the per-connection path skips re-validating them.
    """
    protocol = "TCP6" if ":" in src_addr else "TCP4"
    return f"PROXY {protocol} {src_addr} {dst_addr} {src_port} {dst_port}\r\n".encode("ascii")


def encode_v2(
    command: Command = Command.PROXY,
    transport: Transport = Transport.STREAM,
    src_addr: str | None = None,
    src_port: int | None = None,
    dst_addr: str | None = None,
    dst_port: int | None = None,
    tlvs: Iterable[tuple[int, bytes]] = (),
    *,
    crc32c: bool = True,
) -> bytes:
    """A binary v2 header.

    The family follows the addresses: INET for two IPv4 addresses, INET6 for two IPv6 ones (an
    IPv4 address next to an IPv6 one is sent IPv4-mapped, as nginx does), UNIX for two paths
    starting with "/", and UNSPEC with no address block when a value is missing. LOCAL always
    sends family and transport UNSPEC and no addresses. With `crc32c`, a PP2_TYPE_CRC32C TLV
    is appended, computed over the whole header with its own value zeroed (spec 2.2.3).
    """
    command = Command(command)
    transport = Transport(transport)
    if command is Command.LOCAL:
        # The spec asks LOCAL senders for UNSPEC, and receivers ignore the block anyway.
        fam = Family.UNSPEC << 4 | Transport.UNSPEC
        body = bytearray()
    else:
        family, block = _encode_addresses(src_addr, src_port, dst_addr, dst_port)
        fam = family << 4 | transport
        body = bytearray(block)

    for tlv_type, value in tlvs:
        if crc32c and tlv_type == PP2_TYPE_CRC32C:
            raise ValueError("a CRC32C TLV is added by crc32c=True; do not pass one")
        _append_tlv(body, tlv_type, value)
    crc_offset = 0
    if crc32c:
        crc_offset = V2_FIXED_HEADER + len(body) + TLV_HEADER
        _append_tlv(body, PP2_TYPE_CRC32C, bytes(CRC32C_VALUE_LEN))
    if len(body) > V2_MAX_LENGTH:
        raise ValueError(f"PROXY protocol v2 header body of {len(body)} bytes exceeds 65535")

    header = bytearray(V2_SIGNATURE)
    header += bytes((V2_VERSION << 4 | command, fam))
    header += len(body).to_bytes(2, "big")
    header += body
    if crc32c:
        checksum = _crc32c(bytes(header))
        header[crc_offset : crc_offset + CRC32C_VALUE_LEN] = checksum.to_bytes(4, "big")
    return bytes(header)


def encode_v2_local(tlvs: Iterable[tuple[int, bytes]] = (), *, crc32c: bool = False) -> bytes:
    """A v2 LOCAL header, as sent on health checks."""
    return encode_v2(Command.LOCAL, Transport.UNSPEC, tlvs=tlvs, crc32c=crc32c)


def _encode_addresses(
    src_addr: str | None, src_port: int | None, dst_addr: str | None, dst_port: int | None
) -> tuple[Family, bytes]:
    if src_addr is not None and dst_addr is not None:
        src_path, dst_path = src_addr.startswith("/"), dst_addr.startswith("/")
        if src_path and dst_path:
            return Family.UNIX, _encode_unix_path(src_addr) + _encode_unix_path(dst_addr)
        if src_path or dst_path:
            return Family.UNSPEC, b""
    if src_addr is None or dst_addr is None or src_port is None or dst_port is None:
        return Family.UNSPEC, b""
    src = _ip_address(src_addr)
    dst = _ip_address(dst_addr)
    _check_port(src_port)
    _check_port(dst_port)
    ports = _PORTS.pack(src_port, dst_port)
    if src.version == 4 and dst.version == 4:
        return Family.INET, src.packed + dst.packed + ports
    return Family.INET6, _ipv6_packed(src) + _ipv6_packed(dst) + ports


def _ipv6_packed(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if addr.version == 4:
        return _IPV4_MAPPED_PREFIX + addr.packed
    return addr.packed


def _encode_unix_path(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > UNIX_PATH_LEN:
        raise ValueError(f"unix socket path longer than {UNIX_PATH_LEN} bytes: {path!r}")
    return raw.ljust(UNIX_PATH_LEN, b"\x00")


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # Validated even where the text is copied verbatim: anything else, a CRLF above all, would
    # let a caller's bad value forge or break the line the upstream trusts.
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise ValueError(f"scoped IPv6 address cannot be sent: {text!r}")
    return addr


def _check_port(port: int) -> None:
    if not 0 <= port <= _MAX_PORT:
        raise ValueError(f"port out of range: {port!r}")


def _append_tlv(body: bytearray, tlv_type: int, value: bytes) -> None:
    if not 0 <= tlv_type <= 0xFF:
        raise ValueError(f"TLV type out of range: {tlv_type!r}")
    if len(value) > TLV_MAX_VALUE:
        raise ValueError(f"TLV 0x{tlv_type:02x} value longer than {TLV_MAX_VALUE} bytes")
    body.append(tlv_type)
    body += len(value).to_bytes(2, "big")
    body += value


# --------------------------------------------------------------------------------------------
# Logging


def describe(header: ProxyHeader) -> str:
    """A short one-line form of `header` for debug logs."""
    parts = [f"PROXY v{header.version} {header.command.name}"]
    if header.family is not Family.UNSPEC or header.transport is not Transport.UNSPEC:
        parts.append(f"{header.family.name}/{header.transport.name}")
    if header.src_addr is not None or header.dst_addr is not None:
        src = _endpoint(header.src_addr, header.src_port)
        parts.append(f"{src} -> {_endpoint(header.dst_addr, header.dst_port)}")
    if header.tlvs:
        tlvs = ",".join(f"0x{tlv_type:02x}:{len(value)}" for tlv_type, value in header.tlvs)
        parts.append(f"tlvs={tlvs}")
    return " ".join(parts)


def _endpoint(addr: str | None, port: int | None) -> str:
    if addr is None:
        return "-"
    if port is None:
        # Abstract unix names start with NUL; repr keeps them readable in a log line.
        return addr if addr.startswith("/") else repr(addr)
    if ":" in addr:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"
