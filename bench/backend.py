"""Backends for the benchmark: `python -m bench.backend ROLE [--port N]`.

Roles
- sink:   reads an 8-byte big-endian length, then discards exactly that many bytes and answers
          one byte (b"k"), so the client can time the transfer end to end without relying on
          how the proxy handles EOF.
- source: reads an 8-byte big-endian length, then sends exactly that many bytes.
- hold:   echoes whatever arrives and otherwise keeps the connection open (S3's idle
          connections do one ping-pong so the proxy has both sides up, then sit still).

Sink and source are plain blocking sockets, one thread per connection: S1 uses a single
connection, and a blocking recv_into/send on a large buffer is the cheapest way Python has to
move bytes (the time is in the kernel, not in the interpreter; the GIL is released around
every call). Hold is a uvloop Protocol, because it keeps thousands of connections.

The listening port is printed on stdout as one JSON line once the socket is listening; the
process runs until it is sent SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import struct
import sys
import threading
from collections.abc import Callable

# Large buffers make each syscall move as much as the socket holds: fewer trips through Python.
CHUNK = 4 << 20
SIZE_HEADER = struct.Struct("!Q")


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (S3 needs one fd per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def wait_close(conn: socket.socket) -> None:
    """Let the client end the connection: read (and drop) until EOF, then close."""
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def handle_sink(conn: socket.socket) -> None:
    try:
        header = recv_exact(conn, SIZE_HEADER.size)
        if header is None:
            return
        (left,) = SIZE_HEADER.unpack(header)
        view = memoryview(bytearray(CHUNK))
        while left > 0:
            n = conn.recv_into(view, min(left, CHUNK))
            if n == 0:
                return
            left -= n
        conn.sendall(b"k")
        wait_close(conn)
    except OSError:
        pass
    finally:
        conn.close()


def handle_source(conn: socket.socket) -> None:
    try:
        header = recv_exact(conn, SIZE_HEADER.size)
        if header is None:
            return
        (left,) = SIZE_HEADER.unpack(header)
        view = memoryview(bytes(CHUNK))
        while left > 0:
            left -= conn.send(view[: min(left, CHUNK)])
        wait_close(conn)
    except OSError:
        pass
    finally:
        conn.close()


def serve_threads(sock: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


class Echo(asyncio.Protocol):
    """Echo and hold: the transport stays open until the peer closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve_hold(sock: socket.socket) -> None:
    import uvloop

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, sock=sock, backlog=4096)
        await server.serve_forever()

    uvloop.run(run())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backend")
    ap.add_argument("role", choices=("sink", "source", "hold"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    raise_nofile()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    if args.role == "hold":
        sock.setblocking(False)
        serve_hold(sock)
    else:
        serve_threads(sock, handle_sink if args.role == "sink" else handle_source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
