"""The DNS codec against hand-built packets, and garbage that must fail cleanly."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyngx.protocols import dns


def _header(qid: int, flags: int, qd: int, an: int, ns: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, 0)


def test_query_layout() -> None:
    qid, pkt = dns.build_query("mail.test.", dns.TYPE_A, qid=0x1234)
    assert qid == 0x1234
    assert pkt == (_header(0x1234, 0x0100, 1, 0) + b"\x04mail\x04test\x00" + b"\x00\x01\x00\x01")
    ids = {dns.build_query("a.b", dns.TYPE_AAAA)[0] for _ in range(20)}
    assert len(ids) > 1  # random ids


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".test", ".".join(["abcdefgh"] * 30)])
def test_unencodable_names(name: str) -> None:
    with pytest.raises(dns.DnsNameError):
        dns.build_query(name, dns.TYPE_A)


def test_compressed_answer_with_cname_chain() -> None:
    question = b"\x04mail\x04test\x00\x00\x01\x00\x01"
    # answer 1: mail.test (pointer to 12) CNAME relay.test (label + pointer into "test")
    cname_rdata = b"\x05relay\xc0\x11"
    ans1 = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(cname_rdata)) + cname_rdata
    relay_off = 12 + len(question) + 12  # where relay.test's labels start
    ans2 = struct.pack("!H", 0xC000 | relay_off) + struct.pack("!HHIH", 1, 1, 60, 4)
    ans2 += bytes([127, 0, 0, 2])
    ans3 = struct.pack("!H", 0xC000 | relay_off) + struct.pack("!HHIH", 1, 1, 30, 4)
    ans3 += bytes([127, 0, 0, 3])
    pkt = _header(7, 0x8180, 1, 3) + question + ans1 + ans2 + ans3
    resp = dns.parse_response(pkt)
    assert resp.id == 7 and resp.rcode == 0
    assert resp.questions == (dns.Question("mail.test", 1, 1),)
    assert resp.answers[0].target == "relay.test"
    assert resp.answers[1].name == "relay.test"
    addrs, ttl = dns.addresses(resp, "mail.test.", dns.TYPE_A)
    assert addrs == ["127.0.0.2", "127.0.0.3"]
    assert ttl == 30


def test_aaaa_and_nxdomain() -> None:
    _, q = dns.build_query("v6.test", dns.TYPE_AAAA, qid=9)
    rdata = bytes(15) + b"\x01"
    resp = dns.parse_response(dns.build_response(q, [("v6.test", dns.TYPE_AAAA, 5, rdata)]))
    assert dns.addresses(resp, "v6.test", dns.TYPE_AAAA) == (["::1"], 5)
    nx = dns.parse_response(dns.build_response(q, [], rcode=dns.RCODE_NXDOMAIN))
    assert nx.rcode == dns.RCODE_NXDOMAIN
    assert dns.addresses(nx, "v6.test", dns.TYPE_AAAA) == ([], None)


def test_high_bit_ttl_reads_as_zero() -> None:
    _, q = dns.build_query("a.test", dns.TYPE_A, qid=1)
    pkt = dns.build_response(q, [("a.test", dns.TYPE_A, 0x80000001, b"\x01\x02\x03\x04")])
    assert dns.parse_response(pkt).answers[0].ttl == 0


def test_cname_loop_is_an_error() -> None:
    _, q = dns.build_query("a.test", dns.TYPE_A, qid=1)
    recs = [
        ("a.test", dns.TYPE_CNAME, 5, dns.encode_name("b.test")),
        ("b.test", dns.TYPE_CNAME, 5, dns.encode_name("a.test")),
    ]
    with pytest.raises(dns.DnsFormatError):
        dns.addresses(dns.parse_response(dns.build_response(q, recs)), "a.test", dns.TYPE_A)


@pytest.mark.parametrize(
    "pkt",
    [
        b"",
        b"\x00" * 11,
        _header(1, 0x0100, 0, 0),  # a query, not a response
        _header(1, 0x8180, 1, 0) + b"\x04mail",  # label past the end
        _header(1, 0x8180, 1, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        _header(1, 0x8180, 1, 0) + b"\xc0",  # truncated pointer
        _header(1, 0x8180, 1, 0) + b"\x40abc\x00\x00\x01\x00\x01",  # reserved label type
        _header(1, 0x8180, 1, 0) + b"\x00\x00\x01",  # truncated question
        _header(1, 0x8180, 0, 1) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x05\x00\x03abc",  # bad A
        _header(1, 0x8180, 0, 1) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x05\x00\x09abc",  # rdlen
        _header(1, 0x8180, 0, 1) + b"\x00\x00\x01",  # truncated fixed part
    ],
)
def test_malformed(pkt: bytes) -> None:
    with pytest.raises(dns.DnsFormatError):
        dns.parse_response(pkt)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_dns_errors(data: bytes) -> None:
    try:
        resp = dns.parse_response(data)
    except dns.DnsError:
        return
    for qtype in (dns.TYPE_A, dns.TYPE_AAAA):
        try:
            dns.addresses(resp, "x", qtype)
        except dns.DnsError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=12, max_size=120), st.integers(0, 200))
def test_mutated_responses(tail: bytes, cut: int) -> None:
    _, q = dns.build_query("mail.test", dns.TYPE_A, qid=3)
    good = dns.build_response(q, [("mail.test", dns.TYPE_A, 1, b"\x7f\x00\x00\x02")])
    for pkt in (good[:cut], good[:12] + tail, good + tail):
        try:
            dns.parse_response(pkt)
        except dns.DnsError:
            pass
