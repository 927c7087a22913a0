"""Load generators: `python -m bench.clients MODE ...`, one JSON result line on stdout.

Modes
- up:     one connection, sends an 8-byte length then that many bytes to a `sink` backend, and
          waits for its one-byte acknowledgement (S1).
- down:   one connection, asks a `source` backend for N bytes and reads them all (S1r).
- banner: many short connections for a fixed time: connect, read the backend's banner, close
          (S2). Run several of these processes side by side; each reports its latencies.
          The connection that overlaps the end of the window is finished but not counted.
- idle:   opens N connections, does one ping-pong on each so the proxy has its upstream side
          up too, prints the result, then holds them until stdin reaches EOF (S3).

Bulk modes use blocking sockets and big buffers (the kernel does the work); banner is a bare
epoll loop (the cheapest per connection Python has); idle uses uvloop with raw sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

from bench.backend import CHUNK, SIZE_HEADER, raise_nofile

# PROXY v1 header for the direct (no proxy) S2 baseline: the banner backend expects one.
DIRECT_PROXY_HEADER = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8025\r\n"


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def bulk_up(host: str, port: int, size: int) -> dict[str, Any]:
    sock = socket.create_connection((host, port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytes(CHUNK))
    start = time.perf_counter()
    sock.sendall(SIZE_HEADER.pack(size))
    left = size
    while left > 0:
        left -= sock.send(view[: min(left, CHUNK)])
    ack = sock.recv(1)
    seconds = time.perf_counter() - start
    sock.close()
    if ack != b"k":
        raise SystemExit(f"no acknowledgement from the sink (got {ack!r})")
    return {"bytes": size, "seconds": seconds}


def bulk_down(host: str, port: int, size: int) -> dict[str, Any]:
    sock = socket.create_connection((host, port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytearray(CHUNK))
    start = time.perf_counter()
    sock.sendall(SIZE_HEADER.pack(size))
    left = size
    while left > 0:
        n = sock.recv_into(view, min(left, CHUNK))
        if n == 0:
            raise SystemExit(f"connection closed with {left} bytes still expected")
        left -= n
    seconds = time.perf_counter() - start
    sock.close()
    return {"bytes": size, "seconds": seconds}


def banner(args: argparse.Namespace) -> dict[str, Any]:
    """Short connections with a hand-written epoll loop.

    Per connection this costs a handful of syscalls and a few dict operations, about half of
    what uvloop's sock_connect/sock_recv coroutines cost: the client must not be what limits
    a 2-core box.
    """
    import errno
    import select

    addr = (args.host, args.port)
    header = DIRECT_PROXY_HEADER if args.proxy_header else b""
    ep = select.epoll()
    # fd -> (socket, start time, header still to send)
    live: dict[int, tuple[socket.socket, float, bool]] = {}
    latencies: list[int] = []
    errors: dict[str, int] = {}
    # Wall-clock start shared by all client processes, converted to this process's clock.
    delay = args.start_at - time.time()
    measure_from = time.perf_counter() + delay + args.warmup
    measure_to = measure_from + args.duration

    def error(kind: str, t0: float) -> None:
        if t0 >= measure_from:
            errors[kind] = errors.get(kind, 0) + 1

    def start() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        t0 = time.perf_counter()
        code = sock.connect_ex(addr)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            error(errno.errorcode.get(code, str(code)), t0)
            return
        fd = sock.fileno()
        live[fd] = (sock, t0, bool(header))
        ep.register(fd, select.EPOLLOUT if header else select.EPOLLIN)

    def finish(fd: int) -> None:
        sock = live.pop(fd)[0]
        sock.close()  # also removes it from the epoll set
        if time.perf_counter() < measure_to:
            start()

    if delay > 0:
        time.sleep(delay)
    for _ in range(args.concurrency):
        start()
    next_scan = time.perf_counter() + 0.5
    while live or time.perf_counter() < measure_to:
        if not live:  # everything failed to connect: retry, gently
            time.sleep(0.01)
            for _ in range(args.concurrency):
                start()
            continue
        for fd, _events in ep.poll(0.1):
            sock, t0, sending = live[fd]
            try:
                if sending:
                    sock.send(header)
                    live[fd] = (sock, t0, False)
                    ep.modify(fd, select.EPOLLIN)
                    continue
                # The banner is tiny and sent in one write: one recv gets it.
                data = sock.recv(256)
            except OSError as exc:
                error(errno.errorcode.get(exc.errno or 0, type(exc).__name__), t0)
                finish(fd)
                continue
            end = time.perf_counter()
            if len(data) < args.banner_len:
                error("short banner" if data else "closed", t0)
            elif t0 >= measure_from and end <= measure_to:
                latencies.append(int((end - t0) * 1e6))
            finish(fd)
        now = time.perf_counter()
        if now >= next_scan:
            next_scan = now + 0.5
            for fd in [fd for fd, (_, t0, _) in live.items() if now - t0 > args.timeout]:
                error("timeout", live[fd][1])
                finish(fd)
    return {"ok": len(latencies), "errors": errors, "lat_us": latencies}


async def _idle_run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    addr = (args.host, args.port)
    gate = asyncio.Semaphore(args.concurrency)
    socks: list[socket.socket] = []
    errors: dict[str, int] = {}

    async def open_one() -> None:
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(args.timeout):
                    await loop.sock_connect(sock, addr)
                    await loop.sock_sendall(sock, b"p")
                    if await loop.sock_recv(sock, 16) != b"p":
                        raise ConnectionError("no echo")
            except (OSError, TimeoutError) as exc:
                sock.close()
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                return
            socks.append(sock)

    start = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(args.count)))
    emit(
        {
            "established": len(socks),
            "errors": errors,
            "seconds": time.perf_counter() - start,
        }
    )
    # Hold until the orchestrator has measured and closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    for sock in socks:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.clients")
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ("up", "down"):
        p = sub.add_parser(name)
        p.add_argument("--size", type=int, required=True)
    p = sub.add_parser("banner")
    p.add_argument("--start-at", type=float, required=True, help="time.time() to start at")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--banner-len", type=int, default=8)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--proxy-header", action="store_true", help="send PROXY v1 first (direct)")
    p = sub.add_parser("idle")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--timeout", type=float, default=10.0)
    for p in sub.choices.values():
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    raise_nofile()
    if args.mode == "up":
        emit(bulk_up(args.host, args.port, args.size))
    elif args.mode == "down":
        emit(bulk_down(args.host, args.port, args.size))
    elif args.mode == "banner":
        emit(banner(args))
    else:
        import uvloop

        uvloop.run(_idle_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
