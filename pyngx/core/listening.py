"""Listening sockets: planned from the cycle, opened by the master, inherited by workers.

As nginx does, a wildcard `listen *:25` serves every address on port 25; a server listening on
a specific address of that port without `bind` is reached through the wildcard socket, chosen
by the connection's local address. Sockets are keyed so that a reload reuses the sockets it
already has (no connection is refused while reloading) and opens only new ones.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.values import SockAddr
from pyngx.core.log import EMERG, NOTICE
from pyngx.stream.module import ListenOpts, StreamServer

Target = tuple[StreamServer, ListenOpts]
BIND_TRIES = 5
BIND_RETRY_DELAY = 0.5


@dataclass(slots=True)
class ListenGroup:
    """One bound socket (or one per worker with `reuseport`) and the servers it serves."""

    opts: ListenOpts
    default: Target | None
    by_addr: dict[str, Target] = field(default_factory=dict)

    @property
    def key(self) -> tuple[Any, ...]:
        return socket_key(self.opts)


def socket_key(opts: ListenOpts) -> tuple[Any, ...]:
    a = opts.addr
    return (a.family, a.address, opts.reuseport, opts.ipv6only, opts.backlog, opts.udp)


def plan(servers: list[Any]) -> list[ListenGroup]:
    """Group every `listen` into the sockets to bind."""
    targets: list[Target] = [(srv, lo) for srv in servers for lo in srv.listens]
    wildcards: dict[tuple[int, int | None], ListenGroup] = {}
    groups: list[ListenGroup] = []
    for srv, lo in targets:
        if lo.wildcard:
            g = ListenGroup(lo, (srv, lo))
            wildcards[(lo.addr.family, lo.addr.port, lo.udp)] = g
            groups.append(g)
    for srv, lo in targets:
        if lo.wildcard:
            continue
        wild = wildcards.get((lo.addr.family, lo.addr.port, lo.udp))
        # A UDP listen always gets its own socket: telling a datagram's local address on a
        # wildcard socket would take IP_PKTINFO, and the kernel prefers the specific socket.
        if wild is not None and not lo.bind and not lo.udp:
            wild.by_addr[lo.addr.host] = (srv, lo)
            continue
        groups.append(ListenGroup(lo, (srv, lo)))
    return groups


def open_socket(opts: ListenOpts) -> socket.socket:
    """Create, configure and bind one listening socket; OSError carries nginx's message."""
    addr: SockAddr = opts.addr
    sock = socket.socket(addr.family, socket.SOCK_DGRAM if opts.udp else socket.SOCK_STREAM)
    try:
        if addr.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if addr.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(opts.ipv6only))
        if opts.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opts.rcvbuf)
        if opts.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opts.sndbuf)
        ka = opts.so_keepalive
        if ka:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if isinstance(ka, tuple):
                idle, intvl, cnt = ka
                if idle:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                if intvl:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
                if cnt:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt)
        elif ka is False:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        try:
            sock.bind(addr.address)
        except OSError as exc:
            code = exc.errno or 0
            raise OSError(
                code, f"bind() to {addr.text} failed ({code}: {os.strerror(code)})"
            ) from None
        if opts.udp:
            sock.setblocking(False)
            return sock
        try:
            sock.listen(opts.backlog if opts.backlog > 0 else socket.SOMAXCONN)
        except OSError as exc:
            code = exc.errno or 0
            raise OSError(
                code,
                f"listen() to {addr.text}, backlog {opts.backlog} failed "
                f"({code}: {os.strerror(code)})",
            ) from None
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


class SocketTable:
    """The master's open listening sockets, by key; reused across reloads."""

    def __init__(self) -> None:
        self.sockets: dict[tuple[Any, ...], list[socket.socket]] = {}

    def open_for(
        self,
        groups: list[ListenGroup],
        workers: int,
        log: Callable[[int, str], None] | None = None,
    ) -> dict[tuple[Any, ...], list[socket.socket]]:
        """Sockets for these groups, reusing ours; raises OSError without changing the table.

        As nginx does, an address in use is retried BIND_TRIES times, BIND_RETRY_DELAY apart
        (an old instance may be on its way out); other errors fail at once.
        """
        have: dict[tuple[Any, ...], list[socket.socket]] = {
            g.key: list(self.sockets.get(g.key, [])) for g in groups
        }
        created: list[socket.socket] = []
        try:
            for attempt in range(BIND_TRIES):
                in_use = False
                for g in groups:
                    socks = have[g.key]
                    need = workers if g.opts.reuseport else 1
                    while len(socks) < need:
                        try:
                            s = open_socket(g.opts)
                        except OSError as exc:
                            if exc.errno != errno.EADDRINUSE:
                                raise
                            if log is not None:
                                log(EMERG, exc.strerror or str(exc))
                            in_use = True
                            break
                        created.append(s)
                        socks.append(s)
                if not in_use:
                    break
                if attempt == BIND_TRIES - 1:
                    raise OSError(errno.EADDRINUSE, "still could not bind()")
                if log is not None:
                    log(NOTICE, f"try again to bind() after {int(BIND_RETRY_DELAY * 1000)}ms")
                time.sleep(BIND_RETRY_DELAY)
        except BaseException:
            for s in created:
                s.close()
            raise
        return {g.key: have[g.key][: workers if g.opts.reuseport else 1] for g in groups}

    def commit(self, opened: dict[tuple[Any, ...], list[socket.socket]]) -> None:
        """Make `opened` the table; close the sockets it no longer uses."""
        keep = {id(s) for socks in opened.values() for s in socks}
        for socks in self.sockets.values():
            for s in socks:
                if id(s) not in keep:
                    _close_listening(s)
        self.sockets = opened

    def close_all(self) -> None:
        for socks in self.sockets.values():
            for s in socks:
                _close_listening(s)
        self.sockets.clear()


def _close_listening(sock: socket.socket) -> None:
    path = None
    try:
        if sock.family == socket.AF_UNIX:
            path = sock.getsockname()
    except OSError:
        pass
    sock.close()
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
