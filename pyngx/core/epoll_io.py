"""Plain TCP and unix stream sockets on an epoll of our own, nested in the uvloop loop.

Why: a short proxied connection (accept, connect, a few bytes each way, close) costs uvloop
about 50 us of user CPU per connection on top of the protocol's own work: two TCPTransport
objects, a coroutine with a Future for create_connection, a call_soon for each
connection_made and connection_lost, getsockname and getpeername at every connect and accept
(4 syscalls), a WeakValueDictionary entry per transport, and epoll_ctl changes as reading and
writing start and stop. nginx's stream module pays none of that: one epoll_ctl per socket,
edge-triggered, for reading and writing at once, and the client address from accept().
Measured on the S2 bench (bench/README.md), this module doing the same in Python (one
epoll, edge-triggered, registered once per socket) made the per-connection user CPU a third
of uvloop's.

- `Reactor`: one per worker. Its epoll is watched by the uvloop loop (add_reader), so timers,
  call_soon and everything on uvloop transports (HTTP, TLS, UDP) keep running as before.
- `SocketTransport`: an asyncio.Transport over a non-blocking socket; the protocol sees what
  it would see from uvloop: connection_made, data_received, eof_received (True keeps the
  write side open), pause_writing/resume_writing, connection_lost (always in a later
  callback, as asyncio calls it).
- `Listener`: accepts on a listening socket and makes a transport and a protocol for each
  connection (what loop.create_server would).
- `Connect`: one non-blocking connect; the transport and protocol when it completes, or the
  errno to `failed`.

The stream module uses these where nothing needs a uvloop transport: no `listen ... ssl` or
`pass` on the listener (start_tls wants uvloop's own transports), no `proxy_ssl` upstream.

Edge-triggered means every event must be used up: reads go on until a short read (unless
the peer's FIN is in the event, EPOLLRDHUP, then until EOF) and a paused transport reads
again when resumed; writes wait for EPOLLOUT only after a short send.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import select
import socket
from collections.abc import Callable
from typing import Any

READ_SIZE = 262144  # what uvloop reads at a time
# Connections accepted per readiness event of a listener. nginx's default (`multi_accept off`,
# which pyngx parses and ignores) is one: its loop rounds are cheap. Ours are not (uvloop's
# round plus this epoll's): one per event measured S2 at 0.59 of nginx, 64 at 0.80.
ACCEPTS = 64
READS_PER_EVENT = 16  # then the others get a turn (the rest is read in a later callback)
HIGH_WATER = 65536  # asyncio's default write buffer limits
LOW_WATER = 16384

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLRDHUP = select.EPOLLRDHUP
_EPOLLERR = select.EPOLLERR
_EPOLLHUP = select.EPOLLHUP
# One registration per connection socket, for its whole life (nginx's way).
_CONN_MASK = _EPOLLIN | _EPOLLOUT | _EPOLLRDHUP | select.EPOLLET
_READ_EVENTS = _EPOLLIN | _EPOLLRDHUP | _EPOLLERR | _EPOLLHUP
_IOV_MAX = 64

_ACCEPT_RETRY = 0.5  # nginx's accept_mutex_delay: how long accepting rests after EMFILE


class Reactor:
    """The worker's epoll: fd -> the object whose `_event(mask)` handles it."""

    __slots__ = ("loop", "ep", "table", "later", "queued", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.table: dict[int, Any] = {}
        # Calls for the next loop round (connection_lost, reads resumed or left over): one
        # call_soon for all of them.
        self.later: list[tuple[Callable[..., None], Any]] = []
        self.queued = False
        self.closed = False
        loop.add_reader(self.ep.fileno(), self._poll)

    def _poll(self) -> None:
        table = self.table
        for fd, mask in self.ep.poll(0, 1024):
            obj = table.get(fd)
            if obj is None:
                continue  # closed while its event waited in this batch
            try:
                obj._event(mask)
            except Exception as exc:  # noqa: BLE001 - one connection's bug must not lose the batch
                self.failed(obj, exc)

    def failed(self, obj: Any, exc: BaseException) -> None:
        """A protocol callback raised: reported, and its transport closed with the error (as
        uvloop does), so that the connection does not hang on an event already used up."""
        self.loop.call_exception_handler(
            {"message": "epoll event handler failed", "exception": exc}
        )
        if isinstance(obj, SocketTransport):
            obj._fatal(exc)

    def add(self, fd: int, obj: Any, mask: int = _CONN_MASK) -> None:
        self.table[fd] = obj
        self.ep.register(fd, mask)

    def soon(self, fn: Callable[..., None], arg: Any) -> None:
        self.later.append((fn, arg))
        if not self.queued:
            self.queued = True
            self.loop.call_soon(self._run_later)

    def _run_later(self) -> None:
        self.queued = False
        calls = self.later
        self.later = []
        for fn, arg in calls:
            try:
                fn(arg)
            except Exception as exc:  # noqa: BLE001
                self.failed(getattr(fn, "__self__", None), exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


class SocketTransport(asyncio.Transport):
    """An asyncio transport over a connected non-blocking stream socket in a Reactor."""

    __slots__ = (
        "reactor",
        "sock",
        "fd",
        "protocol",
        "peername",
        "reading",
        "unread",
        "rdhup",
        "eof",
        "closing",
        "lost",
        "buf",
        "buffered",
        "high",
        "low",
        "writing_paused",
        "eof_after",
    )

    def __init__(self, reactor: Reactor, sock: Any, protocol: Any, peername: Any) -> None:
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self.peername = peername
        self.reading = True
        self.unread = False  # an event came while paused: read when resumed
        self.rdhup = False  # the peer's FIN is known: read on to EOF
        self.eof = False
        self.closing = False
        self.lost = False
        self.buf: list[Any] = []
        self.buffered = 0
        self.high = HIGH_WATER
        self.low = LOW_WATER
        self.writing_paused = False
        self.eof_after = False  # write_eof once the buffer is out

    # -- events -----------------------------------------------------------------------------

    def _event(self, mask: int) -> None:
        if mask & _EPOLLRDHUP:
            self.rdhup = True
        if mask & _EPOLLOUT and self.buf:
            self._flush()
        if mask & _READ_EVENTS and not self.eof and not self.lost:
            if self.reading and not self.closing:
                self._read()
            else:
                self.unread = True

    def _read(self, _: Any = None) -> None:
        sock = self.sock
        protocol = self.protocol
        for _n in range(READS_PER_EVENT):
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
            if not data:
                self.eof = True
                if not protocol.eof_received():
                    self.close()
                return
            protocol.data_received(data)
            if not self.reading or self.closing or self.lost:
                if not self.lost:
                    self.unread = True
                return
            if len(data) < READ_SIZE and not self.rdhup:
                return  # the socket is drained: the next byte brings a new event
        self.reactor.soon(self._read_more, None)

    def _read_more(self, _: Any) -> None:
        if self.reading and not self.closing and not self.lost and not self.eof:
            self.unread = False
            self._read()
        else:
            self.unread = True

    # -- asyncio.Transport ------------------------------------------------------------------

    def write(self, data: Any) -> None:
        if self.closing or self.lost or self.eof_after:
            return
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if self.buf:
            self.buf.append(data)
            self.buffered += len(data)
            self._maybe_pause()
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if n == len(data):
            return
        self.buf.append(memoryview(data)[n:])
        self.buffered += len(data) - n
        self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _maybe_pause(self) -> None:
        if not self.writing_paused and self.buffered > self.high:
            self.writing_paused = True
            try:
                self.protocol.pause_writing()
            except Exception as exc:  # noqa: BLE001
                self.reactor.loop.call_exception_handler(
                    {"message": "protocol.pause_writing() failed", "exception": exc}
                )

    def _flush(self) -> None:
        buf = self.buf
        sock = self.sock
        while buf:
            try:
                if len(buf) == 1:
                    n = sock.send(buf[0])
                else:
                    n = sock.sendmsg(buf[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fatal(exc)
                return
            self.buffered -= n
            while n:
                first = buf[0]
                size = len(first)
                if n >= size:
                    n -= size
                    del buf[0]
                else:
                    buf[0] = memoryview(first)[n:]
                    n = 0
            if buf:
                return  # short send: EPOLLOUT comes when there is room
        if self.writing_paused and self.buffered <= self.low:
            self.writing_paused = False
            self.protocol.resume_writing()
        if self.closing:
            self._close_now(None)
        elif self.eof_after:
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.closing or self.lost or self.eof_after:
            return
        self.eof_after = True
        if not self.buf:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone: the read side will say so

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def close(self) -> None:
        if self.closing or self.lost:
            return
        self.closing = True
        if not self.buf:
            self._close_now(None)

    def abort(self) -> None:
        if self.lost:
            return
        self.closing = True
        self.buf.clear()
        self.buffered = 0
        self._close_now(None)

    def _fatal(self, exc: BaseException) -> None:
        self.closing = True
        self.buf.clear()
        self.buffered = 0
        self._close_now(exc)

    def _close_now(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        reactor = self.reactor
        reactor.table.pop(self.fd, None)
        # Closing the only descriptor of the socket takes it out of the epoll too.
        self.sock.close()
        reactor.soon(self._call_lost, exc)

    def _call_lost(self, exc: BaseException | None) -> None:
        protocol = self.protocol
        self.protocol = None
        if protocol is not None:
            protocol.connection_lost(exc)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if self.reading:
            return
        self.reading = True
        if self.unread and not self.closing and not self.lost and not self.eof:
            self.reactor.soon(self._read_more, None)

    def is_reading(self) -> bool:
        return self.reading and not self.closing and not self.lost

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        self.high = high
        self.low = low
        self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.low, self.high)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            if self.peername is None:
                try:
                    self.peername = self.sock.getpeername()
                except OSError:
                    return default
            return self.peername
        if name == "sockname":
            try:
                return self.sock.getsockname()
            except OSError:
                return default
        if name == "socket":
            return self.sock
        return default


class Listener:
    """Accepts on `sock` and gives each connection a transport and `factory()`'s protocol;
    close() stops accepting (the socket is closed, as asyncio's Server.close does)."""

    __slots__ = ("reactor", "sock", "fd", "factory", "family", "nodelay", "on_error", "resting")

    def __init__(
        self,
        reactor: Reactor,
        sock: socket.socket,
        factory: Callable[[], Any],
        on_error: Callable[[OSError], None],
    ) -> None:
        self.reactor = reactor
        self.sock = sock
        self.factory = factory
        self.family = sock.family
        self.nodelay = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.on_error = on_error
        self.resting = False
        sock.setblocking(False)
        self.fd = sock.fileno()
        # Level-triggered: a connection left in the queue (a batch's end) is seen again.
        reactor.add(self.fd, self, select.EPOLLIN)

    def _event(self, mask: int) -> None:
        accept = self.sock._accept  # type: ignore[attr-defined]
        family = self.family
        reactor = self.reactor
        factory = self.factory
        for _n in range(ACCEPTS):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self.on_error(exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._rest()
                return
            # The C socket object: socket.socket's Python layer (makefile, io refs) is not
            # needed, and its __init__ and close() would cost three Python calls each.
            sock = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            if self.nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            protocol = factory()
            transport = SocketTransport(reactor, sock, protocol, addr)
            reactor.add(fd, transport)
            try:
                protocol.connection_made(transport)
            except Exception as exc:  # noqa: BLE001 - this connection only; accepting goes on
                reactor.failed(transport, exc)

    def _rest(self) -> None:
        """Out of descriptors: stop accepting for a while (nginx disables accept events)."""
        if self.resting or self.reactor.closed:
            return
        self.resting = True
        self.reactor.ep.unregister(self.fd)
        self.reactor.loop.call_later(_ACCEPT_RETRY, self._wake)

    def _wake(self) -> None:
        if not self.resting or self.sock.fileno() < 0 or self.reactor.closed:
            return
        self.resting = False
        self.reactor.ep.register(self.fd, select.EPOLLIN)

    def close(self) -> None:
        reactor = self.reactor
        if reactor.table.get(self.fd) is self:
            del reactor.table[self.fd]
            if not self.resting and not reactor.closed:
                # The master and the other workers hold this socket too: closing our
                # descriptor would not take it out of our epoll.
                reactor.ep.unregister(self.fd)
        self.resting = False
        self.sock.close()


class Connect:
    """One non-blocking connect. The constructor makes the socket (OSError: socket() failed);
    the owner may bind `sock`, then start() connects; then, once: `owner.connect_task` is
    cleared, and either factory()'s protocol gets connection_made or failed(errno) is
    called. cancel() drops it silently (the owner's connect timer)."""

    __slots__ = ("reactor", "owner", "address", "factory", "failed", "sock", "done")

    def __init__(
        self,
        reactor: Reactor,
        owner: Any,
        family: int,
        address: Any,
        factory: Callable[[], Any],
        failed: Callable[[int], None],
        nodelay: bool = True,
        keepalive: bool = False,
    ) -> None:
        self.reactor = reactor
        self.owner = owner
        self.address = address
        self.factory = factory
        self.failed = failed
        self.done = False
        sock = self.sock = _socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            if family != socket.AF_UNIX:
                if nodelay:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            sock.close()
            raise

    def start(self) -> None:
        sock = self.sock
        err = sock.connect_ex(self.address)
        if err == errno.EINPROGRESS:
            self.reactor.add(sock.fileno(), self)
            return
        if err == 0:
            self._connected(0)
            return
        self._fail(err)

    def _event(self, mask: int) -> None:
        if self.done:
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.reactor.table.pop(self.sock.fileno(), None)
            self._fail(err)
            return
        if not mask & (_EPOLLOUT | _EPOLLERR | _EPOLLHUP):
            return  # not yet (an event from before this socket had its number)
        self._connected(mask)

    def _connected(self, mask: int) -> None:
        self.done = True
        owner = self.owner
        if owner.connect_task is self:
            owner.connect_task = None
        sock = self.sock
        fd = sock.fileno()
        protocol = self.factory()
        transport = SocketTransport(self.reactor, sock, protocol, None)
        if mask:
            self.reactor.table[fd] = transport  # the same epoll registration goes on
        else:
            self.reactor.add(fd, transport)
        try:
            protocol.connection_made(transport)
        except Exception as exc:  # noqa: BLE001
            self.reactor.failed(transport, exc)
            return
        if mask & _READ_EVENTS:
            # Edge-triggered: what came with the connect's event is not announced again.
            transport._event(mask & ~_EPOLLOUT)

    def _fail(self, err: int) -> None:
        self.done = True
        owner = self.owner
        if owner.connect_task is self:
            owner.connect_task = None
        self.sock.close()
        self.failed(err)

    def cancel(self) -> None:
        if self.done:
            return
        self.done = True
        self.reactor.table.pop(self.sock.fileno(), None)
        self.sock.close()


__all__ = ["Connect", "Listener", "Reactor", "SocketTransport"]
