"""`resolver` and `resolver_timeout` (stream, server) and the run-time re-resolution of
`server name:port resolve` lines of stream upstream groups (nginx 1.27.3 open source).

    resolver 127.0.0.1:5353 [::1] valid=10s ipv6=off;
    upstream mail { zone mail 64k; server mail.example:25 resolve; }

Design notes
------------
* Configuration: the handlers parse and store; the stream module's `build` merges
  `resolver_timeout` (default 30s) in and hands the stream block's ResolverConf to the
  upstream groups, as nginx's round robin init takes the stream{} level resolver.
* Run time: every worker resolves for itself (nginx: each worker runs the zone's resolve
  timers; its resolver, and its cache, are per worker). `UpstreamResolvers` runs one task per
  resolvable server line: query, apply, sleep until the answer expires, query again. There is
  no cache shared between lines; a name on two lines is queried twice.
* A query goes over UDP to the configured servers in turn, one datagram endpoint per attempt,
  resent to the next server every RESEND seconds, the whole lookup bounded by
  `resolver_timeout`. A and AAAA (per `ipv4=`/`ipv6=`) are asked concurrently and merged.
* Outcomes follow ngx_stream_upstream_zone_resolve_handler: an answer replaces the line's
  addresses and the next query is due after its TTL (or `valid=`) plus one second; a
  NXDOMAIN (or an answer without addresses) logs "could not be resolved (3: Host not found)"
  and removes the line's peers; any other error (timeout, SERVFAIL...) logs and keeps the
  peers, retrying after max(resolver_timeout, 1s).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import ONEMORE, Context, Registry, time_slot
from pyngx.conf.values import SockAddr, UrlError, parse_time, parse_url
from pyngx.core.log import ALERT, ERROR, WARN, ErrorLog
from pyngx.protocols import dns

if TYPE_CHECKING:
    from pyngx.stream.upstream import DynamicGroup

STREAM, SERVER = "stream", "stream_server"
DEFAULT_PORT = 53
DEFAULT_TIMEOUT = 30.0
# Seconds between sends of one query (to the next server) while no answer came.
RESEND = 1.0
# nginx's NGX_RESOLVE_TIMEDOUT is NGX_ETIMEDOUT; the rest are DNS RCODEs.
TIMEDOUT = 110
_STRERROR = {
    dns.RCODE_FORMERR: "Format error",
    dns.RCODE_SERVFAIL: "Server failure",
    dns.RCODE_NXDOMAIN: "Host not found",
    dns.RCODE_NOTIMP: "Unimplemented",
    dns.RCODE_REFUSED: "Operation refused",
    TIMEDOUT: "Operation timed out",
}


def strerror(code: int) -> str:
    """ngx_resolver_strerror."""
    return _STRERROR.get(code, "Unknown error")


@dataclass(frozen=True, slots=True)
class ResolverConf:
    servers: tuple[SockAddr, ...]
    valid: float | None = None
    ipv4: bool = True
    ipv6: bool = True
    timeout: float = DEFAULT_TIMEOUT


class ResolveError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"{code}: {strerror(code)}")
        self.code = code


# -- directives ------------------------------------------------------------------------


def _server_addr(text: str) -> tuple[SockAddr, ...]:
    # ngx_resolver_create: ngx_parse_url with a default port of 53 (IPv6 needs brackets).
    with_port = text
    if text.startswith("["):
        if text.endswith("]"):
            with_port = f"{text}:{DEFAULT_PORT}"
    elif ":" not in text:
        with_port = f"{text}:{DEFAULT_PORT}"
    return parse_url(with_port).addrs


def _flag(node: Node, param: str, value: str) -> bool:
    if value not in ("on", "off"):
        raise node.error(f'invalid parameter "{param}"')
    return value == "on"


def _resolver(ctx: Context, node: Node) -> None:
    servers: list[SockAddr] = []
    valid: float | None = None
    ipv4 = ipv6 = True
    for arg in node.args:
        key, eq, value = arg.partition("=")
        if eq and key == "valid":
            try:
                valid = parse_time(value)
            except DirectiveValueError:
                raise node.error(f'invalid parameter "{arg}"') from None
        elif eq and key == "ipv4":
            ipv4 = _flag(node, arg, value)
        elif eq and key == "ipv6":
            ipv6 = _flag(node, arg, value)
        elif eq and key == "status_zone":
            continue  # accepted for compatibility; pyngx has no status API to report in
        else:
            try:
                servers.extend(_server_addr(arg))
            except UrlError as exc:
                raise node.error(f'{exc.text} in resolver "{arg}"') from None
    if not ipv4 and not ipv6:
        raise node.error('"ipv4" and "ipv6" cannot both be "off"')
    if not servers:
        raise node.error('invalid number of arguments in "resolver" directive')
    ctx.set_once("resolver", ResolverConf(tuple(servers), valid, ipv4, ipv6), node)


def register(reg: Registry) -> None:
    reg.add("resolver", [STREAM, SERVER], _resolver, ONEMORE)
    reg.add("resolver_timeout", [STREAM, SERVER], time_slot("resolver_timeout"))


def stream_resolver(stream: Context) -> ResolverConf | None:
    """The stream{} level resolver, with its resolver_timeout merged in."""
    conf: ResolverConf | None = stream.local("resolver")
    if conf is None:
        return None
    timeout = stream.local("resolver_timeout", DEFAULT_TIMEOUT)
    return ResolverConf(conf.servers, conf.valid, conf.ipv4, conf.ipv6, timeout)


# -- queries ---------------------------------------------------------------------------


class _Query(asyncio.DatagramProtocol):
    """Waits for the answer to one query id on one socket; other datagrams are dropped."""

    def __init__(self, qid: int, name: str, qtype: int) -> None:
        self.qid = qid
        self.name = name.rstrip(".").lower()
        self.qtype = qtype
        self.answer: asyncio.Future[dns.Response] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            resp = dns.parse_response(data)
        except dns.DnsError:
            return  # garbage or spoofing attempt: keep waiting for the real answer
        q = resp.questions
        if resp.id != self.qid or len(q) != 1 or q[0].name != self.name or q[0].qtype != self.qtype:
            return
        if not self.answer.done():
            self.answer.set_result(resp)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from one server: the next send goes to the next one


async def query(conf: ResolverConf, name: str, qtype: int, start: int = 0) -> tuple[list[str], int]:
    """Addresses of `qtype` for `name` and their TTL; ResolveError on failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + conf.timeout
    attempt = start
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ResolveError(TIMEDOUT)
        server = conf.servers[attempt % len(conf.servers)]
        attempt += 1
        qid, packet = dns.build_query(name, qtype)
        proto = _Query(qid, name, qtype)
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda proto=proto: proto, remote_addr=server.address, family=server.family
            )
        except OSError:
            await asyncio.sleep(min(RESEND, remaining))
            continue
        try:
            transport.sendto(packet)
            with contextlib.suppress(asyncio.TimeoutError):
                resp = await asyncio.wait_for(asyncio.shield(proto.answer), min(RESEND, remaining))
                break
        finally:
            transport.close()
    if resp.rcode != dns.RCODE_NOERROR:
        raise ResolveError(resp.rcode)
    try:
        addrs, ttl = dns.addresses(resp, name, qtype)
    except dns.DnsError:
        raise ResolveError(dns.RCODE_FORMERR) from None
    if not addrs:
        raise ResolveError(dns.RCODE_NXDOMAIN)  # nginx: no addresses is "Host not found"
    return addrs, ttl or 0


async def resolve(conf: ResolverConf, name: str) -> tuple[list[str], int]:
    """All addresses of `name` (IPv4 first) per `ipv4=`/`ipv6=`, and the smallest TTL."""
    types = [t for t, on in ((dns.TYPE_A, conf.ipv4), (dns.TYPE_AAAA, conf.ipv6)) if on]
    results = await asyncio.gather(
        *(query(conf, name, t, i) for i, t in enumerate(types)), return_exceptions=True
    )
    addrs: list[str] = []
    ttls: list[int] = []
    errors: list[ResolveError] = []
    for res in results:
        if isinstance(res, ResolveError):
            errors.append(res)
        elif isinstance(res, BaseException):
            raise res
        else:
            addrs.extend(res[0])
            ttls.append(res[1])
    if addrs:
        return addrs, min(ttls)
    # Nothing at all: report a real failure before a plain "not found" of one family.
    for err in errors:
        if err.code != dns.RCODE_NXDOMAIN:
            raise err
    raise ResolveError(dns.RCODE_NXDOMAIN)


# -- the worker's tasks ----------------------------------------------------------------


class UpstreamResolvers:
    """The resolver tasks of one worker: one per `resolve` server line, cancelled together."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, groups: list[DynamicGroup], log: ErrorLog
    ) -> None:
        self.loop = loop
        self.groups = groups
        self.log = log
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for group in self.groups:
            for index in range(len(group.lines)):
                self.tasks.append(self.loop.create_task(self._run(group, index)))

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def wait_closed(self, timeout: float = 1.0) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=timeout)

    async def _run(self, group: DynamicGroup, index: int) -> None:
        while True:
            try:
                delay = await self.update(group, index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not end the line's updates
                self.log.log(ALERT, f"resolver task failed: {type(exc).__name__}: {exc}")
                delay = max(group.resolver.timeout, 1.0)
            await asyncio.sleep(delay)

    async def update(self, group: DynamicGroup, index: int) -> float:
        """Resolve line `index` once, apply the outcome; returns the delay to the next."""
        conf: ResolverConf = group.resolver
        line = group.lines[index]
        host, port = line.url.host, line.url.port or 0
        try:
            texts, ttl = await resolve(conf, host)
        except ResolveError as exc:
            self.log.log(ERROR, f"{host} could not be resolved ({exc})")
            if exc.code != dns.RCODE_NXDOMAIN:
                return max(conf.timeout, 1.0)
            group.set_addresses(index, [])
            return (conf.valid or 0.0) + 1.0
        addrs = [
            SockAddr(socket.AF_INET6 if ":" in t else socket.AF_INET, (t, port)) for t in texts
        ]
        _, dropped = group.set_addresses(index, addrs)
        if dropped:
            self.log.log(
                WARN,
                f'{host} resolved to more addresses than upstream "{group.conf.name}" has'
                f" room for, {dropped} ignored",
            )
        return (conf.valid if conf.valid is not None else float(ttl)) + 1.0


def start_resolvers(
    loop: asyncio.AbstractEventLoop, servers: list[object], log: ErrorLog
) -> UpstreamResolvers | None:
    """The worker's hook: None when no upstream group of these servers resolves names."""
    groups: list[DynamicGroup] = []
    for server in servers:
        # The server's own group, and every group a `proxy_pass $variable` may name.
        candidates = [server.upstream] if server.upstream is not None else []  # type: ignore[attr-defined]
        candidates += list((server.groups or {}).values())  # type: ignore[attr-defined]
        for group in candidates:
            dynamic = group.dynamic
            if dynamic is not None and dynamic not in groups:
                groups.append(dynamic)
    if not groups:
        return None
    resolvers = UpstreamResolvers(loop, groups, log)
    resolvers.start()
    return resolvers


__all__ = [
    "ResolveError",
    "ResolverConf",
    "UpstreamResolvers",
    "query",
    "register",
    "resolve",
    "start_resolvers",
    "stream_resolver",
    "strerror",
]
