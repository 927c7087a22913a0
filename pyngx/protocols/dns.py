"""A sans-I/O DNS codec: A and AAAA queries out, responses in (RFC 1035, RFC 3596).

Only what nginx's resolver needs: one question per query, recursion desired, and of the
answer section the A, AAAA and CNAME records (everything else is parsed, to step over it,
and kept as raw rdata). Every malformed input raises DnsFormatError, never IndexError or
struct.error, because the bytes come from the network.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from dataclasses import dataclass

TYPE_A = 1
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_AAAA = 28
CLASS_IN = 1

# Response codes (the RCODE of the header) that nginx's resolver names.
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_MAX_LABEL = 63
_MAX_NAME = 255
# A CNAME chain longer than this is a loop or an attack; nginx stops far earlier.
MAX_CNAME_CHAIN = 16
_POINTER = 0xC0


class DnsError(ValueError):
    """Anything wrong with a DNS message."""


class DnsFormatError(DnsError):
    """The bytes are not a well-formed DNS message (truncated, bad pointer, bad label...)."""


class DnsNameError(DnsError):
    """A name cannot be encoded in a query (empty label, label or name too long)."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record; `address` for A/AAAA, `target` for CNAME, else both None."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes
    address: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    id: int
    flags: int
    questions: tuple[Question, ...]
    answers: tuple[Record, ...]
    authority: tuple[Record, ...] = ()

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F

    @property
    def truncated(self) -> bool:
        return bool(self.flags & _FLAG_TC)


def encode_name(name: str) -> bytes:
    """`mail.test` or `mail.test.` as length-prefixed labels; DnsNameError if impossible."""
    name = name.rstrip(".") if name != "." else ""
    out = bytearray()
    if name:
        for label in name.split("."):
            try:
                raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
            except UnicodeError:
                raise DnsNameError(f"cannot encode label {label!r}") from None
            if not raw or len(raw) > _MAX_LABEL:
                raise DnsNameError(f"bad label length in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > _MAX_NAME:
        raise DnsNameError(f"name too long: {name!r}")
    return bytes(out)


def build_query(name: str, qtype: int, qid: int | None = None) -> tuple[int, bytes]:
    """A recursive query for `name` of `qtype`; returns (id, packet). The id is random
    unless given, so that off-path spoofed answers have to guess it."""
    if qid is None:
        qid = secrets.randbelow(0x10000)
    header = _HEADER.pack(qid, _FLAG_RD, 1, 0, 0, 0)
    return qid, header + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """The name at `pos` (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    total = 0
    n = len(data)
    while True:
        if pos >= n:
            raise DnsFormatError("name runs past the end of the message")
        length = data[pos]
        if length & _POINTER == _POINTER:
            if pos + 1 >= n:
                raise DnsFormatError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            jumps += 1
            # Each pointer must go backwards; that alone rules out loops, and the count
            # bounds the work on a message full of chained pointers.
            if target >= pos or jumps > _MAX_NAME:
                raise DnsFormatError("bad compression pointer")
            pos = target
            continue
        if length & _POINTER:
            raise DnsFormatError(f"unknown label type 0x{length:02x}")
        pos += 1
        if length == 0:
            break
        if pos + length > n:
            raise DnsFormatError("label runs past the end of the message")
        total += length + 1
        if total > _MAX_NAME:
            raise DnsFormatError("name too long")
        labels.append(data[pos : pos + length].decode("ascii", "backslashreplace").lower())
        pos += length
    return ".".join(labels), end if end is not None else pos


def _read_record(data: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(data, pos)
    if pos + _RR_FIXED.size > len(data):
        raise DnsFormatError("truncated resource record")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
    pos += _RR_FIXED.size
    if pos + rdlength > len(data):
        raise DnsFormatError("rdata runs past the end of the message")
    rdata = data[pos : pos + rdlength]
    address = target = None
    if rclass == CLASS_IN and rtype == TYPE_A:
        if rdlength != 4:
            raise DnsFormatError("A record of the wrong length")
        address = str(ipaddress.IPv4Address(rdata))
    elif rclass == CLASS_IN and rtype == TYPE_AAAA:
        if rdlength != 16:
            raise DnsFormatError("AAAA record of the wrong length")
        address = str(ipaddress.IPv6Address(rdata))
    elif rtype == TYPE_CNAME:
        target, after = _read_name(data, pos)
        if after != pos + rdlength:
            raise DnsFormatError("CNAME rdata length mismatch")
    # RFC 2181 8: a TTL with the top bit set is to be read as zero.
    if ttl & 0x80000000:
        ttl = 0
    return Record(name, rtype, rclass, ttl, rdata, address, target), pos + rdlength


def parse_response(data: bytes) -> Response:
    """Parse a whole response; DnsFormatError on anything malformed (or a query)."""
    if len(data) < _HEADER.size:
        raise DnsFormatError("message shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, _ = _HEADER.unpack_from(data, 0)
    if not flags & _FLAG_QR:
        raise DnsFormatError("not a response")
    pos = _HEADER.size
    questions: list[Question] = []
    for _ in range(qdcount):
        name, pos = _read_name(data, pos)
        if pos + 4 > len(data):
            raise DnsFormatError("truncated question")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        questions.append(Question(name, qtype, qclass))
    answers: list[Record] = []
    for _ in range(ancount):
        rec, pos = _read_record(data, pos)
        answers.append(rec)
    authority: list[Record] = []
    # A truncated response may legitimately end early after the answers; keep what parsed.
    try:
        for _ in range(nscount):
            rec, pos = _read_record(data, pos)
            authority.append(rec)
    except DnsFormatError:
        if not flags & _FLAG_TC:
            raise
    return Response(qid, flags, tuple(questions), tuple(answers), tuple(authority))


def addresses(resp: Response, name: str, qtype: int) -> tuple[list[str], int | None]:
    """The addresses of `qtype` the answer gives for `name`, following the CNAME chain,
    and the smallest TTL along the way (None when there are no addresses)."""
    want = name.rstrip(".").lower()
    ttl: int | None = None
    for _ in range(MAX_CNAME_CHAIN):
        found = [r for r in resp.answers if r.name == want and r.rtype == qtype and r.address]
        if found:
            low = min(r.ttl for r in found)
            ttl = low if ttl is None else min(ttl, low)
            return [r.address for r in found if r.address], ttl
        alias = next((r for r in resp.answers if r.name == want and r.rtype == TYPE_CNAME), None)
        if alias is None or alias.target is None:
            return [], None
        ttl = alias.ttl if ttl is None else min(ttl, alias.ttl)
        want = alias.target
    raise DnsFormatError("CNAME chain too long")


def build_response(
    query: bytes,
    records: list[tuple[str, int, int, bytes]],
    rcode: int = RCODE_NOERROR,
) -> bytes:
    """A response to `query` (for tests and tools): records are (name, type, ttl, rdata),
    written uncompressed, with the query's question echoed."""
    if len(query) < _HEADER.size:
        raise DnsFormatError("query shorter than a DNS header")
    qid, qflags, qdcount, _, _, _ = _HEADER.unpack_from(query, 0)
    pos = _HEADER.size
    for _ in range(qdcount):
        _, pos = _read_name(query, pos)
        pos += 4
    if pos > len(query):
        raise DnsFormatError("truncated question")
    question = query[_HEADER.size : pos]
    flags = _FLAG_QR | (qflags & _FLAG_RD) | 0x0080 | (rcode & 0x0F)
    out = bytearray(_HEADER.pack(qid, flags, qdcount, len(records), 0, 0)) + question
    for name, rtype, ttl, rdata in records:
        out += encode_name(name) + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata
    return bytes(out)
