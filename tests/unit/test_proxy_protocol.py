"""Tests for the sans-I/O PROXY protocol codec."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyngx.protocols import proxy_protocol as pp
from pyngx.protocols.proxy_protocol import (
    MAX_HEADER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    V1_MAX_HEADER,
    V2_SIGNATURE,
    BrokenHeader,
    ChecksumMismatch,
    Command,
    Family,
    HeaderTooLong,
    ProxyHeader,
    ProxyProtocolError,
    Transport,
    describe,
    encode_v1,
    encode_v2,
    encode_v2_local,
    parse,
    parse_ssl_tlv,
)

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
IPV4_BLOCK = bytes.fromhex("7f000017 7f000001 d431 0019")  # 127.0.0.23:54321 -> 127.0.0.1:25


def crc32c_reference(data: bytes) -> int:
    # Bit by bit, reflected Castagnoli polynomial: deliberately not the library the codec uses.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_crc(header_without_value: bytes) -> bytes:
    """Append the 4-byte checksum to a header that ends with an empty CRC32C TLV value."""
    checksum = crc32c_reference(header_without_value + bytes(4))
    return header_without_value + checksum.to_bytes(4, "big")


def canonical(text: str) -> str:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return addr.compressed


def test_reference_crc32c_check_value() -> None:
    assert crc32c_reference(b"123456789") == 0xE3069283


def test_signature_constant() -> None:
    assert V2_SIGNATURE == SIG


# --------------------------------------------------------------------------------------------
# v1 encoding and known lines


def test_encode_v1_tcp4_is_byte_exact() -> None:
    line = encode_v1("127.0.0.23", 54321, "127.0.0.1", 25)
    assert line == b"PROXY TCP4 127.0.0.23 127.0.0.1 54321 25\r\n"


def test_encode_v1_tcp6() -> None:
    assert encode_v1("::1", 1, "::1", 2) == b"PROXY TCP6 ::1 ::1 1 2\r\n"


def test_encode_v1_keeps_ipv4_mapped_text_as_tcp6() -> None:
    line = encode_v1("::ffff:127.0.0.1", 5, "::ffff:127.0.0.2", 6)
    assert line == b"PROXY TCP6 ::ffff:127.0.0.1 ::ffff:127.0.0.2 5 6\r\n"


@pytest.mark.parametrize(
    "args",
    [
        (None, None, None, None),
        (None, 1, "127.0.0.1", 2),
        ("127.0.0.1", None, "127.0.0.1", 2),
        ("127.0.0.1", 1, None, 2),
        ("127.0.0.1", 1, "127.0.0.1", None),
    ],
)
def test_encode_v1_unknown_when_anything_is_missing(args: tuple) -> None:
    assert encode_v1(*args) == b"PROXY UNKNOWN\r\n"


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1\r\n", 1, "127.0.0.1", 2),
        ("fe80::1%eth0", 1, "fe80::2", 2),
        ("example.com", 1, "127.0.0.1", 2),
        ("127.0.0.1", 65536, "127.0.0.1", 2),
        ("127.0.0.1", 1, "127.0.0.1", -1),
    ],
)
def test_encode_v1_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        encode_v1(*args)


def test_encode_v1_mixed_families_follow_the_source_like_nginx() -> None:
    # realip can give an IPv4 listener an IPv6 client: nginx writes TCP6 and both texts as is.
    assert (
        encode_v1("2001:db8::1", 1, "127.0.0.1", 2) == b"PROXY TCP6 2001:db8::1 127.0.0.1 1 2\r\n"
    )


def test_parse_v1_tcp4() -> None:
    line = b"PROXY TCP4 127.0.0.23 127.0.0.1 54321 25\r\n"
    assert parse(line + b"EHLO x\r\n") == (
        ProxyHeader(
            1, Command.PROXY, Family.INET, Transport.STREAM, "127.0.0.23", "127.0.0.1", 54321, 25
        ),
        len(line),
    )


def test_parse_v1_tcp6_normalises_addresses() -> None:
    result = parse(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:10.0.0.1 1 65535\r\n")
    assert result is not None
    header, _ = result
    assert header.family is Family.INET6
    assert (header.src_addr, header.dst_addr) == ("2001:db8::1", "::ffff:10.0.0.1")
    assert (header.src_port, header.dst_port) == (1, 65535)


def test_parse_v1_port_zero_is_accepted_like_nginx() -> None:
    result = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r\n")
    assert result is not None
    assert (result[0].src_port, result[0].dst_port) == (0, 0)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n",
        b"PROXY UNKNOWN whatever \xff\x00 follows\r\n",
    ],
)
def test_parse_v1_unknown_ignores_the_rest_of_the_line(line: bytes) -> None:
    assert parse(line + b"payload") == (
        ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, None, None),
        len(line),
    )


def test_v1_line_of_exactly_107_bytes_is_accepted() -> None:
    line = b"PROXY UNKNOWN " + b"f" * (V1_MAX_HEADER - 16) + b"\r\n"
    assert len(line) == V1_MAX_HEADER
    result = parse(line)
    assert result is not None and result[1] == V1_MAX_HEADER


def test_v1_without_crlf_needs_more_until_107_bytes() -> None:
    start = b"PROXY UNKNOWN " + b"f" * (V1_MAX_HEADER - 15)
    assert len(start) == V1_MAX_HEADER - 1
    assert parse(start) is None
    with pytest.raises(HeaderTooLong):
        parse(start + b"f")


def test_v1_too_long_108_bytes_without_crlf() -> None:
    data = b"PROXY UNKNOWN " + b"a" * (108 - 14)
    assert len(data) == 108
    with pytest.raises(HeaderTooLong) as info:
        parse(data)
    assert len(info.value.header) == V1_MAX_HEADER


def test_v1_crlf_just_past_the_limit_is_too_long() -> None:
    line = b"PROXY UNKNOWN " + b"f" * (V1_MAX_HEADER - 15) + b"\r\n"
    assert len(line) == V1_MAX_HEADER + 1
    with pytest.raises(HeaderTooLong):
        parse(line)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF only
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",  # CR not followed by LF
        b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n",
        b"PROXY UNKNOWN\r\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",  # bad family
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # bad port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero in an octet
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scope id
        b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n",  # non-ASCII
        b"PROXY TCP4 \xd9\xa1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",
        b"PROXY TCP4\r\n",
        b"PROXY \r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ],
)
def test_v1_rejections(line: bytes) -> None:
    with pytest.raises(BrokenHeader):
        parse(line)


# --------------------------------------------------------------------------------------------
# v2 known vectors, written out from the spec


def test_v2_ipv4_vector_without_crc() -> None:
    expected = SIG + bytes.fromhex("21 11 000c") + IPV4_BLOCK
    encoded = encode_v2(
        Command.PROXY, Transport.STREAM, "127.0.0.23", 54321, "127.0.0.1", 25, crc32c=False
    )
    assert encoded == expected
    assert parse(expected + b"payload") == (
        ProxyHeader(
            2, Command.PROXY, Family.INET, Transport.STREAM, "127.0.0.23", "127.0.0.1", 54321, 25
        ),
        28,
    )


def test_v2_ipv6_vector_without_crc() -> None:
    expected = (
        SIG
        + bytes.fromhex("21 21 0024")
        + bytes.fromhex("20010db8 00000000 00000000 00000001")
        + bytes.fromhex("00000000 00000000 00000000 00000001")
        + bytes.fromhex("01bb 1f90")
    )
    assert (
        encode_v2(src_addr="2001:db8::1", src_port=443, dst_addr="::1", dst_port=8080, crc32c=False)
        == expected
    )
    result = parse(expected)
    assert result is not None
    header, consumed = result
    assert consumed == 16 + 36
    assert (header.family, header.transport) == (Family.INET6, Transport.STREAM)
    assert (header.src_addr, header.src_port) == ("2001:db8::1", 443)
    assert (header.dst_addr, header.dst_port) == ("::1", 8080)


def test_v2_udp_vector() -> None:
    expected = SIG + bytes.fromhex("21 12 000c") + IPV4_BLOCK
    encoded = encode_v2(
        Command.PROXY, Transport.DGRAM, "127.0.0.23", 54321, "127.0.0.1", 25, crc32c=False
    )
    assert encoded == expected
    result = parse(expected)
    assert result is not None and result[0].transport is Transport.DGRAM


def test_v2_ipv4_vector_with_crc32c() -> None:
    expected = with_crc(SIG + bytes.fromhex("21 11 0013") + IPV4_BLOCK + bytes.fromhex("03 0004"))
    assert len(expected) == 16 + 12 + 7
    encoded = encode_v2(src_addr="127.0.0.23", src_port=54321, dst_addr="127.0.0.1", dst_port=25)
    assert encoded == expected
    result = parse(expected)
    assert result is not None
    header, consumed = result
    assert consumed == len(expected)
    assert header.tlvs == ((PP2_TYPE_CRC32C, expected[-4:]),)
    assert header.tlv(PP2_TYPE_CRC32C) == expected[-4:]


def test_v2_tlvs_in_wire_order_with_crc32c_last() -> None:
    expected = with_crc(
        SIG
        + bytes.fromhex("21 11 0018")
        + IPV4_BLOCK
        + bytes.fromhex("01 0002")
        + b"h2"
        + bytes.fromhex("03 0004")
    )
    encoded = encode_v2(
        src_addr="127.0.0.23",
        src_port=54321,
        dst_addr="127.0.0.1",
        dst_port=25,
        tlvs=[(PP2_TYPE_ALPN, b"h2")],
    )
    assert encoded == expected
    result = parse(expected)
    assert result is not None
    assert result[0].tlvs == ((PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_CRC32C, expected[-4:]))
    assert result[0].tlv(PP2_TYPE_ALPN) == b"h2"
    assert result[0].tlv(PP2_TYPE_NOOP) is None


def test_v2_local_vector() -> None:
    expected = SIG + bytes.fromhex("20 00 0000")
    assert encode_v2_local() == expected
    assert (
        encode_v2(
            Command.LOCAL,
            src_addr="1.2.3.4",
            src_port=1,
            dst_addr="1.2.3.4",
            dst_port=2,
            crc32c=False,
        )
        == expected
    )
    assert parse(expected) == (
        ProxyHeader(2, Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, None, None, None, None),
        16,
    )


def test_v2_local_with_tlvs_and_crc() -> None:
    expected = with_crc(SIG + bytes.fromhex("20 00 000c") + bytes.fromhex("04 0002 0000 03 0004"))
    assert encode_v2_local([(PP2_TYPE_NOOP, b"\0\0")], crc32c=True) == expected
    result = parse(expected)
    assert result is not None
    assert result[0].command is Command.LOCAL
    assert result[0].tlv(PP2_TYPE_NOOP) == b"\0\0"


def test_v2_local_ignores_addresses_but_records_family() -> None:
    data = SIG + bytes.fromhex("20 11 000f") + IPV4_BLOCK + bytes.fromhex("04 0000")
    result = parse(data)
    assert result is not None
    header, consumed = result
    assert consumed == len(data)
    assert (header.command, header.family, header.transport) == (
        Command.LOCAL,
        Family.INET,
        Transport.STREAM,
    )
    assert (header.src_addr, header.dst_addr, header.src_port, header.dst_port) == (None,) * 4
    assert header.tlvs == ((PP2_TYPE_NOOP, b""),)


def test_v2_local_with_family_but_no_address_is_accepted() -> None:
    # The spec tells LOCAL senders not to present addresses and receivers to ignore the family.
    result = parse(SIG + bytes.fromhex("20 11 0000"))
    assert result is not None
    assert (result[0].command, result[0].family, result[0].src_addr) == (
        Command.LOCAL,
        Family.INET,
        None,
    )


def test_v2_unix_vector() -> None:
    src = b"/run/a.sock".ljust(108, b"\0")
    dst = b"/run/b.sock".ljust(108, b"\0")
    expected = SIG + bytes.fromhex("21 31 00d8") + src + dst
    assert encode_v2(src_addr="/run/a.sock", dst_addr="/run/b.sock", crc32c=False) == expected
    assert parse(expected) == (
        ProxyHeader(
            2,
            Command.PROXY,
            Family.UNIX,
            Transport.STREAM,
            "/run/a.sock",
            "/run/b.sock",
            None,
            None,
        ),
        16 + 216,
    )


def test_v2_unix_path_stops_at_first_nul() -> None:
    src = b"/a\0junk".ljust(108, b"\0")
    abstract = b"\0name".ljust(108, b"\0")
    result = parse(SIG + bytes.fromhex("21 32 00d8") + src + abstract)
    assert result is not None
    assert (result[0].src_addr, result[0].dst_addr) == ("/a", "\0name")


def test_v2_unspec_family_has_no_address_block() -> None:
    expected = SIG + bytes.fromhex("21 01 0005") + bytes.fromhex("01 0002") + b"h2"
    encoded = encode_v2(
        src_addr="1.2.3.4", dst_addr="1.2.3.4", dst_port=1, tlvs=[(1, b"h2")], crc32c=False
    )
    assert encoded == expected
    result = parse(expected)
    assert result is not None
    assert result[0].family is Family.UNSPEC
    assert result[0].src_addr is None
    assert result[0].tlvs == ((PP2_TYPE_ALPN, b"h2"),)


def test_v2_path_next_to_ip_is_unspec() -> None:
    encoded = encode_v2(
        src_addr="/run/a.sock", src_port=1, dst_addr="1.2.3.4", dst_port=2, crc32c=False
    )
    assert encoded == SIG + bytes.fromhex("21 01 0000")


def test_v2_mixed_families_are_sent_as_ipv4_mapped_ipv6() -> None:
    encoded = encode_v2(src_addr="10.0.0.1", src_port=1, dst_addr="::1", dst_port=2, crc32c=False)
    assert encoded == (
        SIG
        + bytes.fromhex("21 21 0024")
        + bytes.fromhex("00000000 00000000 0000ffff 0a000001")
        + bytes.fromhex("00000000 00000000 00000000 00000001")
        + bytes.fromhex("0001 0002")
    )
    result = parse(encoded)
    assert result is not None
    assert result[0].src_addr == "::ffff:10.0.0.1"


def test_v2_header_of_exactly_max_header_is_accepted() -> None:
    pad = MAX_HEADER - 16 - 12 - 3
    data = SIG + b"\x21\x11" + (MAX_HEADER - 16).to_bytes(2, "big")
    data += IPV4_BLOCK + bytes([PP2_TYPE_NOOP]) + pad.to_bytes(2, "big") + bytes(pad)
    assert len(data) == MAX_HEADER
    result = parse(data)
    assert result is not None and result[1] == MAX_HEADER


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (SIG + b"\x11", BrokenHeader),  # version 1 nibble
        (SIG + b"\x31", BrokenHeader),  # version 3
        (SIG + b"\x22", BrokenHeader),  # command 2
        (SIG + b"\x2f", BrokenHeader),
        (SIG + b"\x21\x41", BrokenHeader),  # family 4
        (SIG + b"\x21\x13", BrokenHeader),  # transport 3
        (SIG + b"\x21\x11" + (MAX_HEADER - 15).to_bytes(2, "big"), HeaderTooLong),
        (SIG + b"\x21\x11\xff\xff", HeaderTooLong),
        (SIG + bytes.fromhex("21 11 000b") + IPV4_BLOCK[:11], BrokenHeader),  # short block
        (SIG + bytes.fromhex("21 21 000c") + IPV4_BLOCK, BrokenHeader),
        (SIG + bytes.fromhex("21 31 0024") + bytes(36), BrokenHeader),
        (SIG + bytes.fromhex("21 11 000f") + IPV4_BLOCK + b"\x01\x00\x05", BrokenHeader),
        (SIG + bytes.fromhex("21 11 0011") + IPV4_BLOCK + b"\x01\x00\x05ab", BrokenHeader),
        (SIG + bytes.fromhex("21 11 000e") + IPV4_BLOCK + b"\x01\x00", BrokenHeader),
        (SIG + bytes.fromhex("21 11 000d") + IPV4_BLOCK + b"\x01", BrokenHeader),
    ],
)
def test_v2_rejections(data: bytes, error: type[ProxyProtocolError]) -> None:
    with pytest.raises(error) as info:
        parse(data)
    assert type(info.value) is error
    assert info.value.header == data[:V1_MAX_HEADER]


def test_v2_too_long_is_raised_with_only_the_fixed_header() -> None:
    with pytest.raises(HeaderTooLong):
        parse(SIG + b"\x21\x11" + (MAX_HEADER - 15).to_bytes(2, "big"))


def test_v2_checksum_mismatch() -> None:
    good = encode_v2(src_addr="127.0.0.23", src_port=54321, dst_addr="127.0.0.1", dst_port=25)
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    with pytest.raises(ChecksumMismatch):
        parse(bad)
    tampered = good[:20] + b"\x18" + good[21:]  # 127.0.0.23 -> 127.0.0.24
    with pytest.raises(ChecksumMismatch):
        parse(tampered)


def test_v2_crc32c_tlv_of_wrong_length_is_broken_not_mismatch() -> None:
    data = SIG + bytes.fromhex("21 11 0012") + IPV4_BLOCK + bytes.fromhex("03 0003 000000")
    with pytest.raises(BrokenHeader) as info:
        parse(data)
    assert type(info.value) is BrokenHeader


def test_v2_every_crc32c_tlv_is_checked() -> None:
    first = with_crc(SIG + bytes.fromhex("21 11 001a") + IPV4_BLOCK + bytes.fromhex("03 0004"))
    data = first + bytes.fromhex("03 0004 00000000")
    with pytest.raises(ChecksumMismatch):
        parse(data)


# --------------------------------------------------------------------------------------------
# Early rejection, incompleteness, buffers


@pytest.mark.parametrize(
    "data",
    [b"G", b"GET", b"GET / HTTP/1.1", b"\x16\x03\x01", b"PROXX", b"PROXY\t", b"\r\n\r\nX", b"\n"],
)
def test_garbage_is_rejected_without_waiting(data: bytes) -> None:
    with pytest.raises(BrokenHeader):
        parse(data)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY X",
        b"PROXY TCP7",
        b"PROXY UNKNOWX",
        b"PROXY TCP4 1.2.3.4 g",
        b"PROXY TCP4 1.2.3.4\n",
        b"PROXY TCP4 1.2\r5",
    ],
)
def test_v1_prefix_that_cannot_become_valid_is_rejected_early(data: bytes) -> None:
    with pytest.raises(BrokenHeader):
        parse(data)


def test_empty_input_needs_more() -> None:
    assert parse(b"") is None


def test_error_header_is_the_first_line_for_logging() -> None:
    with pytest.raises(BrokenHeader) as info:
        parse(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert info.value.header == b"GET / HTTP/1.1"
    with pytest.raises(BrokenHeader) as info:
        parse(b"X" * 500)
    assert info.value.header == b"X" * V1_MAX_HEADER


def test_accepts_bytearray_and_memoryview() -> None:
    header = encode_v2(src_addr="1.2.3.4", src_port=1, dst_addr="5.6.7.8", dst_port=2)
    expected = parse(header)
    assert expected is not None
    assert parse(bytearray(header + b"data")) == expected
    assert parse(memoryview(header + b"data")) == expected
    assert parse(memoryview(b"xx" + header + b"data")[2:]) == expected


def test_bytearray_stays_resizable_after_parse() -> None:
    buf = bytearray(encode_v1("1.2.3.4", 1, "5.6.7.8", 2) + b"payload")
    result = parse(buf)
    assert result is not None
    del buf[: result[1]]
    assert buf == b"payload"

    buf = bytearray(b"GET / HTTP/1.1\r\n")
    with pytest.raises(BrokenHeader) as info:
        parse(buf)
    # The exception's traceback is still alive here, and must not pin the buffer.
    assert info.value is not None
    del buf[:4]
    buf += b"more"


# --------------------------------------------------------------------------------------------
# SSL TLV and describe()


def test_parse_ssl_tlv() -> None:
    value = (
        bytes.fromhex("05 00000000")
        + bytes.fromhex("21 0007")
        + b"TLSv1.3"
        + bytes.fromhex("22 000b")
        + b"example.com"
    )
    data = SIG + b"\x21\x11" + (12 + 3 + len(value)).to_bytes(2, "big")
    data += IPV4_BLOCK + bytes([PP2_TYPE_SSL]) + len(value).to_bytes(2, "big") + value
    result = parse(data)
    assert result is not None
    ssl = result[0].tlv(PP2_TYPE_SSL)
    assert ssl == value
    assert parse_ssl_tlv(ssl) == (
        pp.PP2_CLIENT_SSL | pp.PP2_CLIENT_CERT_SESS,
        0,
        ((PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"), (PP2_SUBTYPE_SSL_CN, b"example.com")),
    )


@pytest.mark.parametrize(
    "value",
    [b"", b"\x01\x00\x00\x00", b"\x01\x00\x00\x00\x00\x21", b"\x01\x00\x00\x00\x00\x21\x00\x02a"],
)
def test_parse_ssl_tlv_rejects_malformed(value: bytes) -> None:
    with pytest.raises(BrokenHeader) as info:
        parse_ssl_tlv(value)
    assert info.value.header == value


def test_describe() -> None:
    v1 = parse(b"PROXY TCP4 127.0.0.23 127.0.0.1 54321 25\r\n")
    assert v1 is not None
    assert describe(v1[0]) == "PROXY v1 PROXY INET/STREAM 127.0.0.23:54321 -> 127.0.0.1:25"
    v2 = parse(encode_v2(src_addr="::1", src_port=1, dst_addr="::2", dst_port=2))
    assert v2 is not None
    assert describe(v2[0]) == "PROXY v2 PROXY INET6/STREAM [::1]:1 -> [::2]:2 tlvs=0x03:4"
    local = parse(encode_v2_local())
    assert local is not None
    assert describe(local[0]) == "PROXY v2 LOCAL"
    unix = parse(encode_v2(src_addr="/a", dst_addr="/b", crc32c=False))
    assert unix is not None
    assert describe(unix[0]) == "PROXY v2 PROXY UNIX/STREAM /a -> /b"


# --------------------------------------------------------------------------------------------
# encode_v2 argument checks


@pytest.mark.parametrize(
    "kwargs",
    [
        {"src_addr": "1.2.3.4", "src_port": 1, "dst_addr": "nope", "dst_port": 2},
        {"src_addr": "1.2.3.4", "src_port": 65536, "dst_addr": "1.2.3.4", "dst_port": 2},
        {"src_addr": "/" + "a" * 108, "dst_addr": "/b"},
        {"tlvs": [(256, b"")]},
        {"tlvs": [(1, b"x" * 65536)]},
        {"tlvs": [(PP2_TYPE_CRC32C, b"\0\0\0\0")]},
        {"tlvs": [(1, b"x" * 65000), (2, b"x" * 1000)]},
    ],
)
def test_encode_v2_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        encode_v2(**kwargs)


def test_encode_v2_allows_a_raw_crc_tlv_without_crc32c() -> None:
    data = encode_v2(tlvs=[(PP2_TYPE_CRC32C, b"\0\0\0\0")], crc32c=False)
    with pytest.raises(ChecksumMismatch):
        parse(data)


# --------------------------------------------------------------------------------------------
# Properties

PORTS = st.integers(0, 65535)
BOOLEANS = st.booleans()
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
TLVS = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t != PP2_TYPE_CRC32C), st.binary(max_size=40)),
    max_size=4,
)
UNIX_PATHS = (
    st.text(
        alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
        max_size=30,
    )
    .map(lambda s: "/" + s)
    .filter(lambda s: len(s.encode()) <= 108)
)


@st.composite
def ip_pairs(draw: st.DrawFn) -> tuple[str, str]:
    addrs = draw(st.sampled_from([IPV4, IPV6]))
    return draw(addrs), draw(addrs)


@st.composite
def v1_headers(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        rest = draw(st.binary(max_size=90).filter(lambda b: b"\r" not in b and b"\n" not in b))
        return b"PROXY UNKNOWN" + rest + b"\r\n"
    src, dst = draw(ip_pairs())
    return encode_v1(src, draw(PORTS), dst, draw(PORTS))


@st.composite
def v2_headers(draw: st.DrawFn, crc32c: st.SearchStrategy[bool] = BOOLEANS) -> bytes:
    tlvs = draw(TLVS)
    use_crc = draw(crc32c)
    kind = draw(st.sampled_from(["ip", "ip", "ip", "unix", "local", "unspec"]))
    transport = draw(st.sampled_from(list(Transport)))
    if kind == "ip":
        src, dst = draw(ip_pairs())
        return encode_v2(
            Command.PROXY, transport, src, draw(PORTS), dst, draw(PORTS), tlvs, crc32c=use_crc
        )
    if kind == "unix":
        return encode_v2(
            Command.PROXY,
            transport,
            draw(UNIX_PATHS),
            None,
            draw(UNIX_PATHS),
            None,
            tlvs,
            crc32c=use_crc,
        )
    if kind == "local":
        return encode_v2_local(tlvs, crc32c=use_crc)
    return encode_v2(Command.PROXY, transport, tlvs=tlvs, crc32c=use_crc)


ANY_HEADER = st.one_of(v1_headers(), v2_headers())


@settings(max_examples=300)
@given(ip_pairs(), PORTS, PORTS)
def test_v1_round_trip(addrs: tuple[str, str], src_port: int, dst_port: int) -> None:
    src, dst = addrs
    line = encode_v1(src, src_port, dst, dst_port)
    result = parse(line)
    assert result is not None
    header, consumed = result
    assert consumed == len(line)
    assert header.version == 1
    assert header.family is (Family.INET if ":" not in src else Family.INET6)
    assert (header.src_addr, header.dst_addr) == (canonical(src), canonical(dst))
    assert (header.src_port, header.dst_port) == (src_port, dst_port)


@settings(max_examples=300)
@given(ip_pairs(), PORTS, PORTS, st.sampled_from(list(Transport)), TLVS, st.booleans())
def test_v2_round_trip(
    addrs: tuple[str, str],
    src_port: int,
    dst_port: int,
    transport: Transport,
    tlvs: list[tuple[int, bytes]],
    use_crc: bool,
) -> None:
    src, dst = addrs
    data = encode_v2(Command.PROXY, transport, src, src_port, dst, dst_port, tlvs, crc32c=use_crc)
    result = parse(data)
    assert result is not None
    header, consumed = result
    assert consumed == len(data)
    assert (header.version, header.command, header.transport) == (2, Command.PROXY, transport)
    assert header.family is (Family.INET if ":" not in src else Family.INET6)
    assert (header.src_addr, header.dst_addr) == (canonical(src), canonical(dst))
    assert (header.src_port, header.dst_port) == (src_port, dst_port)
    expected_tlvs = tuple(tlvs)
    if use_crc:
        assert header.tlvs[:-1] == expected_tlvs
        assert header.tlvs[-1][0] == PP2_TYPE_CRC32C
        assert header.tlvs[-1][1] == crc32c_reference(data[:-4] + bytes(4)).to_bytes(4, "big")
    else:
        assert header.tlvs == expected_tlvs


@settings(max_examples=100)
@given(UNIX_PATHS, UNIX_PATHS)
def test_v2_unix_round_trip(src: str, dst: str) -> None:
    result = parse(encode_v2(src_addr=src, dst_addr=dst))
    assert result is not None
    assert (result[0].family, result[0].src_addr, result[0].dst_addr) == (Family.UNIX, src, dst)


@settings(max_examples=200)
@given(ANY_HEADER)
def test_every_prefix_needs_more(header: bytes) -> None:
    for end in range(len(header)):
        assert parse(header[:end]) is None, end
    assert parse(memoryview(header)[: len(header) - 1]) is None


@settings(max_examples=300)
@given(ANY_HEADER, st.binary(max_size=200))
def test_payload_is_not_consumed(header: bytes, payload: bytes) -> None:
    data = bytearray(header + payload)
    result = parse(data)
    assert result is not None
    assert result[1] == len(header)
    assert data[result[1] :] == payload
    assert parse(header) == result


def assert_only_typed_errors(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyProtocolError as exc:
        assert isinstance(exc.header, bytes)
        assert len(exc.header) <= V1_MAX_HEADER
        return
    if result is not None:
        header, consumed = result
        assert isinstance(header, ProxyHeader)
        assert 0 < consumed <= len(data)


V1_ISH = st.text(alphabet="TCP46UNKOW0123456789abcdefF:.% \r\n", max_size=110).map(
    lambda s: b"PROXY " + s.encode()
)
V2_ISH = st.tuples(
    st.sampled_from([0x20, 0x21, 0x11, 0x22]), st.integers(0, 255), st.binary(max_size=300)
).map(lambda t: SIG + bytes(t[:2]) + len(t[2]).to_bytes(2, "big") + t[2])


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), V1_ISH, V2_ISH, st.binary().map(lambda b: SIG + b)))
def test_garbage_only_raises_typed_errors(data: bytes) -> None:
    assert_only_typed_errors(data)


@settings(max_examples=300)
@given(ANY_HEADER, st.data())
def test_mutated_headers_only_raise_typed_errors(header: bytes, data: st.DataObject) -> None:
    mutated = bytearray(header)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    assert_only_typed_errors(bytes(mutated))


@settings(max_examples=300)
@given(v2_headers(crc32c=st.just(True)), st.data())
def test_flipped_byte_in_crc_protected_header_is_detected(
    header: bytes, data: st.DataObject
) -> None:
    original = parse(header)
    assert original is not None
    index = data.draw(st.integers(0, len(header) - 1))
    flipped = bytearray(header)
    flipped[index] ^= data.draw(st.integers(1, 255))
    try:
        result = parse(bytes(flipped))
    except ProxyProtocolError:
        return
    if result is None:  # the length field grew: the header now wants more bytes
        return
    assert result != original
    # A CRC32C detects every single-byte error, so a header that still parses cannot have kept
    # its checksum (the flip hit the TLV structure, e.g. the CRC TLV's type byte).
    assert result[0].tlv(PP2_TYPE_CRC32C) is None or result[1] != len(header)
