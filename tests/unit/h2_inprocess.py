"""In-process HTTP/2: a real configuration, HttpConnection and H2Connection on a fake
transport, driven by the `h2` library as the client. No sockets, no processes: content
handlers can be plugged into locations (an echo of the request body, a handler that never
answers) to reach what the built-in handlers cannot.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyngx.core.cycle import Cycle, load_cycle
from pyngx.core.paths import make_paths
from pyngx.http.connection import HttpConnection
from pyngx.http.request import DONE
from tests.h2util import ClientState, Response

__all__ = ["Response", "Session"]


class FakeTransport:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.out = bytearray()
        self.protocol: Any = None
        self.closed = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size reports

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.out += data

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class FakeWorker:
    def __init__(self, loop: asyncio.AbstractEventLoop, cycle: Cycle) -> None:
        self.loop = loop
        self.cycle = cycle
        self.http = cycle.http
        self.http_connections: set[Any] = set()
        self.draining = False
        self._ids = itertools.count(1)

    def next_connection_id(self) -> int:
        return next(self._ids)

    def over_connection_limit(self) -> bool:
        return False

    def http_connection_closed(self, conn: Any) -> None:
        pass

    def worker_log(self, level: int, message: str) -> None:
        pass


def load(tmp_path: Path, http_body: str) -> Cycle:
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "html").mkdir(exist_ok=True)
    conf = tmp_path / "test.conf"
    conf.write_text(
        f"error_log {tmp_path}/logs/error.log info;\nevents {{}}\n"
        f"http {{\n access_log {tmp_path}/logs/access.log;\n root {tmp_path}/html;\n"
        f"{http_body}\n}}\n"
    )
    return load_cycle(make_paths(str(tmp_path), str(conf)))


def set_content(cycle: Cycle, uri: str, handler: Callable[[Any], Any]) -> None:
    assert cycle.http is not None
    server = cycle.http.servers[0]
    found = server.locations.find(uri)
    assert found is not None, uri
    found[0].content = handler


def read_logs(tmp_path: Path) -> tuple[str, str]:
    def text(name: str) -> str:
        p = tmp_path / "logs" / name
        return p.read_text() if p.exists() else ""

    return text("access.log"), text("error.log")


# -- content handlers for tests ---------------------------------------------------------------


def echo(r: Any) -> Any:
    """Answers 200 with the request body (read through r.conn.read_body)."""
    chunks: list[bytes] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def sink(piece: bytes | None) -> None:
        if piece is None or piece == b"":
            if not done.done():
                done.set_result(None)
        else:
            chunks.append(piece)

    r.conn.read_body(sink, r.loc.client_max_body_size)

    async def answer() -> int:
        await done
        if r.done:
            return DONE
        r.out.content_type = "application/octet-stream"
        r.send_response(200, b"".join(chunks))
        return DONE

    return answer()


def never(r: Any) -> Any:
    """Never answers (a stand-in for an upstream that hangs)."""

    async def wait() -> int:
        await asyncio.get_running_loop().create_future()
        return DONE

    return wait()


def streamer(size: int, chunk: int = 64 * 1024) -> Callable[[Any], Any]:
    """Streams `size` bytes of a pattern with send_head/send_body, pausing on writing_paused."""

    def handler(r: Any) -> Any:
        async def run() -> int:
            r.status = 200
            r.out.content_length = size
            r.out.content_type = "application/octet-stream"
            r.send_head()
            sent = 0
            while sent < size and not r.done:
                n = min(chunk, size - sent)
                r.send_body(bytes((sent + i) % 251 for i in range(n)))
                sent += n
                if r.conn.writing_paused:
                    await r.conn.drain()
            if not r.done:
                r.finish()
            return DONE

        return run()

    return handler


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


# -- the client side --------------------------------------------------------------------------


class Session(ClientState):
    """One client connection to an in-process server."""

    def __init__(self, cycle: Cycle, *, window: int | None = None, auto_ack: bool = True) -> None:
        super().__init__(window=window, auto_ack=auto_ack)
        self.loop = asyncio.get_running_loop()
        self.worker = FakeWorker(self.loop, cycle)
        assert cycle.http is not None
        port = cycle.http.ports[0]
        self.transport = FakeTransport(self.loop)
        conn = HttpConnection(self.worker, port)
        self.transport.protocol = conn
        conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.send()

    @property
    def server(self) -> Any:
        return self.transport.protocol

    def send(self) -> None:
        data = self.client.data_to_send()
        if data and not self.transport.closed:
            self.transport.protocol.data_received(bytes(data))

    def receive(self) -> None:
        data = bytes(self.transport.out)
        self.transport.out.clear()
        if data:
            self.feed(data)

    async def run(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = self.loop.time() + timeout
        while True:
            self.receive()
            if until():
                return
            if self.loop.time() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.002)

    async def get(self, path: str, **kw: Any) -> Response:
        sid = self.request(path, **kw)
        r = self.responses[sid]
        await self.run(lambda: r.done)
        return r
