"""The http side of upstream groups: `upstream` blocks and the implicit groups of `proxy_pass`.

nginx keeps one list of upstreams per http block (ngx_http_upstream_add): `upstream NAME`
blocks, and one implicit group per `host:port` a static `proxy_pass` names (two locations
naming the same address share it, and its balancer state). `proxy_pass` with variables looks
its evaluated host up in that same list at run time, so it can reach any of them without a
resolver; a literal address outside it gets a group of its own (kept per worker, as the stream
proxy does); a name outside it would need the `resolver`, which pyngx's http module does not
have: 502 with nginx's "no resolver defined to resolve NAME".

`HttpGroup` adds what the http proxy needs to the stream module's UpstreamGroup (the balancer
holder): its `keepalive` settings and the per-worker connection cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.registry import Context
from pyngx.conf.values import Url, UrlError, parse_url, resolve_host
from pyngx.http.upstream_pool import KeepalivePool
from pyngx.stream.upstream import UpstreamConf, UpstreamGroup, build_group, check_zones
from pyngx.upstream import PeerConf, make_balancer

SLOT = "__http_upstream_groups__"


@dataclass(slots=True, eq=False)
class HttpGroup:
    name: str  # what $upstream_addr shows when no peer is live
    group: UpstreamGroup
    keepalive: tuple[int, int, float, float] | None = None  # size, requests, timeout, time
    # The cache of idle connections: made empty here, so each worker (fork) has its own.
    pool: KeepalivePool | None = None

    def __post_init__(self) -> None:
        if self.keepalive is not None:
            self.pool = KeepalivePool(*self.keepalive)


@dataclass(frozen=True, slots=True)
class ProxyUrl:
    """A parsed `proxy_pass` URL (ngx_parse_url with uri_part)."""

    text: str  # as written, for `proxy_redirect default`
    schema: str  # "http://" or "https://"
    ssl: bool
    host: str  # "127.0.0.1", "[::1]", "name", or "unix:/path"
    port: int | None  # None: none given
    default_port: int
    uri: str  # "" when there is no URI part
    unix: bool
    host_header: str  # $proxy_host
    port_text: str  # $proxy_port


class ProxyUrlError(Exception):
    pass


def parse_proxy_url(text: str) -> ProxyUrl:
    """Raises ProxyUrlError with nginx's words (without the `in file:line` part)."""
    low = text[:8].lower()
    if low.startswith("http://"):
        schema, rest, default_port = text[:7], text[7:], 80
    elif low.startswith("https://"):
        schema, rest, default_port = text[:8], text[8:], 443
    else:
        raise ProxyUrlError("invalid URL prefix")
    if rest[:5].lower() == "unix:":
        path, colon, uri = rest[5:].partition(":")
        if not path:
            raise ProxyUrlError(f'no path in the unix domain socket in upstream "{rest}"')
        return ProxyUrl(
            text,
            schema,
            default_port == 443,
            "unix:" + path,
            None,
            default_port,
            uri if colon else "",
            True,
            "localhost",
            "",
        )
    cut = len(rest)
    for ch in "/?":
        i = rest.find(ch)
        if i >= 0:
            cut = min(cut, i)
    hostport, uri = rest[:cut], rest[cut:]
    if not hostport:
        raise ProxyUrlError(f'no host in upstream "{rest}"')
    try:
        url = parse_url(hostport, resolve=False)
    except UrlError as exc:
        raise ProxyUrlError(f'{exc.text} in upstream "{rest}"') from None
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port
    if port is None or port == default_port:
        host_header, port_text = host, str(default_port)
    else:
        host_header, port_text = hostport, hostport.rpartition(":")[2]
    return ProxyUrl(
        text,
        schema,
        default_port == 443,
        host,
        port,
        default_port,
        uri,
        False,
        host_header,
        port_text,
    )


class Groups:
    """Every group of one http block; built lazily as locations name them."""

    def __init__(self, http: Context) -> None:
        self.http = http
        self.blocks: dict[str, UpstreamConf] = http.local("upstreams", {})
        self.built: dict[str, HttpGroup] = {}
        # (host lower-case, port) -> group, for implicit groups (port always known).
        self.implicit: dict[tuple[str, int], HttpGroup] = {}

    @staticmethod
    def of(http: Context) -> Groups:
        groups = http.slots.get(SLOT)
        if groups is None:
            groups = http.slots[SLOT] = Groups(http)
        return groups

    def block(self, name: str) -> HttpGroup:
        group = self.built.get(name)
        if group is None:
            conf = self.blocks[name]
            ka = None
            if conf.keepalive:
                ka = (
                    conf.keepalive,
                    conf.keepalive_requests,
                    conf.keepalive_timeout,
                    conf.keepalive_time,
                )
            group = self.built[name] = HttpGroup(name, build_group(conf, None), ka)
        return group

    def for_url(self, url: ProxyUrl, node: Node) -> HttpGroup:
        """ngx_http_upstream_add + the implicit group's resolution (configuration time)."""
        where = f"{node.file}:{node.line}"
        if not url.unix and url.host in self.blocks:
            if url.port is not None:
                raise node.error(f'upstream "{url.host}" may not have port {url.port}')
            return self.block(url.host)
        if url.unix:
            key = (url.host, 0)
            group = self.implicit.get(key)
            if group is None:
                addr = parse_url(url.host).addrs[0]
                group = self.implicit[key] = _implicit(url.host, [addr])
            return group
        port = url.port if url.port is not None else url.default_port
        key = (url.host.lower(), port)
        group = self.implicit.get(key)
        if group is None:
            bare = url.host[1:-1] if url.host.startswith("[") else url.host
            try:
                addrs = resolve_host(bare, port)
            except UrlError:
                raise ConfigError(f'host not found in upstream "{url.host}" in {where}') from None
            text = f"{url.host}:{port}"
            group = self.implicit[key] = _implicit(text, list(addrs))
        return group

    def finish(self) -> None:
        """Groups no location named are still checked, as nginx checks them."""
        for name in self.blocks:
            self.block(name)
        root = self.http
        while root.parent is not None:
            root = root.parent
        check_zones(root)

    def find(self, host: str, port: int | None, default_port: int) -> HttpGroup | None:
        """Run time (`proxy_pass` with variables): a block by name, or a known implicit group."""
        if port is None and host in self.built:
            return self.built[host]
        return self.implicit.get((host.lower(), port if port is not None else default_port))


def _implicit(text: str, addrs: list[Any]) -> HttpGroup:
    peers = [PeerConf(a.text, a, server=text) for a in addrs]
    group = UpstreamGroup(text, make_balancer("round_robin", peers), None, False, True)
    return HttpGroup(text, group)


def literal_group(url: ProxyUrl) -> HttpGroup | None:
    """A one-address group for a literal address met at run time; None for names."""
    port = url.port if url.port is not None else url.default_port
    try:
        parsed = parse_url(url.host if url.unix else f"{url.host}:{port}", resolve=False)
    except UrlError:
        return None
    if not parsed.addrs:
        return None
    return _implicit(parsed.addrs[0].text, [parsed.addrs[0]])


__all__ = [
    "Groups",
    "HttpGroup",
    "ProxyUrl",
    "ProxyUrlError",
    "Url",
    "literal_group",
    "parse_proxy_url",
]
