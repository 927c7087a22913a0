"""The HTTP proxy's own work per request, in instructions: a number that does not move with
the machine's load (S4's req/s on a shared VM moves ±15 % between identical runs).

    .venv-bench/bin/python -m bench.proxy_instructions            # µs per request (noisy)
    .venv-bench/bin/python -m bench.proxy_instructions --valgrind  # instructions per request

It runs S4's proxy (a location with `proxy_pass` to an upstream with `keepalive`) inside this
process, on a uvloop loop, with fake transports: the client connections "send" the same
request again as soon as they get a response, the upstream connections answer every request
at once with the same 1 KiB response. There are no sockets and no syscalls: what is measured
is pyngx's Python (and the uvloop calls it makes) for one proxied request, the part of S4's
CPU per request that pyngx's code decides. Upstream connections are never opened or closed
here (the fake ones are attached directly); S4 opens about one per ten requests, each
~70k instructions more (measured with valgrind on the real process).

`--valgrind` runs the driver twice under cachegrind (N and N + 10,000 requests) and prints
the difference per request: startup and warm-up cancel out. Stable to about 0.2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import uvloop

from pyngx.core.cycle import load_cycle
from pyngx.core.paths import Paths
from pyngx.core.worker import Worker
from pyngx.http import proxy_run
from pyngx.http.connection import HttpConnection
from pyngx.http.upstream_pool import UpstreamConn

PORT = 19401  # only written in the configuration: nothing listens
REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 17:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n\r\n"
)
RESPONSE = HEAD + b"x" * 1024
CONF = f"""daemon off; worker_processes 1;
error_log logs/error.log error;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000000;
  upstream b {{ server 127.0.0.1:9; keepalive 64; }}
  server {{ listen 127.0.0.1:{PORT};
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


class _Sock:
    family = socket.AF_INET


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, *args: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None:
        pass


class _Run:
    """The counts shared by the fake transports of one measurement."""

    def __init__(self, loop: asyncio.AbstractEventLoop, total: int) -> None:
        self.loop = loop
        self.responses = 0
        self.total = total
        self.done: asyncio.Future[None] = loop.create_future()


class _Client(_Transport):
    def __init__(self, run: list[_Run]) -> None:
        super().__init__()
        self.run = run
        self.proto: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = {"socket": _Sock, "peername": ("127.0.0.1", 40000)}
        return info.get(name, ("127.0.0.1", PORT) if name == "sockname" else default)

    def write(self, data: bytes) -> None:
        run = self.run[0]
        run.responses += 1
        if run.responses < run.total:
            run.loop.call_soon(self.proto.data_received, REQUEST)
        elif run.responses == run.total:
            run.done.set_result(None)

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))


class _Upstream(_Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.proto: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.proto.data_received, RESPONSE)


def measure(total: int, warmup: int, conns: int = 64) -> float:
    """Run `warmup` then `total` requests over `conns` client connections; CPU µs/request."""
    workdir = tempfile.mkdtemp(prefix="pyngx-instr-")
    try:
        os.makedirs(os.path.join(workdir, "logs"))
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF)
        cycle = load_cycle(Paths(workdir + "/", conf))
        worker = Worker(cycle, [], 0, channel=False)  # type: ignore[arg-type]
        loop = worker.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        port = next(p for p in cycle.http.ports if p.listens[0].addr.port == PORT)

        def open_new(ex: Any) -> None:
            # Exchange.open_new without a socket: a fake upstream connection, connected.
            if ex.phase != proxy_run._CONNECTING or ex.conn is not None:
                return
            up = UpstreamConn(loop, ex.peer.conf.name)
            t = _Upstream(loop)
            t.proto = up
            up.connection_made(t)  # type: ignore[arg-type]
            ex._connected(up)

        proxy_run.Exchange.open_new = open_new  # type: ignore[method-assign]
        run = [_Run(loop, warmup)]
        protos = []
        for _ in range(conns):
            c = HttpConnection(worker, port)
            t = _Client(run)
            t.proto = c
            c.connection_made(t)  # type: ignore[arg-type]
            protos.append(c)
        for phase_total in (warmup, total):
            run[0] = _Run(loop, phase_total)
            for c in protos:
                loop.call_soon(c.data_received, REQUEST)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            loop.run_until_complete(run[0].done)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        return cpu * 1e6 / total
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _instructions(total: int, warmup: int) -> int:
    """Instructions of one run of this module under cachegrind."""
    with tempfile.NamedTemporaryFile(prefix="pyngx-cg-") as out:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                f"--cachegrind-out-file={out.name}",
                sys.executable,
                "-m",
                "bench.proxy_instructions",
                "--total",
                str(total),
                "--warmup",
                str(warmup),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    m = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if m is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=5_000)
    ap.add_argument("--valgrind", action="store_true", help="instructions per request")
    ns = ap.parse_args()
    if ns.valgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is not installed (apt-get install valgrind)")
        small = _instructions(3_000, 2_000)
        large = _instructions(13_000, 2_000)
        print(f"{(large - small) / 10_000:,.0f} instructions per proxied request")
        return
    import gc

    gc.freeze()  # as a worker does after its setup
    t = time.perf_counter()
    us = measure(ns.total, ns.warmup)
    wall = (time.perf_counter() - t) * 1e6 / (ns.total + ns.warmup)
    print(f"{us:.2f} µs CPU per proxied request ({wall:.2f} µs wall, warm-up included)")


if __name__ == "__main__":
    main()
