"""Active health checks of stream upstream groups, in NGINX Plus's syntax (a pyngx extension).

    match smtp { send "EHLO pyngx\\r\\n"; expect ~ "^220"; }
    server { listen 2525; proxy_pass mail; health_check interval=2s fails=2 match=smtp; }

Directives (ngx_stream_upstream_hc_module's): `health_check [interval=time] [jitter=time]
[fails=n] [passes=n] [port=n] [match=name] [mandatory]` in a stream server whose `proxy_pass`
names an `upstream` group, `health_check_timeout time` (stream, server; 5s) and the `match`
block (stream) with `send "string"` and `expect "string" | ~ "regex" | ~* "regex"`.

Design notes
------------
* Compile time: the handlers only validate and store; `build` runs after the stream module's
  build (a `match` may be defined after the server that uses it, as in Plus) and returns frozen
  `HealthCheck` objects, which the cycle keeps in `Cycle.health_checks`.
* Run time: every worker checks for itself, because upstream state (`Peer`) is per worker in
  pyngx, as in nginx without a `zone`. `HealthCheckers` runs one long-lived task per checked
  peer: probe, sleep until the next tick, probe again. No task is created per probe, a slow
  peer delays no other, and cancelling the tasks stops everything.
* A probe connects (to `port=` if given), writes the PROXY v2 LOCAL header when the server
  sends PROXY headers upstream (the spec's command for connections the proxy makes on its own
  behalf, such as health checks), then the `send` string, then reads until `expect` matches,
  at most `proxy_buffer_size` bytes (Plus examines only that much), within
  `health_check_timeout` (and `proxy_connect_timeout` for the connect alone).
* A peer is unhealthy while any check of its group considers it so (Plus: "a single failure
  of any check"); `Peer.unhealthy` is what the balancers read, so client traffic never waits
  on a probe. Nothing a probe does can raise into the worker: unexpected errors are logged and
  change nothing.
* Log lines follow NGINX Plus's: `peer is unhealthy while connecting to upstream, health check
  "smtp" of peer 127.0.0.1:10025 in upstream "mail"` ([warn]), `peer is healthy while ...`
  ([notice]), and the cause of each failed probe at [error] (mismatches at [info]).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import socket
from dataclasses import dataclass, field

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import ANY, TAKE1, TAKE12, Context, Registry, time_slot
from pyngx.conf.values import SockAddr, parse_number, parse_time
from pyngx.core.log import ALERT, ERROR, INFO, NOTICE, WARN, ErrorLog
from pyngx.protocols.proxy_protocol import encode_v2_local
from pyngx.stream.module import StreamServer
from pyngx.stream.upstream import UpstreamGroup
from pyngx.upstream import Peer

STREAM, SERVER, MATCH = "stream", "stream_server", "stream_match"

# NGINX Plus's defaults.
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_FAILS = 1
DEFAULT_PASSES = 1

# What a probe was doing when it ended: the "while ..." of its log lines.
CONNECTING = "connecting to upstream"
SENDING = "sending to upstream"
READING = "reading from upstream"
CHECKING = "checking response"

# How much of an unexpected response an [info] line quotes.
LOG_EXCERPT = 64
_HEX_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")


# -- compiled configuration ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """A compiled `match` block: what to send and what the answer must contain."""

    name: str
    send: bytes = b""
    expect: bytes | None = None
    regex: re.Pattern[bytes] | None = None

    @property
    def reads(self) -> bool:
        """Whether a probe has to read an answer (an `expect` was given)."""
        return self.expect is not None or self.regex is not None

    def test(self, data: bytes | bytearray) -> bool:
        """Whether the data read so far satisfies `expect` (a literal is found anywhere in it,
        a regex is searched, as nginx runs regexes unanchored)."""
        if self.regex is not None:
            return self.regex.search(data) is not None
        if self.expect is not None:
            return self.expect in data
        return True


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One `health_check` directive, merged with its server's proxy settings."""

    group: UpstreamGroup
    match: Match | None
    interval: float
    jitter: float
    fails: int
    passes: int
    port: int | None
    mandatory: bool
    timeout: float
    connect_timeout: float
    proxy_protocol: int
    buffer_size: int
    bind: SockAddr | None
    error_log: ErrorLog
    where: str

    @property
    def match_name(self) -> str:
        return self.match.name if self.match is not None else ""


@dataclass(slots=True)
class _Spec:
    """A `health_check` line as written, until `build` resolves its match and group."""

    node: Node
    interval: float = DEFAULT_INTERVAL
    jitter: float = 0.0
    fails: int = DEFAULT_FAILS
    passes: int = DEFAULT_PASSES
    port: int | None = None
    match: str | None = None
    mandatory: bool = False


@dataclass(slots=True)
class _MatchConf:
    node: Node
    send: bytes | None = None
    expect: bytes | None = None
    regex: re.Pattern[bytes] | None = None
    expect_set: bool = False


def unescape_hex(text: str) -> bytes:
    """Plus's `\\xHH` literals in `send`/`expect`, on top of the lexer's `\\r`, `\\n`, `\\t`.

    Config text is read as UTF-8 with surrogateescape, so other bytes pass through unchanged;
    a backslash not followed by `x` and two hex digits is kept, as nginx keeps unknown escapes.
    """
    raw = text.encode("utf-8", "surrogateescape")
    return _HEX_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)


# -- directive handlers -----------------------------------------------------------------


def _health_check(ctx: Context, node: Node) -> None:
    spec = _Spec(node)
    for param in node.args:
        key, eq, value = param.partition("=")
        try:
            if key == "interval" and eq:
                spec.interval = parse_time(value)
                if spec.interval <= 0:
                    raise ValueError
            elif key == "jitter" and eq:
                spec.jitter = parse_time(value)
            elif key == "fails" and eq:
                spec.fails = parse_number(value)
                if spec.fails < 1:
                    raise ValueError
            elif key == "passes" and eq:
                spec.passes = parse_number(value)
                if spec.passes < 1:
                    raise ValueError
            elif key == "port" and eq:
                spec.port = parse_number(value)
                if not 0 < spec.port < 65536:
                    raise ValueError
            elif key == "match" and eq and value:
                spec.match = value
            elif param == "mandatory":
                spec.mandatory = True
            elif param == "udp":
                raise node.error('the "udp" parameter of "health_check" is not supported yet')
            elif param == "persistent":
                # Plus keeps the state in the upstream's shared zone across reloads; pyngx
                # keeps it per worker process, and new workers start from scratch.
                raise node.error(
                    'the "persistent" parameter of "health_check" is not supported: '
                    "upstream state is kept per worker process and does not survive a reload"
                )
            else:
                raise ValueError
        except (ValueError, DirectiveValueError):
            raise node.error(f'invalid parameter "{param}"') from None
    ctx.append("health_check", spec, node)


def _match(ctx: Context, node: Node) -> None:
    name = node.args[0]
    matches: dict[str, _MatchConf] = ctx.slots.setdefault("matches", {})
    if name in matches:
        raise node.error(f'duplicate match "{name}"')
    conf = matches[name] = _MatchConf(node)
    child = ctx.child(MATCH, node)
    child.slots["conf"] = conf
    child.run(node.block or [])


def _send(ctx: Context, node: Node) -> None:
    conf: _MatchConf = ctx.slots["conf"]
    if conf.send is not None:
        raise node.error('"send" directive is duplicate')
    conf.send = unescape_hex(node.args[0])


def _expect(ctx: Context, node: Node) -> None:
    conf: _MatchConf = ctx.slots["conf"]
    if conf.expect_set:
        raise node.error('"expect" directive is duplicate')
    conf.expect_set = True
    if len(node.args) == 1:
        conf.expect = unescape_hex(node.args[0])
        return
    modifier, text = node.args
    if modifier not in ("~", "~*"):
        raise node.error(f'invalid parameter "{modifier}"')
    # `\xHH` is left to the regex engine, which reads it as that byte even where the byte
    # is a metacharacter (as PCRE does); decoding it first would change such patterns.
    pattern = text.encode("utf-8", "surrogateescape")
    try:
        conf.regex = re.compile(pattern, re.IGNORECASE if modifier == "~*" else 0)
    except re.error as exc:
        raise node.error(f'invalid regex "{text}": {exc}') from None


def register(reg: Registry) -> None:
    reg.add("health_check", [SERVER], _health_check, ANY)
    reg.add("health_check_timeout", [STREAM, SERVER], time_slot("health_check_timeout"))
    reg.add("match", [STREAM], _match, TAKE1, block=True)
    reg.add("send", [MATCH], _send, TAKE1)
    reg.add("expect", [MATCH], _expect, TAKE12)


# -- build ------------------------------------------------------------------------------


def build(stream: Context, servers: list[StreamServer]) -> list[HealthCheck]:
    """Resolve every `health_check` of the stream block; `servers` are module.build's
    StreamServers, in the order of their `server` blocks."""
    confs: dict[str, _MatchConf] = stream.local("matches", {})
    matches = {name: Match(name, c.send or b"", c.expect, c.regex) for name, c in confs.items()}
    checks: list[HealthCheck] = []
    for index, srv in enumerate(c for c in stream.children if c.kind == SERVER):
        specs: list[_Spec] = srv.local("health_check", [])
        if not specs:
            continue
        server = servers[index]
        assert server.index == index
        group: UpstreamGroup = server.upstream
        for spec in specs:
            if group.implicit:
                raise spec.node.error(
                    f'"health_check" needs "proxy_pass" to an upstream group, not "{group.name}"'
                )
            match = None
            if spec.match is not None:
                match = matches.get(spec.match)
                if match is None:
                    raise spec.node.error(f'unknown match "{spec.match}"')
            checks.append(
                HealthCheck(
                    group=group,
                    match=match,
                    interval=spec.interval,
                    jitter=spec.jitter,
                    fails=spec.fails,
                    passes=spec.passes,
                    port=spec.port,
                    mandatory=spec.mandatory,
                    timeout=srv.get("health_check_timeout", DEFAULT_TIMEOUT),
                    connect_timeout=server.connect_timeout,
                    proxy_protocol=server.proxy_protocol,
                    buffer_size=server.buffer_size,
                    bind=server.bind,
                    error_log=server.error_log,
                    where=f"{spec.node.file}:{spec.node.line}",
                )
            )
    return checks


# -- run time ---------------------------------------------------------------------------


def _strerror(code: int) -> str:
    return f"({code}: {os.strerror(code)})"


def _excerpt(data: bytes | bytearray) -> str:
    """Printable ASCII as is, anything else as \\xHH (as nginx escapes logged bytes)."""
    head = bytes(data[:LOG_EXCERPT])
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02X}" for b in head)
    return text + ("..." if len(data) > LOG_EXCERPT else "")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one probe ended: passed or not, what it was doing, and why it failed."""

    ok: bool
    action: str
    error: str | None = None
    level: int = ERROR


class _Probe(asyncio.Protocol):
    """Collects the answer of one probe connection and resolves `done` once it is decided."""

    __slots__ = ("match", "limit", "buf", "done", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, match: Match | None, limit: int) -> None:
        self.match = match
        self.limit = limit
        self.buf = bytearray()
        # Resolved with an Outcome, never an exception: nobody awaits it when the probe does
        # not read, and an unretrieved exception would be logged by asyncio.
        self.done: asyncio.Future[Outcome] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done.done() or self.match is None:
            return
        self.buf += data[: self.limit - len(self.buf)]
        if self.match.test(self.buf):
            self.done.set_result(Outcome(True, CHECKING))
        elif len(self.buf) >= self.limit:
            self._finish(
                Outcome(
                    False,
                    CHECKING,
                    f"no match in the first {self.limit} bytes of the response "
                    f'"{_excerpt(self.buf)}"',
                    INFO,
                )
            )

    def eof_received(self) -> bool:
        if self.buf:
            self._finish(
                Outcome(False, CHECKING, f'unexpected response "{_excerpt(self.buf)}"', INFO)
            )
        else:
            self._finish(Outcome(False, READING, "upstream prematurely closed connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError) and exc.errno:
            self._finish(Outcome(False, READING, f"recv() failed {_strerror(exc.errno)}"))
        else:
            self._finish(Outcome(False, READING, "upstream prematurely closed connection"))

    def _finish(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


@dataclass(slots=True, eq=False)
class _PeerState:
    """One check's view of one peer: consecutive results and its verdict."""

    check: HealthCheck
    peer: Peer
    fails: int = 0
    passes: int = 0
    bad: bool = False
    checking: bool = False  # `mandatory`: no probe has completed yet
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class HealthCheckers:
    """The health checks of one worker: a task per checked peer, all cancelled by `cancel`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        checks: list[HealthCheck],
        rng: random.Random | None = None,
    ) -> None:
        self.loop = loop
        self.checks = checks
        self.rng = rng or random.Random()
        self.states: list[_PeerState] = []
        # How many checks consider each peer unhealthy; the peer is out while this is not 0.
        self.bad_count: dict[Peer, int] = {}

    def start(self) -> None:
        """Set the initial states (`mandatory` peers start out "checking", i.e. unusable)
        and start the tasks; call before the listeners accept so no client sees a peer that
        a mandatory check has not passed yet."""
        for check in self.checks:
            for peer in check.group.balancer.peers:
                if peer.conf.down:
                    continue  # never selected, so never worth a probe
                st = _PeerState(check, peer)
                if check.mandatory:
                    st.checking = True
                    self._set_bad(st, True)
                self.states.append(st)
        for st in self.states:
            st.task = self.loop.create_task(self._run(st))

    def cancel(self) -> None:
        for st in self.states:
            if st.task is not None:
                st.task.cancel()

    async def wait_closed(self, timeout: float = 1.0) -> None:
        """Let cancelled tasks unwind (they close their probe connection) before the loop
        closes; bounded so that a stuck probe cannot hold a stopping worker."""
        tasks = [st.task for st in self.states if st.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # -- the loop of one peer -------------------------------------------------------------

    async def _run(self, st: _PeerState) -> None:
        loop = self.loop
        check = st.check
        next_at = loop.time() + self._jitter(check)
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            try:
                self.record(st, await self.probe(check, st.peer))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not cost a peer, the loop or the worker
                check.error_log.log(
                    ALERT,
                    f"health check failed: {type(exc).__name__}: {exc}{self._context(st)}",
                )
            # Intervals run start to start; a probe that overran starts the next one at once.
            next_at = max(started + check.interval, loop.time()) + self._jitter(check)

    def _jitter(self, check: HealthCheck) -> float:
        return self.rng.uniform(0, check.jitter) if check.jitter else 0.0

    async def probe(self, check: HealthCheck, peer: Peer) -> Outcome:
        """Connect, send, and read until `expect` matches; never raises for I/O problems."""
        loop = self.loop
        addr: SockAddr = peer.conf.addr  # type: ignore[assignment]
        match = check.match
        proto = _Probe(loop, match, check.buffer_size)
        transport: asyncio.Transport | None = None
        action = CONNECTING
        started = loop.time()
        deadline = asyncio.timeout(min(check.connect_timeout, check.timeout))
        try:
            async with deadline:
                if addr.family == socket.AF_UNIX:
                    transport, _ = await loop.create_unix_connection(lambda: proto, addr.address)
                else:
                    local = check.bind.address if check.bind is not None else None
                    transport, _ = await loop.create_connection(
                        lambda: proto,
                        addr.address[0],
                        check.port or addr.address[1],
                        local_addr=local,
                    )
                deadline.reschedule(started + check.timeout)
                out = encode_v2_local() if check.proxy_protocol else b""
                if match is not None:
                    out += match.send
                if out:
                    action = SENDING
                    transport.write(out)
                if match is None or not match.reads:
                    return Outcome(True, action)
                action = READING
                return await proto.done
        except TimeoutError as exc:
            if deadline.expired():
                timed_out = f"upstream timed out {_strerror(errno.ETIMEDOUT)}"
                if action == READING and proto.buf:
                    # The peer answered, just not what `expect` wants (a server that keeps
                    # the connection open after a wrong greeting): say what it sent.
                    text = f'{timed_out} waiting for a match in "{_excerpt(proto.buf)}"'
                    return Outcome(False, CHECKING, text, INFO)
                return Outcome(False, action, timed_out)
            return self._os_error(action, exc)
        except OSError as exc:
            return self._os_error(action, exc)
        finally:
            if transport is not None:
                transport.close()

    @staticmethod
    def _os_error(action: str, exc: OSError) -> Outcome:
        call = "connect()" if action == CONNECTING else "send()"
        code = exc.errno or 0
        return Outcome(False, action, f"{call} failed {_strerror(code) if code else f'({exc})'}")

    # -- verdicts ---------------------------------------------------------------------------

    def record(self, st: _PeerState, outcome: Outcome) -> None:
        """Count one probe's result and flip the peer after `fails`/`passes` in a row."""
        check = st.check
        log = check.error_log
        if outcome.ok:
            st.fails = 0
            st.passes += 1
            if st.bad and (st.checking or st.passes >= check.passes):
                self._set_bad(st, False)
                # "checking" -> healthy is the expected start of a `mandatory` check: [info].
                level = INFO if st.checking else NOTICE
                log.log(level, f"peer is healthy while {outcome.action}{self._context(st)}")
        else:
            st.passes = 0
            st.fails += 1
            if outcome.error is not None:
                log.log(outcome.level, f"{outcome.error} while {outcome.action}{self._context(st)}")
            if st.checking or (not st.bad and st.fails >= check.fails):
                self._set_bad(st, True)
                log.log(WARN, f"peer is unhealthy while {outcome.action}{self._context(st)}")
        st.checking = False

    def _set_bad(self, st: _PeerState, bad: bool) -> None:
        if st.bad == bad:
            return
        st.bad = bad
        peer = st.peer
        count = self.bad_count.get(peer, 0) + (1 if bad else -1)
        self.bad_count[peer] = count
        peer.unhealthy = count > 0

    @staticmethod
    def _context(st: _PeerState) -> str:
        check = st.check
        text = (
            f', health check "{check.match_name}" of peer {st.peer.name}'
            f' in upstream "{check.group.name}"'
        )
        if check.port is not None:
            text += f", port {check.port}"
        return text


def start_health_checks(
    loop: asyncio.AbstractEventLoop, checks: list[HealthCheck]
) -> HealthCheckers | None:
    """The worker's hook: None when the configuration has no health checks."""
    if not checks:
        return None
    checkers = HealthCheckers(loop, checks)
    checkers.start()
    return checkers


__all__ = [
    "HealthCheck",
    "HealthCheckers",
    "Match",
    "Outcome",
    "build",
    "register",
    "start_health_checks",
    "unescape_hex",
]
