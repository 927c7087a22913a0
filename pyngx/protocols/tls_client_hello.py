"""Sans-I/O reader of a TLS ClientHello, as nginx's ssl_preread module reads it."""

# Design notes
# ------------
# * Sans-I/O, in the style of h11 and of proxy_protocol.py: parse() looks at whatever the caller
#   has buffered and returns the ClientHello, returns None to ask for more, or raises. It never
#   consumes anything: preread leaves every byte in the buffer for the upstream, so there is no
#   "consumed" count to return either.
# * What nginx does (src/stream/ngx_stream_ssl_preread_module.c), and we follow:
#   - ngx_stream_ssl_preread_handler() looks at 5-byte record headers. A first byte with the
#     high bit set, msg_type 1 and major version 0 or 3 is an SSLv2-framed ClientHello: nginx
#     takes the version from bytes 3-4 and stops there, without SNI or ALPN. Otherwise the
#     content type must be 22 (handshake) and the major version 3, or nginx declines ("not a
#     handshake", "unsupported SSL version"). It waits for each whole record before parsing it
#     and carries the handshake parser's state across records, so a ClientHello split over
#     several handshake records is reassembled.
#   - ngx_stream_ssl_preread_parse_record() takes client_version, the first server_name
#     (type host_name only, else decline), the first ALPN list (an empty name declines), and
#     sets the version to TLSv1.3 whenever a supported_versions extension is present, whatever
#     it lists. It stops as soon as the handshake length is used up; later bytes are ignored.
#   - ngx_stream_ssl_preread_protocol_variable() maps the version the way SSL_get_version()
#     prints it: 0x0002 "SSLv2", 0x0300 "SSLv3", 0x0301 "TLSv1", ... 0x0304 "TLSv1.3", and
#     anything else "". $ssl_preread_alpn_protocols joins the names with ","; neither it nor
#     $ssl_preread_server_name is lowercased (ngx_stream_validate_host() lowercases a copy, for
#     the virtual server lookup only).
#   - ngx_stream_core_preread_phase() fails the session ("preread buffer full") when
#     preread_buffer_size bytes hold no complete hello: that is TooLarge here.
# * Stricter than nginx: every length must agree with the one that encloses it, as in OpenSSL's
#   own parser. nginx ignores the extensions block length and the extension_data lengths of
#   server_name, ALPN and supported_versions, trusting the inner list lengths instead, so it can
#   read a name out of bytes that a TLS server parses as something else. Duplicate extensions
#   and a second host_name are refused for the same reason (RFC 8446 4.2, RFC 6066 3). Such a
#   hello cannot complete a handshake with a conforming server, so refusing it only changes which
#   variables a doomed connection logs, and routing never trusts an ambiguous name.
# * Fail fast, as in proxy_protocol.py: the partial handshake is parsed against its announced
#   length on every call, so a check that no later byte can change fails at once, while every
#   prefix of a valid hello yields None. Records and the handshake announce their lengths up
#   front, so one that cannot end within `limit` is TooLarge before its bytes arrive.
# * A malformed hello raises ClientHelloError, input that is not TLS at all NotTLS (a subclass):
#   nginx treats both alike (no variables, go on proxying), but a caller may want to log them
#   differently. Nothing else escapes for any input: all reads go through _Reader, which only
#   raises ClientHelloError or the private _NeedMore that parse() turns into None.
# * All work is bounded by `limit`: only data[:limit] is copied and looked at, and each call
#   is a single pass over it.
# * Names are decoded as UTF-8 with surrogateescape, the pyngx convention for variable values,
#   so that odd bytes are written back unchanged by the access log.

from dataclasses import dataclass

DEFAULT_LIMIT = 16384  # nginx's preread_buffer_size default

RECORD_HEADER = 5  # content type, version (2), length (2)
HANDSHAKE_HEADER = 4  # msg_type, length (3)
CONTENT_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 1
SSL3_MAJOR = 3
SSLV2_CLIENT_HELLO = 1
RANDOM_LEN = 32
MAX_SESSION_ID = 32

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
NAME_TYPE_HOST_NAME = 0

TLS1_3_VERSION = 0x0304

# SSL_get_version() names, as ngx_stream_ssl_preread_protocol_variable() lists them.
PROTOCOL_NAMES: dict[int, str] = {
    0x0002: "SSLv2",
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}


class ClientHelloError(Exception):
    """A ClientHello was rejected; `reason` says why, for the log."""

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotTLS(ClientHelloError):
    """The input does not start with a TLS handshake record (nor an SSLv2 ClientHello)."""


class TooLarge(ClientHelloError):
    """No complete ClientHello fits within the limit."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello offers. `protocol` is $ssl_preread_protocol, `server_name` is
    $ssl_preread_server_name (None when no SNI was sent; nginx's variable is then empty) and
    `alpn_protocols` is $ssl_preread_alpn_protocols. An SSLv2-framed hello (`sslv2`) carries
    only its version, as nginx reads nothing else of it."""

    legacy_version: int
    server_name: str | None
    alpn: tuple[str, ...]
    supported_versions: tuple[int, ...]
    protocol: str
    cipher_suites: tuple[int, ...] = ()
    extensions: tuple[int, ...] = ()
    sslv2: bool = False

    @property
    def alpn_protocols(self) -> str:
        """The value of $ssl_preread_alpn_protocols."""
        return ",".join(self.alpn)


class _NeedMore(Exception):
    """Internal: the bytes so far are a valid prefix. Never leaves parse()."""


def protocol_name(version: int) -> str:
    """$ssl_preread_protocol for a version number: "" when SSL_get_version() has no name."""
    return PROTOCOL_NAMES.get(version, "")


# --------------------------------------------------------------------------------------------
# Parsing


def parse(
    data: bytes | bytearray | memoryview, *, limit: int = DEFAULT_LIMIT
) -> ClientHello | None:
    """Read the ClientHello at the start of `data`.

    Returns None if more bytes are needed. Raises NotTLS, TooLarge or ClientHelloError; `limit`
    is nginx's preread_buffer_size: a hello that is not complete within it is TooLarge.
    """
    if limit < RECORD_HEADER:
        # A caller's bug, not peer input, hence not a ClientHelloError.
        raise ValueError(f"limit must be at least {RECORD_HEADER}, not {limit!r}")
    with memoryview(data) as raw, raw.cast("B") as view:
        head = bytes(view[:limit])
    if not head:
        return None
    if head[0] & 0x80:
        return _parse_sslv2(head)
    handshake, complete = _reassemble(head, limit)
    try:
        hello = _parse_handshake(handshake)
    except _NeedMore:
        hello = None
    # nginx parses whole records only, so a hello that ends inside a record still waits for
    # the end of that record.
    if hello is not None and complete:
        return hello
    if len(head) >= limit:
        raise TooLarge(f"no complete ClientHello within {limit} bytes")
    return None


def _parse_sslv2(head: bytes) -> ClientHello | None:
    # SSLv2 framing: 2-byte length with the high bit set, then msg_type and version. nginx
    # decides on these 5 bytes alone and reads nothing else, so neither do we.
    if len(head) > 2 and head[2] != SSLV2_CLIENT_HELLO:
        raise NotTLS("not a TLS handshake record")
    if len(head) > 3 and head[3] not in (0, SSL3_MAJOR):
        raise NotTLS("not a TLS handshake record")
    if len(head) < RECORD_HEADER:
        return None
    version = head[3] << 8 | head[4]
    return ClientHello(
        legacy_version=version,
        server_name=None,
        alpn=(),
        supported_versions=(),
        protocol=protocol_name(version),
        sslv2=True,
    )


def _reassemble(head: bytes, limit: int) -> tuple[bytes, bool]:
    """The handshake bytes carried by the records in `head`, partial last record included, and
    whether the handshake message is complete within whole records."""
    fragments: list[bytes] = []
    gathered = 0  # handshake bytes in whole records
    needed: int | None = None  # the handshake message's total length, once known
    pos = 0
    size = len(head)
    while pos < size:
        _check_record_start(head, pos)
        if size - pos < RECORD_HEADER:
            break
        length = head[pos + 3] << 8 | head[pos + 4]
        end = pos + RECORD_HEADER + length
        if end > limit:
            raise TooLarge(f"TLS record of {length} bytes ends past the {limit}-byte limit")
        fragment = head[pos + RECORD_HEADER : end]
        fragments.append(fragment)
        if end > size:
            break
        gathered += length
        pos = end
        if needed is None and gathered >= HANDSHAKE_HEADER:
            hs = b"".join(fragments)
            needed = HANDSHAKE_HEADER + (hs[1] << 16 | hs[2] << 8 | hs[3])
            # At least one record header precedes the message; fail now rather than after
            # waiting for bytes that could never fit.
            if needed + RECORD_HEADER > limit:
                raise TooLarge(f"ClientHello of {needed} bytes cannot fit in {limit} bytes")
        if needed is not None and gathered >= needed:
            return b"".join(fragments), True
    handshake = b"".join(fragments)
    if needed is None and len(handshake) >= HANDSHAKE_HEADER:
        # Known from a partial record: the same early TooLarge.
        needed = HANDSHAKE_HEADER + int.from_bytes(handshake[1:4], "big")
        if needed + RECORD_HEADER > limit:
            raise TooLarge(f"ClientHello of {needed} bytes cannot fit in {limit} bytes")
    return handshake, False


def _check_record_start(head: bytes, pos: int) -> None:
    # The first record decides whether this is TLS at all; a later record of another type
    # is a broken hello, not another protocol (nginx declines both alike).
    error = NotTLS if pos == 0 else ClientHelloError
    if head[pos] != CONTENT_HANDSHAKE:
        raise error(f"record of content type {head[pos]} where a handshake record was expected")
    if pos + 1 < len(head) and head[pos + 1] != SSL3_MAJOR:
        raise error(f"unsupported record version major {head[pos + 1]}")


class _Reader:
    """Reads buf[pos:end], where `end` is what the enclosing length field announced and `buf`
    may hold less so far. Reading past `end` is malformed input; reading past the bytes present
    is _NeedMore."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def remaining(self) -> int:
        return self.end - self.pos

    def _advance(self, n: int, what: str) -> int:
        start = self.pos
        if start + n > self.end:
            raise ClientHelloError(f"{what} runs past its enclosing length")
        self.pos = start + n
        return start

    def take(self, n: int, what: str) -> bytes:
        start = self._advance(n, what)
        if self.pos > len(self.buf):
            raise _NeedMore
        return self.buf[start : self.pos]

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, len_size: int, what: str) -> "_Reader":
        """A reader over a length-prefixed field. Its bytes need not be present yet: the parent
        skips them, and reads from the child ask for more when they get there."""
        length = self.uint(len_size, f"{what} length")
        start = self._advance(length, what)
        return _Reader(self.buf, start, self.pos)

    def whole(self, len_size: int, what: str) -> "_Reader":
        """A length-prefixed field that must fill the rest of this reader exactly."""
        child = self.vector(len_size, what)
        if self.pos != self.end:
            raise ClientHelloError(f"{what} length disagrees with its enclosing length")
        return child

    def rest(self) -> bytes:
        """The remaining bytes, for fields we walk without decoding."""
        return self.take(self.remaining(), "field")


def _parse_handshake(hs: bytes) -> ClientHello:
    if not hs:
        raise _NeedMore
    if hs[0] != HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError(f"handshake message of type {hs[0]} is not a ClientHello")
    if len(hs) < HANDSHAKE_HEADER:
        raise _NeedMore
    body_end = HANDSHAKE_HEADER + (hs[1] << 16 | hs[2] << 8 | hs[3])
    r = _Reader(hs, HANDSHAKE_HEADER, body_end)

    legacy_version = r.uint(2, "client_version")
    r.take(RANDOM_LEN, "random")
    session_id = r.vector(1, "session_id")
    if session_id.remaining() > MAX_SESSION_ID:
        raise ClientHelloError(f"session_id of {session_id.remaining()} bytes")
    suites = r.vector(2, "cipher_suites")
    if suites.remaining() == 0 or suites.remaining() % 2:
        raise ClientHelloError(f"cipher_suites of {suites.remaining()} bytes")
    compression = r.vector(1, "compression_methods")
    if compression.remaining() == 0:
        raise ClientHelloError("no compression_methods")
    cipher_suites = tuple(suites.uint(2, "cipher suite") for _ in range(suites.remaining() // 2))

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    types: list[int] = []
    # Pre-TLS 1.0 hellos may end after compression_methods: no extensions at all.
    if r.remaining():
        block = r.whole(2, "extensions")
        while block.remaining():
            ext_type = block.uint(2, "extension type")
            ext = block.vector(2, f"extension {ext_type}")
            if ext_type in types:
                raise ClientHelloError(f"duplicate extension {ext_type}")
            types.append(ext_type)
            if ext_type == EXT_SERVER_NAME:
                server_name = _server_name(ext)
            elif ext_type == EXT_ALPN:
                alpn = _alpn(ext)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                versions = _supported_versions(ext)
    # The loop above skips unknown extensions without reading them, so the last one may not
    # have arrived yet.
    if len(hs) < body_end:
        raise _NeedMore

    # nginx: supported_versions present means TLSv1.3, whatever it lists.
    version = TLS1_3_VERSION if EXT_SUPPORTED_VERSIONS in types else legacy_version
    return ClientHello(
        legacy_version=legacy_version,
        server_name=server_name,
        alpn=alpn,
        supported_versions=versions,
        protocol=protocol_name(version),
        cipher_suites=cipher_suites,
        extensions=tuple(types),
    )


def _server_name(ext: _Reader) -> str:
    names = ext.whole(2, "server_name list")
    if not names.remaining():
        raise ClientHelloError("empty server_name list")
    host: bytes | None = None
    seen: set[int] = set()
    while names.remaining():
        name_type = names.uint(1, "server_name type")
        value = names.vector(2, "server_name").rest()
        if host is None and name_type != NAME_TYPE_HOST_NAME:
            # nginx only reads the first entry and declines unless it is a host_name.
            raise ClientHelloError(f"first server_name is of type {name_type}, not host_name")
        if name_type in seen:
            raise ClientHelloError(f"more than one server_name of type {name_type}")
        seen.add(name_type)
        if host is None:
            host = value
    assert host is not None  # the list is not empty and its first entry is a host_name
    # No NUL: whatever reads the name as a C string (OpenSSL refuses such names, the upstream's
    # logs, a resolver) would see a different name than the one we route on.
    if b"\x00" in host:
        raise ClientHelloError("NUL byte in server_name")
    # Empty is kept as "", as nginx's $ssl_preread_server_name does.
    return host.decode("utf-8", "surrogateescape")


def _alpn(ext: _Reader) -> tuple[str, ...]:
    names = ext.whole(2, "ALPN list")
    if not names.remaining():
        raise ClientHelloError("empty ALPN list")
    protocols = []
    while names.remaining():
        name = names.vector(1, "ALPN protocol").rest()
        if not name:
            raise ClientHelloError("empty ALPN protocol name")
        protocols.append(name.decode("utf-8", "surrogateescape"))
    return tuple(protocols)


def _supported_versions(ext: _Reader) -> tuple[int, ...]:
    versions = ext.whole(1, "supported_versions list")
    count, odd = divmod(versions.remaining(), 2)
    if count == 0 or odd:
        raise ClientHelloError(f"supported_versions list of {versions.remaining()} bytes")
    return tuple(versions.uint(2, "supported version") for _ in range(count))
