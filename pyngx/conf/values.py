"""Value parsers for directive arguments: sizes, times, flags, numbers and addresses.

They follow nginx's ngx_parse_size/ngx_parse_time/ngx_parse_url and raise
DirectiveValueError with the tail nginx prints (`invalid value`, ...); handlers add the
directive name and location.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from pyngx.conf.errors import DirectiveValueError

_SIZE_RE = re.compile(r"^(\d+)([kKmMgG]?)$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TIME_UNITS = [
    ("y", 365 * 86400.0),
    ("M", 30 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("ms", 0.001),
    ("m", 60.0),
    ("s", 1.0),
]
# Order of significance nginx enforces: y M w d h m s ms.
_TIME_ORDER = {"y": 0, "M": 1, "w": 2, "d": 3, "h": 4, "m": 5, "s": 6, "ms": 7}
_TIME_TOKEN = re.compile(r"(\d+)(ms|[yMwdhms])?")


def parse_size(text: str) -> int:
    """`16k` -> 16384. nginx's sizes take k/m (and g for offsets)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise DirectiveValueError()
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_time(text: str) -> float:
    """`1h 30m`, `500ms`, `60` -> seconds as float. A bare number means seconds."""
    pos, total, last_rank = 0, 0.0, -1
    text_len = len(text)
    if not text.strip():
        raise DirectiveValueError()
    while pos < text_len:
        if text[pos] == " ":
            pos += 1
            continue
        m = _TIME_TOKEN.match(text, pos)
        if not m:
            raise DirectiveValueError()
        unit = m.group(2) or "s"
        rank = _TIME_ORDER[unit]
        if rank <= last_rank:
            raise DirectiveValueError()
        last_rank = rank
        total += int(m.group(1)) * dict(_TIME_UNITS)[unit]
        pos = m.end()
        # a bare number must be the last component
        if m.group(2) is None and pos < text_len:
            raise DirectiveValueError()
    return total


def parse_number(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise DirectiveValueError()
    return int(text)


def parse_flag(text: str, name: str) -> bool:
    low = text.lower()
    if low == "on":
        return True
    if low == "off":
        return False
    raise DirectiveValueError(
        f'invalid value "{text}" in "{name}" directive, it must be "on" or "off"', full=True
    )


@dataclass(frozen=True, slots=True)
class SockAddr:
    """A resolved socket address: family plus the tuple `socket` wants (or a unix path)."""

    family: int
    address: tuple[str, int] | str

    @property
    def text(self) -> str:
        """nginx's text form: `127.0.0.1:25`, `[::1]:25`, `unix:/path`."""
        if self.family == socket.AF_UNIX:
            return f"unix:{self.address}"
        host, port = self.address  # type: ignore[misc]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"

    @property
    def host(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.address}"
        return self.address[0]  # type: ignore[index]

    @property
    def port(self) -> int | None:
        if self.family == socket.AF_UNIX:
            return None
        return self.address[1]  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class Url:
    """What ngx_parse_url yields: the text, the host part, the port, and resolved addresses."""

    text: str
    host: str
    port: int | None
    addrs: tuple[SockAddr, ...]
    wildcard: bool = False


class UrlError(DirectiveValueError):
    """`text` is nginx's u->err: `invalid port`, `no port`, `host not found`, ..."""


def _parse_port(text: str, zero: bool = False) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5:
        raise UrlError("invalid port")
    port = int(text)
    if port < (0 if zero else 1) or port > 65535:
        raise UrlError("invalid port")
    return port


def parse_url(
    text: str, *, listen: bool = False, resolve: bool = True, port_zero: bool = False
) -> Url:
    """Parse `host:port`, `port`, `*:port`, `[v6]:port`, `unix:/path` like ngx_parse_url.

    For `listen`, a bare number is a port on the wildcard address. With `resolve`, names are
    looked up now (nginx resolves at configuration time) and every address is kept.
    """
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise UrlError("no path in the unix domain socket")
        return Url(text, text, None, (SockAddr(socket.AF_UNIX, path),))
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UrlError("invalid IPv6 address")
        host = text[1:end]
        rest = text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlError("invalid IPv6 address") from None
        if not rest:
            return Url(text, host, None, ())
        if not rest.startswith(":"):
            raise UrlError("invalid host")
        port = _parse_port(rest[1:], port_zero)
        return Url(text, host, port, (SockAddr(socket.AF_INET6, (host, port)),))
    if listen and text.isdigit():
        port = _parse_port(text)
        return Url(text, "*", port, (SockAddr(socket.AF_INET, ("0.0.0.0", port)),), True)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port = text, None
    else:
        port = _parse_port(port_text, port_zero)
    if not host:
        raise UrlError("no host")
    if host == "*":
        if not listen or port is None:
            raise UrlError("invalid host")
        return Url(text, "*", port, (SockAddr(socket.AF_INET, ("0.0.0.0", port)),), True)
    if port is None:
        return Url(text, host, None, ())
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.version == 6:
            raise UrlError("invalid host")
        return Url(text, host, port, (SockAddr(socket.AF_INET, (host, port)),))
    if not resolve:
        return Url(text, host, port, ())
    return Url(text, host, port, resolve_host(host, port))


def resolve_host(host: str, port: int) -> tuple[SockAddr, ...]:
    """All addresses of `host`, IPv4 first as nginx's resolver lists them; UrlError if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UrlError("host not found") from None
    seen: list[SockAddr] = []
    for family, _, _, _, sa in sorted(infos, key=lambda i: i[0] != socket.AF_INET):
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = SockAddr(family, (sa[0], sa[1]))
        if addr not in seen:
            seen.append(addr)
    if not seen:
        raise UrlError("host not found")
    return tuple(seen)
