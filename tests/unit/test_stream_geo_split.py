"""`geo` lookups and `split_clients` hashing, on pure inputs (no sockets)."""

from __future__ import annotations

import ipaddress
import random
from types import SimpleNamespace

import pytest

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import parse_string
from pyngx.conf.variables import VariableTable
from pyngx.stream.geo import CompiledGeo, parse_geo_block
from pyngx.stream.split_clients import CompiledSplit, murmur_hash2, parse_split_block

# ngx_murmur_hash2 of each string, from nginx's C function compiled as is (seed 0).
MURMUR_VECTORS = {
    "": 0,
    "a": 2456313694,
    "ab": 446775395,
    "abc": 324500635,
    "abcd": 646393889,
    "abcde": 1594468574,
    "hello world": 1151865881,
    "127.0.0.1": 3054706065,
    "2001:db8::1": 4051387920,
}


@pytest.mark.parametrize(("text", "value"), sorted(MURMUR_VECTORS.items()))
def test_murmur_hash2_vectors(text: str, value: int) -> None:
    assert murmur_hash2(text.encode()) == value


def geo(body: str, source: str = "") -> CompiledGeo:
    (node,) = parse_string(f"geo {source} $out {{ {body} }}")
    table = VariableTable()
    table.add("addr", lambda s: s.addr)
    return CompiledGeo(parse_geo_block(node), table)


def at(g: CompiledGeo, addr: str | None) -> str:
    return g.evaluate(SimpleNamespace(remote_addr=addr, family=2, addr=addr))


def test_geo_longest_prefix_wins_in_both_families() -> None:
    g = geo(
        "default d; 10.0.0.0/8 a; 10.1.0.0/16 b; 10.1.2.3 c; 10.255.255.255/32 e;"
        " 2001:db8::/32 v6; 2001:db8:1::/48 v6b;"
    )
    assert at(g, "10.0.0.1") == "a"
    assert at(g, "10.1.0.0") == "b"
    assert at(g, "10.1.2.3") == "c"
    assert at(g, "10.1.2.4") == "b"
    assert at(g, "10.2.0.0") == "a"
    assert at(g, "10.255.255.255") == "e"
    assert at(g, "11.0.0.0") == "d"
    assert at(g, "2001:db8:1::5") == "v6b"
    assert at(g, "2001:db8:2::5") == "v6"
    assert at(g, "::1") == "d"
    assert at(g, "::ffff:10.1.2.3") == "c"


def test_geo_matches_a_linear_longest_prefix_scan() -> None:
    rng = random.Random(7)
    nets = {}
    for _ in range(300):
        prefix = rng.randint(4, 32)
        net = ipaddress.ip_network((rng.getrandbits(32) & 0xFF0FFFFF, prefix), strict=False)
        nets[net] = f"v{len(nets)}"
    g = geo("".join(f"{n} {v};" for n, v in nets.items()))
    for _ in range(3000):
        ip = ipaddress.ip_address(rng.getrandbits(32) & 0xFF0FFFFF)
        best = max((n for n in nets if ip in n), key=lambda n: n.prefixlen, default=None)
        assert at(g, str(ip)) == (nets[best] if best is not None else ""), ip


def test_geo_ranges_split_and_default() -> None:
    g = geo(
        "ranges; default out; 10.0.0.0-10.0.255.255 a; 10.0.1.0-10.0.1.255 b;"
        " 10.0.0.0-10.0.0.9 c; 10.0.255.250-10.0.255.255 d; 10.1.255.0-10.2.0.10 e;"
    )
    assert at(g, "10.0.0.5") == "c"
    assert at(g, "10.0.0.10") == "a"
    assert at(g, "10.0.1.7") == "b"
    assert at(g, "10.0.2.0") == "a"
    assert at(g, "10.0.255.251") == "d"
    assert at(g, "10.1.255.1") == "e"
    assert at(g, "10.2.0.10") == "e"
    assert at(g, "10.2.0.11") == "out"
    assert at(g, "9.255.255.255") == "out"
    assert at(g, "2001:db8::1") == "out"


def test_geo_unparsable_source_is_inaddr_none() -> None:
    g = geo("default d; 255.255.255.255 none;", "$addr")
    assert at(g, "junk") == "none"
    assert at(g, None) == "none"


def test_geo_overlap_is_an_error() -> None:
    with pytest.raises(ConfigError, match='range "10.0.0.5-10.0.0.20" overlaps'):
        geo("ranges; 10.0.0.1-10.0.0.9 a; 10.0.0.5-10.0.0.20 b;")


def split(body: str) -> CompiledSplit:
    (node,) = parse_string(f"split_clients $key $out {{ {body} }}")
    table = VariableTable()
    table.add("key", lambda s: s)
    return CompiledSplit(parse_split_block(node), table)


def test_split_shares_follow_the_hash() -> None:
    s = split("10% a; 20.5% b; * c;")
    for key in (f"k{i}" for i in range(500)):
        h = murmur_hash2(key.encode())
        want = "a" if h < 429496729 else "b" if h < 429496729 + 880468295 else "c"
        assert s.evaluate(key) == want


def test_split_without_star_leaves_the_rest_empty() -> None:
    s = split("50% a;")
    values = {s.evaluate(f"k{i}") for i in range(200)}
    assert values == {"a", ""}


def test_split_over_100_percent_is_located_at_the_closing_brace() -> None:
    with pytest.raises(ConfigError, match="percent total is greater than 100%"):
        split("60% a; 50% b;")
