"""Tests for the sans-I/O ClientHello reader (nginx's ssl_preread)."""

import ssl
import struct
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyngx.protocols import tls_client_hello as ch
from pyngx.protocols.tls_client_hello import (
    ClientHello,
    ClientHelloError,
    NotTLS,
    TooLarge,
    parse,
)

# --------------------------------------------------------------------------------------------
# Helpers


@cache
def real_hello(
    hostname: str | None = "mail.example.com",
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    max_tls12: bool = False,
) -> bytes:
    """A ClientHello as OpenSSL sends it, captured from a MemoryBIO: no network involved."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def handshake_of(records: bytes) -> bytes:
    """The handshake bytes carried by a run of TLS records."""
    out = bytearray()
    pos = 0
    while pos < len(records):
        length = int.from_bytes(records[pos + 3 : pos + 5], "big")
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def frame(handshake: bytes, cuts: list[int] | None = None, version: bytes = b"\x03\x01") -> bytes:
    """`handshake` in handshake records, split at the offsets in `cuts`."""
    bounds = [0, *(cuts or []), len(handshake)]
    out = bytearray()
    for start, end in zip(bounds, bounds[1:], strict=False):
        out += b"\x16" + version + struct.pack(">H", end - start) + handshake[start:end]
    return bytes(out)


def vec(len_size: int, body: bytes) -> bytes:
    return len(body).to_bytes(len_size, "big") + body


def sni(*entries: tuple[int, bytes]) -> tuple[int, bytes]:
    return 0, vec(2, b"".join(bytes([t]) + vec(2, name) for t, name in entries))


def alpn_ext(*names: bytes) -> tuple[int, bytes]:
    return 16, vec(2, b"".join(vec(1, n) for n in names))


def build(
    extensions: list[tuple[int, bytes]] | None = None,
    version: int = 0x0303,
    raw_extensions: bytes | None = None,
) -> bytes:
    """A hand-made ClientHello in one record; `extensions=None` omits the block entirely."""
    body = version.to_bytes(2, "big") + bytes(32) + vec(1, b"") + vec(2, b"\x13\x01") + b"\x01\x00"
    if raw_extensions is not None:
        body += raw_extensions
    elif extensions is not None:
        body += vec(2, b"".join(t.to_bytes(2, "big") + vec(2, d) for t, d in extensions))
    return frame(b"\x01" + vec(3, body))


def outcome(data: bytes, limit: int = ch.DEFAULT_LIMIT) -> object:
    """parse()'s result, or the ClientHelloError class it raised; anything else propagates."""
    try:
        return parse(data, limit=limit)
    except ClientHelloError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return type(exc)


# --------------------------------------------------------------------------------------------
# Real ClientHellos


def test_default_context_hello() -> None:
    hello = parse(real_hello())
    assert isinstance(hello, ClientHello)
    assert hello.server_name == "mail.example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.alpn_protocols == "h2,http/1.1"
    assert hello.protocol == "TLSv1.3"
    assert hello.legacy_version == 0x0303
    assert 0x0304 in hello.supported_versions
    assert hello.cipher_suites and 0x1301 in hello.cipher_suites
    assert {0, 16, 43} <= set(hello.extensions)
    assert not hello.sslv2


def test_tls12_only_hello() -> None:
    hello = parse(real_hello(max_tls12=True))
    assert hello is not None
    assert hello.protocol == "TLSv1.2"
    assert hello.supported_versions == ()
    assert hello.server_name == "mail.example.com"
    assert hello.alpn == ("h2", "http/1.1")


def test_hello_without_sni_or_alpn() -> None:
    hello = parse(real_hello(hostname=None, alpn=()))
    assert hello is not None
    assert hello.server_name is None
    assert hello.alpn == ()
    assert hello.alpn_protocols == ""


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types(kind: type) -> None:
    buf = kind(real_hello())
    assert parse(buf) == parse(real_hello())
    if isinstance(buf, bytearray):
        buf += b"x"  # no memoryview left exported on it


@pytest.mark.parametrize("max_tls12", [False, True])
def test_every_prefix_needs_more(max_tls12: bool) -> None:
    data = real_hello(max_tls12=max_tls12)
    for n in range(len(data)):
        assert parse(data[:n]) is None, n


@pytest.mark.parametrize("parts", [2, 3, 4, 5])
def test_split_into_records(parts: int) -> None:
    data = real_hello()
    expected = parse(data)
    handshake = handshake_of(data)
    step = len(handshake) // parts
    # Cuts inside the 4-byte handshake header and at the very end of it too.
    for first in (1, 3, 4, step):
        cuts = sorted({first, *(step * i for i in range(2, parts))})
        framed = frame(handshake, cuts)
        assert parse(framed) == expected
        for n in range(len(framed)):
            assert parse(framed[:n]) is None, (cuts, n)


def test_one_byte_records() -> None:
    data = real_hello()
    handshake = handshake_of(data)
    framed = frame(handshake, list(range(1, len(handshake))))
    assert parse(framed) == parse(data)


def test_empty_records_are_tolerated() -> None:
    # nginx's parser just makes no progress on an empty record.
    handshake = handshake_of(real_hello())
    framed = frame(b"") + frame(handshake, [10]) + frame(b"")
    assert parse(framed) == parse(real_hello())


@pytest.mark.parametrize("extra", [b"\x00", b"\x17\x03\x03\x00\x05hello", b"GET / HTTP/1.1\r\n"])
def test_trailing_bytes_are_ignored(extra: bytes) -> None:
    assert parse(real_hello() + extra) == parse(real_hello())


def test_hello_ending_inside_a_record_waits_for_the_record() -> None:
    # nginx parses whole records only; bytes after the hello in its record are then ignored.
    handshake = handshake_of(real_hello())
    framed = frame(handshake + b"\xff" * 10)
    for n in range(len(framed)):
        assert parse(framed[:n]) is None, n
    assert parse(framed) == parse(real_hello())


# --------------------------------------------------------------------------------------------
# nginx's rules


def test_sni_case_is_kept() -> None:
    hello = parse(build([sni((0, b"Mail.Example.COM"))]))
    assert hello is not None and hello.server_name == "Mail.Example.COM"


def test_empty_host_name_is_empty_string() -> None:
    hello = parse(build([sni((0, b""))]))
    assert hello is not None and hello.server_name == ""


def test_first_server_name_must_be_host_name() -> None:
    with pytest.raises(ClientHelloError, match="host_name"):
        parse(build([sni((1, b"x"), (0, b"a.example"))]))
    hello = parse(build([sni((0, b"a.example"), (1, b"x"))]))
    assert hello is not None and hello.server_name == "a.example"


def test_non_ascii_names_round_trip() -> None:
    hello = parse(build([sni((0, b"caf\xe9.example")), alpn_ext(b"\xff\x00")]))
    assert hello is not None and hello.server_name is not None
    assert hello.server_name.encode("utf-8", "surrogateescape") == b"caf\xe9.example"
    assert hello.alpn[0].encode("utf-8", "surrogateescape") == b"\xff\x00"


def test_supported_versions_means_tls13_whatever_it_lists() -> None:
    hello = parse(build([(43, vec(1, b"\x03\x03"))]))
    assert hello is not None
    assert hello.supported_versions == (0x0303,)
    assert hello.protocol == "TLSv1.3"


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (0x0300, "SSLv3"),
        (0x0301, "TLSv1"),
        (0x0302, "TLSv1.1"),
        (0x0303, "TLSv1.2"),
        (0x0304, "TLSv1.3"),
        (0x0305, ""),
        (0x0200, ""),
    ],
)
def test_protocol_from_client_version(version: int, name: str) -> None:
    hello = parse(build(None, version=version))
    assert hello is not None
    assert hello.protocol == name
    assert hello.extensions == ()


@pytest.mark.parametrize(
    ("head", "protocol"),
    [
        (b"\x80\x2e\x01\x00\x02", "SSLv2"),
        (b"\x80\x2e\x01\x03\x00", "SSLv3"),
        (b"\x80\x2e\x01\x03\x01", "TLSv1"),
        (b"\x81\x00\x01\x00\x07", ""),
    ],
)
def test_sslv2_hello(head: bytes, protocol: str) -> None:
    for n in range(len(head)):
        assert parse(head[:n]) is None
    hello = parse(head + bytes(40))
    assert hello is not None
    assert hello.sslv2
    assert hello.protocol == protocol
    assert hello.server_name is None and hello.alpn == ()


@pytest.mark.parametrize(
    "data",
    [
        b"G",
        b"GET / HTTP/1.1\r\n",
        b"\x00",
        b"\x15\x03\x01",
        b"\x16\x02",
        b"\x80\x2e\x02",
        b"\x80\x2e\x01\x02",
    ],
)
def test_not_tls(data: bytes) -> None:
    with pytest.raises(NotTLS):
        parse(data)


def test_not_a_client_hello() -> None:
    handshake = bytearray(handshake_of(real_hello()))
    handshake[0] = 2
    with pytest.raises(ClientHelloError) as info:
        parse(frame(bytes(handshake[:1])))  # decided on its first byte
    assert not isinstance(info.value, NotTLS)


def test_other_record_inside_hello_is_malformed_not_not_tls() -> None:
    handshake = handshake_of(real_hello())
    data = frame(handshake[:100]) + b"\x17\x03\x03\x00\x01x"
    with pytest.raises(ClientHelloError) as info:
        parse(data)
    assert not isinstance(info.value, (NotTLS, TooLarge))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (build([sni((0, b"a")), sni((0, b"b"))]), "duplicate"),
        (build([sni((0, b"a"), (0, b"b"))]), "more than one"),
        (build([(0, vec(2, b""))]), "empty server_name"),
        (build([sni((0, b"a\x00b"))]), "NUL"),
        (build([(0, vec(2, b"\x00\x00\x01a") + b"junk")]), "disagrees"),
        (build([alpn_ext(b"h2", b"")]), "empty ALPN protocol"),
        (build([(16, vec(2, b""))]), "empty ALPN list"),
        (build([(43, vec(1, b"\x03"))]), "supported_versions"),
        (build(raw_extensions=b"\x00\x02" + b"\x00\x00\x00\x00"), "disagrees"),
        (build(raw_extensions=b"\x00\x01"), "runs past"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(ClientHelloError, match=match) as info:
        parse(data)
    assert not isinstance(info.value, (NotTLS, TooLarge))


# --------------------------------------------------------------------------------------------
# Limits


def test_record_longer_than_limit_fails_at_once() -> None:
    data = real_hello()
    with pytest.raises(TooLarge):
        parse(data[:5], limit=100)


def test_hello_longer_than_limit_fails_at_once() -> None:
    handshake = handshake_of(real_hello())
    with pytest.raises(TooLarge):
        parse(frame(handshake, [4])[:9], limit=len(handshake))


def test_hello_exactly_at_limit() -> None:
    data = real_hello()
    assert parse(data + b"more", limit=len(data)) == parse(data)
    with pytest.raises(TooLarge):
        parse(data, limit=len(data) - 1)


def test_many_small_records_run_into_limit() -> None:
    handshake = handshake_of(real_hello())
    framed = frame(handshake, list(range(1, len(handshake))))
    limit = 2000
    assert len(handshake) + 5 < limit < len(framed)
    assert parse(framed[: limit - 1], limit=limit) is None
    with pytest.raises(TooLarge):
        parse(framed[:limit], limit=limit)
    with pytest.raises(TooLarge):
        parse(framed, limit=limit)


def test_limit_must_be_sane() -> None:
    with pytest.raises(ValueError):
        parse(real_hello(), limit=0)


# --------------------------------------------------------------------------------------------
# Hostile input


def _check_any(data: bytes, limit: int = ch.DEFAULT_LIMIT) -> object:
    result = outcome(data, limit)
    assert (
        result is None
        or isinstance(result, ClientHello)
        or result
        in (
            ClientHelloError,
            NotTLS,
            TooLarge,
        )
    )
    return result


def test_every_length_field_set_to_extremes() -> None:
    # Whatever 2-byte field sits at an offset, 0xFFFF and 0 there must not break the parser.
    data = real_hello()
    for i in range(len(data) - 1):
        for value in (b"\xff\xff", b"\x00\x00", b"\x00\x01"):
            _check_any(data[:i] + value + data[i + 2 :])


def test_every_truncation_of_every_layer() -> None:
    handshake = handshake_of(real_hello())
    for n in range(0, len(handshake), 7):
        # A handshake header announcing more than the records hold, and the opposite.
        _check_any(frame(handshake[:n]))
        _check_any(frame(handshake[:n]) + frame(handshake[n:]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=5, max_value=20000))
def test_garbage(data: bytes, limit: int) -> None:
    _check_any(data, limit)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_after_tls_header(data: bytes) -> None:
    _check_any(b"\x16\x03\x01" + data)
    _check_any(b"\x16\x03\x01\x02\x00\x01" + data)


@st.composite
def mutated_hellos(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([real_hello(), real_hello(max_tls12=True)])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "set", "length", "cut", "insert"]))
        i = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "set" and data:
            data[i] = draw(st.integers(min_value=0, max_value=255))
        elif kind == "length":
            data[i : i + 2] = draw(st.sampled_from([b"\xff\xff", b"\x00\x00", b"\x80\x00"]))
        elif kind == "cut":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_hellos(), st.data())
def test_mutated_hellos(data: bytes, more: st.DataObject) -> None:
    full = _check_any(data)
    # Fail fast and never change one's mind: an answer given on a prefix stands.
    cut = more.draw(st.integers(min_value=0, max_value=len(data)))
    early = _check_any(data[:cut])
    if isinstance(early, ClientHello):
        assert full == early
    elif early is not None:
        assert full is not None and not isinstance(full, ClientHello)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=500), st.integers(min_value=5, max_value=600))
def test_split_hello_against_any_limit(first: int, limit: int) -> None:
    handshake = handshake_of(real_hello())
    framed = frame(handshake, [min(first, len(handshake) - 1)])
    result = _check_any(framed, limit)
    assert result is TooLarge or result == parse(real_hello())
