"""pyngx.http.realip: nginx's address parsing and printing, and the forwarded-address walk."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyngx.http.realip import (
    HEADER,
    XFWD,
    RealipConf,
    format_addr,
    forwarded_addr,
    inet6_ntop,
    parse_addr,
    parse_addr_port,
    parse_ipv4,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.2.3.4", 0x01020304),
        ("01.002.0003.4", 0x01020304),  # ngx_inet_addr takes leading zeros
        ("1..3.4", 0x01000304),  # and empty octets as 0
        ("1.2.3.", 0x01020300),
        ("0.0.0.0", 0),
        ("255.255.255.255", None),  # INADDR_NONE
        ("256.1.1.1", None),
        ("1.2.3", None),
        ("1.2.3.4.5", None),
        ("1.2.3.4 ", None),
        ("1.2.3.٤", None),  # not ASCII digits
        ("", None),
    ],
)
def test_parse_ipv4(text: str, value: int | None) -> None:
    assert parse_ipv4(text) == value


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("192.0.2.1", ((4, 0xC0000201), 0)),
        ("192.0.2.1:80", ((4, 0xC0000201), 80)),
        ("192.0.2.1:0", None),
        ("192.0.2.1:65536", None),
        ("192.0.2.1:", None),
        ("::1", ((6, 1), 0)),
        ("::1:80", ((6, 0x10080), 0)),  # a whole IPv6 address first
        ("[::1]:80", ((6, 1), 80)),
        ("[::1]", None),
        ("[::1]80", None),
        ("fe80::1%eth0", None),  # zones are not addresses to nginx
        ("example.com", None),
        ("", None),
    ],
)
def test_parse_addr_port(text: str, want: object) -> None:
    assert parse_addr_port(text) == want


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("::1", "::1"),
        ("::", "::"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),  # the first of equal runs
        ("2001:db8:1:1:1:1:0:1", "2001:db8:1:1:1:1:0:1"),  # a single zero group stays
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::192.0.2.1", "::192.0.2.1"),  # IPv4-compatible
        ("::2", "::0.0.0.2"),  # nginx prints these dotted too
        ("1::", "1::"),
        ("fe80::", "fe80::"),
    ],
)
def test_inet6_ntop(text: str, printed: str) -> None:
    assert inet6_ntop(ipaddress.IPv6Address(text).packed) == printed


@given(st.binary(min_size=16, max_size=16))
def test_inet6_ntop_reads_back(packed: bytes) -> None:
    text = inet6_ntop(packed)
    assert ipaddress.IPv6Address(text).packed == packed
    assert parse_addr(text) == (6, int.from_bytes(packed, "big"))


def conf(*nets: str, recursive: bool = False, unix: bool = False) -> RealipConf:
    n4, n6 = [], []
    for text in nets:
        net = ipaddress.ip_network(text)
        (n4 if net.version == 4 else n6).append((int(net.network_address), int(net.netmask)))
    return RealipConf(tuple(n4), tuple(n6), unix, XFWD, "", recursive)


PEER = (4, 0x7F000002)  # 127.0.0.2


def walk(c: RealipConf, *values: str, peer: tuple[int, int] | None = PEER) -> str | None:
    rc, addr, port = forwarded_addr(c, peer, list(values))
    if rc == 2:  # declined
        return None
    return format_addr(addr) + (f"#{port}" if port else "")


def test_walk_flat_takes_the_last_address() -> None:
    c = conf("127.0.0.2/32")
    assert walk(c, "192.0.2.1, 10.1.1.1") == "10.1.1.1"
    assert walk(c, "192.0.2.1,10.1.1.1 ,, ") == "10.1.1.1"
    assert walk(c, "10.1.1.1:8080") == "10.1.1.1#8080"
    assert walk(c, "junk") is None
    assert walk(c, "") is None
    assert walk(c, "192.0.2.1", peer=(4, 0x7F000003)) is None  # untrusted peer
    # nginx never looks at the first byte for a separator.
    assert walk(c, ",192.0.2.1") is None
    assert walk(c, " 192.0.2.1") is None


def test_walk_recursive() -> None:
    c = conf("127.0.0.2/32", "10.0.0.0/8", recursive=True)
    assert walk(c, "192.0.2.1, 10.2.2.2, 10.1.1.1") == "192.0.2.1"
    assert walk(c, "10.3.3.3, 10.1.1.1") == "10.3.3.3"
    assert walk(c, "junk, 10.1.1.1") == "10.1.1.1"
    assert walk(c, "192.0.2.1, junk, 10.1.1.1") == "10.1.1.1"
    assert walk(c, "192.0.2.9, 192.0.2.1") == "192.0.2.1"
    # Headers from the last to the first while the walk gets through each.
    assert walk(c, "192.0.2.5, 10.9.9.9", "10.1.1.1") == "192.0.2.5"
    assert walk(c, "192.0.2.5", "192.0.2.6, 10.1.1.1") == "192.0.2.6"
    assert walk(c, "junk", "10.1.1.1") == "10.1.1.1"


def test_walk_ipv4_mapped_peer_and_networks() -> None:
    c = conf("127.0.0.0/8")
    mapped = (6, 0xFFFF7F000002)  # ::ffff:127.0.0.2
    assert walk(c, "192.0.2.1", peer=mapped) == "192.0.2.1"
    c6 = conf("2001:db8::/32")
    assert walk(c6, "192.0.2.1", peer=(6, int(ipaddress.IPv6Address("2001:db8::5")))) == (
        "192.0.2.1"
    )
    assert walk(c6, "192.0.2.1") is None


def test_walk_unix_peer() -> None:
    trusted = RealipConf((), (), True, HEADER, "x", False)
    assert walk(trusted, "192.0.2.1", peer=None) == "192.0.2.1"
    untrusted = RealipConf((), (), False, HEADER, "x", False)
    assert walk(untrusted, "192.0.2.1", peer=None) is None


@given(
    st.lists(st.sampled_from(["10.1.1.1", "192.0.2.1", "junk", "10.2.2.2", ""]), max_size=6),
    st.sampled_from([", ", ",", " "]),
    st.booleans(),
)
def test_walk_matches_a_direct_reading(tokens: list[str], sep: str, recursive: bool) -> None:
    """The walk as nginx describes it, computed another way on well-separated lists."""
    tokens = [t for t in tokens if t]
    c = conf("127.0.0.2/32", "10.0.0.0/8", recursive=recursive)
    got = walk(c, sep.join(tokens))
    if not tokens or tokens[-1] == "junk":
        assert got is None
        return
    if not recursive:
        assert got == tokens[-1]
        return
    want = tokens[-1]
    for token in reversed(tokens[:-1]):
        if not want.startswith("10."):
            break
        if token == "junk":
            break
        want = token
    assert got == want
