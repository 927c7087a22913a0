"""pyngx/core/epoll_io.py on real loopback sockets: the transport contract the stream
sessions rely on (backpressure, half-close, pause/resume with edge-triggered events, connect
failures and cancels, listener close)."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from typing import Any

import pytest
import uvloop

from pyngx.core.epoll_io import Connect, Listener, Reactor


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost = asyncio.get_event_loop().create_future()
        self.eof_keep = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.eof_keep

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


def run(coro: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 20))
    finally:
        loop.close()


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


async def accept_one(reactor: Reactor, sock: socket.socket) -> tuple[Listener, Recorder]:
    made: asyncio.Future[Recorder] = asyncio.get_running_loop().create_future()

    def factory() -> Recorder:
        proto = Recorder()
        made.set_result(proto)
        return proto

    listener = Listener(reactor, sock, factory, lambda exc: None)
    return listener, await made


def test_large_write_pauses_and_resumes_the_writer_and_arrives_whole() -> None:
    payload = bytes(range(256)) * (8 * 4096)  # 8 MiB

    async def main() -> None:
        reactor = Reactor(asyncio.get_running_loop())
        lsock = listening()
        client = socket.create_connection(lsock.getsockname())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listener, proto = await accept_one(reactor, lsock)
        proto.transport.write(payload)
        proto.transport.close()  # flushed first, as asyncio's close()
        got = bytearray()

        def read_all() -> None:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        await proto.lost
        await asyncio.get_running_loop().run_in_executor(None, reader.join)
        client.close()
        listener.close()
        reactor.close()
        assert bytes(got) == payload
        assert proto.events[:2] == ["made", "pause_writing"]
        assert "resume_writing" in proto.events

    run(main())


def test_eof_keeps_the_write_side_open_and_data_before_fin_is_read() -> None:
    async def main() -> None:
        reactor = Reactor(asyncio.get_running_loop())
        lsock = listening()
        client = socket.create_connection(lsock.getsockname())
        listener, proto = await accept_one(reactor, lsock)
        client.sendall(b"question")
        client.shutdown(socket.SHUT_WR)
        while "eof" not in proto.events:
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b"question"
        proto.transport.write(b"answer")
        proto.transport.write_eof()
        client.settimeout(5)
        assert client.recv(100) == b"answer"
        assert client.recv(100) == b""
        proto.transport.close()
        assert await proto.lost is None
        client.close()
        listener.close()
        reactor.close()

    run(main())


def test_paused_reading_gets_what_came_meanwhile_once_resumed() -> None:
    async def main() -> None:
        reactor = Reactor(asyncio.get_running_loop())
        lsock = listening()
        client = socket.create_connection(lsock.getsockname())
        listener, proto = await accept_one(reactor, lsock)
        proto.eof_keep = False  # the client's EOF closes it
        proto.transport.pause_reading()
        client.sendall(b"held")
        await asyncio.sleep(0.1)
        assert proto.data == b""
        proto.transport.resume_reading()
        for _ in range(100):
            if proto.data:
                break
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b"held"
        client.close()
        assert await proto.lost is None
        assert proto.events == ["made", "eof", "lost"]
        listener.close()
        reactor.close()

    run(main())


def test_a_reset_reaches_connection_lost_with_its_error() -> None:
    async def main() -> None:
        reactor = Reactor(asyncio.get_running_loop())
        lsock = listening()
        client = socket.create_connection(lsock.getsockname())
        listener, proto = await accept_one(reactor, lsock)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # RST
        exc = await proto.lost
        assert isinstance(exc, ConnectionResetError)
        listener.close()
        reactor.close()

    run(main())


class Owner:
    connect_task: Any = None


def test_connect_refused_reports_the_errno_and_cancel_reports_nothing() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reactor = Reactor(loop)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there now
        failed: asyncio.Future[int] = loop.create_future()
        owner = Owner()
        c = Connect(
            reactor, owner, socket.AF_INET, ("127.0.0.1", port), Recorder, failed.set_result
        )
        owner.connect_task = c
        c.start()
        assert await failed == errno.ECONNREFUSED
        assert owner.connect_task is None

        lsock = listening()
        made: list[Recorder] = []
        other = Owner()

        def factory() -> Recorder:
            made.append(Recorder())
            return made[-1]

        c = Connect(
            reactor, other, socket.AF_INET, lsock.getsockname(), factory, lambda e: made.append(e)
        )
        other.connect_task = c
        c.start()
        c.cancel()
        await asyncio.sleep(0.1)
        assert made == []
        lsock.close()
        reactor.close()

    run(main())


def test_connect_delivers_data_sent_at_once_by_the_server() -> None:
    """A server that speaks first (SMTP): its banner may come with the connect's event."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reactor = Reactor(loop)
        lsock = listening()

        def serve() -> None:
            conn, _ = lsock.accept()
            conn.sendall(b"220 ready\r\n")
            conn.recv(100)
            conn.close()

        server = threading.Thread(target=serve)
        server.start()
        owner = Owner()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Recorder())
            protos[-1].eof_keep = False
            return protos[-1]

        c = Connect(reactor, owner, socket.AF_INET, lsock.getsockname(), factory, print)
        owner.connect_task = c
        c.start()
        for _ in range(200):
            if protos and protos[0].data:
                break
            await asyncio.sleep(0.01)
        assert bytes(protos[0].data) == b"220 ready\r\n"
        protos[0].transport.write(b"QUIT\r\n")
        await protos[0].lost
        await loop.run_in_executor(None, server.join)
        lsock.close()
        reactor.close()

    run(main())


def test_listener_close_stops_accepting() -> None:
    async def main() -> None:
        reactor = Reactor(asyncio.get_running_loop())
        lsock = listening()
        address = lsock.getsockname()
        listener = Listener(reactor, lsock, Recorder, lambda exc: None)
        listener.close()
        assert reactor.table == {}
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=1)
        reactor.close()

    run(main())


def test_a_protocol_error_closes_that_connection_with_the_error() -> None:
    """As uvloop does: the error goes to the loop's exception handler and to connection_lost,
    and the listener goes on accepting."""

    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("bug")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[Any] = []
        loop.set_exception_handler(lambda loop, context: reported.append(context["exception"]))
        reactor = Reactor(loop)
        lsock = listening()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Broken() if not protos else Recorder())
            return protos[-1]

        listener = Listener(reactor, lsock, factory, lambda exc: None)
        first = socket.create_connection(lsock.getsockname())
        first.sendall(b"x")
        while not protos:
            await asyncio.sleep(0.01)
        exc = await protos[0].lost
        assert isinstance(exc, ValueError)
        assert reported == [exc]
        second = socket.create_connection(lsock.getsockname())
        second.sendall(b"fine")
        while len(protos) < 2 or not protos[1].data:
            await asyncio.sleep(0.01)
        assert bytes(protos[1].data) == b"fine"
        first.close()
        second.close()
        listener.close()
        reactor.close()

    run(main())
