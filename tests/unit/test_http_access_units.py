"""Pure pieces of http access/geo/map/stub_status: rule checks, the X-Forwarded-For walk,
per-request caching of map values, and the stub_status counter moves."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyngx.conf.parser import parse_string
from pyngx.conf.variables import VariableTable
from pyngx.http.maps import Changeable, cached
from pyngx.http.stub_status import (
    ACCEPTED,
    ACTIVE,
    HANDLED,
    READING,
    REQUESTS,
    WAITING,
    WRITING,
    cycle_stats,
    status_text,
)
from pyngx.stream.access import ALL, UNIX, Rule, Rules
from pyngx.stream.geo import CompiledGeo, forwarded_addr, parse_geo_block


def _net(text: str) -> Rule:
    deny = text.startswith("!")
    return Rule("ip", ipaddress.ip_network(text.lstrip("!"), strict=False), deny)


def test_rules_first_match_per_family() -> None:
    rules = Rules(
        [
            _net("!10.0.0.1"),
            _net("10.0.0.0/8"),
            _net("!2001:db8::/32"),
            Rule(UNIX, None, False),
            Rule(ALL, None, True),
        ]
    )
    assert rules.check("10.0.0.1", False) is True
    assert rules.check("10.9.9.9", False) is False
    assert rules.check("11.0.0.1", False) is True  # `all`
    assert rules.check("2001:db8::7", False) is True
    assert rules.check("::1", False) is True  # `all`
    assert rules.check("unix:", True) is False  # the unix rule comes before `all`
    assert rules.check("not an address", False) is None


def test_v4_mapped_clients_use_the_ipv4_rules_when_there_are_any() -> None:
    assert Rules([_net("!10.0.0.0/8")]).check("::ffff:10.1.2.3", False) is True
    # Without IPv4 rules the IPv6 ones apply to it.
    assert Rules([_net("!::ffff:0:0/96")]).check("::ffff:10.1.2.3", False) is True
    assert Rules([_net("!::1")]).check("::ffff:10.1.2.3", False) is None


def test_no_rule_for_the_family_declines() -> None:
    rules = Rules([_net("!10.0.0.0/8")])
    assert rules.check("::1", False) is None
    assert rules.check("unix:", True) is None


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_rules_agree_with_ipaddress(net_int: int, prefix: int, addr_int: int) -> None:
    net = ipaddress.ip_network((net_int, prefix), strict=False)
    addr = ipaddress.ip_address(addr_int)
    got = Rules([Rule("ip", net, True)]).check(str(addr), False)
    assert got == (True if addr in net else None)


PROXIES = ((4, int(ipaddress.ip_address("127.0.0.23")), 0xFFFFFFFF),
           (4, int(ipaddress.ip_address("192.168.1.0")), 0xFFFFFF00))  # fmt: skip


def _ip(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


@pytest.mark.parametrize(
    ("client", "values", "recursive", "expected"),
    [
        ("127.0.0.23", ["10.1.1.1"], False, "10.1.1.1"),
        ("127.0.0.24", ["10.1.1.1"], False, "127.0.0.24"),  # not a trusted proxy
        ("127.0.0.23", ["1.1.1.1, 192.168.1.5"], False, "192.168.1.5"),
        ("127.0.0.23", ["1.1.1.1, 192.168.1.5"], True, "1.1.1.1"),
        ("127.0.0.23", ["1.1.1.1", "192.168.1.5"], True, "1.1.1.1"),  # across headers
        ("127.0.0.23", ["192.168.1.9, 192.168.1.5"], True, "192.168.1.9"),  # all trusted
        ("127.0.0.23", ["junk, 192.168.1.5"], True, "192.168.1.5"),  # stops at junk
        ("127.0.0.23", ["10.4.4.4:8080"], False, "10.4.4.4"),
        ("127.0.0.23", ["[2001:db8::5]:80"], False, "2001:db8::5"),
        ("127.0.0.23", [" 10.5.5.5 ,, "], False, "10.5.5.5"),
        ("::ffff:127.0.0.23", ["10.1.1.1"], False, "10.1.1.1"),  # v4-mapped proxy
    ],
)
def test_forwarded_addr(client: str, values: list[str], recursive: bool, expected: str) -> None:
    assert forwarded_addr(_ip(client), values, PROXIES, recursive) == _ip(expected)


def test_geo_with_proxy_and_source_variable() -> None:
    (node,) = parse_string(
        "geo $g { proxy 127.0.0.23; default d; 10.0.0.0/8 ten; 127.0.0.23 proxy; }"
    )
    geo = CompiledGeo(
        parse_geo_block(node, http=True),
        VariableTable(),
        client=lambda r: r.addr,
        forwarded=lambda r: r.xff,
    )
    assert geo.evaluate(SimpleNamespace(addr="127.0.0.23", xff=["10.2.3.4"])) == "ten"
    assert geo.evaluate(SimpleNamespace(addr="127.0.0.23", xff=[])) == "proxy"
    assert geo.evaluate(SimpleNamespace(addr="127.0.0.9", xff=["10.2.3.4"])) == "d"
    assert geo.evaluate(SimpleNamespace(addr="unix:", xff=["10.2.3.4"])) == "d"


def test_stream_geo_refuses_proxy_lines() -> None:
    (node,) = parse_string("geo $g { proxy 127.0.0.23; }")
    with pytest.raises(Exception, match="invalid network"):
        parse_geo_block(node)  # "proxy" is a network there, and no valid one


def test_map_values_are_cached_per_request() -> None:
    calls: list[str] = []

    def evaluate(r: Any) -> str:
        calls.append(r.uri)
        return r.uri.upper()

    getter = Changeable("m", cached(evaluate))
    r = SimpleNamespace(uri="/a", extra=None, variables={})
    assert getter(r) == "/A"
    r.uri = "/b"
    assert getter(r) == "/A"  # the first value stays for the whole request
    r.variables["m"] = "set"
    assert getter(r) == "set"  # `set` wins
    other = SimpleNamespace(uri="/b", extra=None, variables={})
    assert getter(other) == "/B"
    assert calls == ["/a", "/b"]


def test_stub_status_moves() -> None:
    stats = cycle_stats(2)
    worker = SimpleNamespace(index=1)
    a = SimpleNamespace(worker=worker, stat=-1)
    b = SimpleNamespace(worker=worker, stat=-1)
    refused = SimpleNamespace(worker=worker, stat=-1)
    before = stats.totals()

    def delta() -> list[int]:
        return [x - y for x, y in zip(stats.totals(), before, strict=True)]

    stats.opened(a, handled=True)
    stats.opened(b, handled=True)
    stats.opened(refused, handled=False)
    assert delta() == [3, 2, 2, 0, 0, 0, 2]
    stats.reading(a)  # half a head
    stats.writing(a)  # the rest: one request, not two
    stats.writing(b)  # a whole head at once
    assert delta()[REQUESTS] == 2
    assert [delta()[i] for i in (READING, WRITING, WAITING)] == [0, 2, 0]
    stats.waiting(a)  # keepalive
    stats.closed(b)
    stats.closed(refused)  # never counted as active
    d = delta()
    assert [d[i] for i in (ACCEPTED, HANDLED, ACTIVE, READING, WRITING, WAITING)] == [
        3, 2, 1, 0, 0, 1,
    ]  # fmt: skip
    text = status_text(stats).decode()
    assert text.startswith("Active connections: ") and text.endswith(" \n")


def test_stub_status_rows_of_a_reload_are_new_but_totals_go_on() -> None:
    first = cycle_stats(1)
    conn = SimpleNamespace(worker=SimpleNamespace(index=0), stat=-1)
    first.opened(conn, handled=True)
    total = first.totals()
    second = cycle_stats(1)
    assert second.shared is first.shared and second.first != first.first
    assert second.totals() == total
