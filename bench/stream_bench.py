"""Stream scenarios through nginx and through pyngx in the same run, alternating.

    python -m bench [--quick] [--only S1,S1r,S2,S3] [--repeats N] [--s3-conns N] ...

For each CPU layout (1 worker pinned to CPU 1 with the load on CPU 0; 2 workers pinned to
CPUs 0 and 1 with the load unpinned), the backends are started, then nginx and pyngx are both
started with the same configuration text on different ports, and every scenario is measured
repeatedly, alternating which proxy goes first, so slow drifts of the machine hit both alike.
A "direct" run (client straight to the backend) is measured too: it is the ceiling the load
generator and backend can reach on this box, and tells when they, not the proxy, are the limit.

Medians are printed as a table and every sample is saved to bench/results/<timestamp>.json.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.procs import (
    Server,
    cpu_seconds,
    free_port,
    pin_tree,
    pss_bytes,
    read_json_line,
    rss_bytes,
    spawn,
    stop,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("S1", "S1r", "S2", "S3")
GIB = 1 << 30
PY = sys.executable
# Ports: one listener per backend in each proxy's configuration.
ROLES = ("sink", "source", "banner", "hold")


@dataclass
class Layout:
    """Where the proxy's workers run and where the load (clients and backends) runs."""

    workers: int
    affinity: str  # worker_cpu_affinity, as written in the configuration
    load_cpus: set[int] | None  # None: unpinned

    @property
    def label(self) -> str:
        return f"{self.workers}w"


def layouts(ncpu: int) -> dict[int, Layout]:
    others = set(range(ncpu)) - {1}
    return {
        # One worker alone on CPU 1; everything else (client, backend) on the other CPU(s).
        1: Layout(1, "10", others),
        # Two workers on CPUs 0 and 1: they compete with the load, which the kernel places.
        2: Layout(2, "01 10", None),
    }


@dataclass
class Settings:
    repeats: int
    s1_bytes: int
    s2_seconds: float
    s2_warmup: float
    s2_procs: int
    s2_concurrency: int
    s3_conns: int
    only: tuple[str, ...]
    workers: tuple[int, ...]
    nginx: str
    proxy_buffer_size: str | None
    out_dir: str
    keep: bool
    samples: list[dict[str, Any]] = field(default_factory=list)


# -- backends ------------------------------------------------------------------------------


class Backends:
    """sink/source/hold helpers (Python) and the banner server (nginx `return`)."""

    def __init__(self, settings: Settings, layout: Layout, workdir: str) -> None:
        self.settings = settings
        self.layout = layout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.banner = Server("nginx", [settings.nginx], os.path.join(workdir, "banner"), 1)

    def start(self) -> None:
        cpus = self.layout.load_cpus
        for role in ("sink", "source", "hold"):
            proc = spawn([PY, "-m", "bench.backend", role], cpus, cwd=os.path.dirname(HERE))
            self.procs[role] = proc
            self.ports[role] = int(read_json_line(proc, 20)["port"])
        port = free_port()
        ncpu = len(cpus) if cpus is not None else (os.cpu_count() or 1)
        self.banner.workers = ncpu
        # `listen ... proxy_protocol`: the banner comes only after a valid PROXY header, which
        # proves the proxies send one, and nginx reads it, so its close() never resets.
        self.banner.write_conf(
            self.banner.header(None, nofile_limit())
            + "stream {\n"
            + f"    server {{ listen 127.0.0.1:{port} proxy_protocol backlog=4096;"
            + ' return "220 ok\\r\\n"; }\n}\n'
        )
        self.banner.start()
        pin_tree(self.banner.pids()[0], cpus)
        self.ports["banner"] = port

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)
        self.banner.stop()


# -- proxies under test ----------------------------------------------------------------------


def nofile_limit() -> int:
    """What `worker_rlimit_nofile` can be: 65536, or the hard limit if that is lower."""
    return min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def proxy_conf(
    server: Server,
    layout: Layout,
    listen: dict[str, int],
    back: dict[str, int],
    buffer_size: str | None,
) -> str:
    lines = [server.header(layout.affinity, nofile_limit()), "stream {"]
    if buffer_size:
        # nginx reads and writes at most this much per syscall (16k by default); pyngx's
        # uvloop reads up to 256 KiB whatever it says, so this mostly changes nginx.
        lines.append(f"    proxy_buffer_size {buffer_size};")
    for role in ROLES:
        extra = " proxy_protocol on;" if role == "banner" else ""
        lines.append(
            f"    server {{ listen 127.0.0.1:{listen[role]};"
            f" proxy_pass 127.0.0.1:{back[role]};{extra} }}"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def make_proxies(
    settings: Settings, layout: Layout, workdir: str, backends: Backends
) -> dict[str, tuple[Server, dict[str, int]]]:
    out = {}
    for name, argv in (("nginx", [settings.nginx]), ("pyngx", [PY, "-m", "pyngx"])):
        server = Server(name, argv, os.path.join(workdir, f"{name}-{layout.label}"), layout.workers)
        ports = {role: free_port() for role in ROLES}
        server.write_conf(
            proxy_conf(server, layout, ports, backends.ports, settings.proxy_buffer_size)
        )
        out[name] = (server, ports)
    return out


# -- measurements ----------------------------------------------------------------------------


def client(args: list[str], cpus: set[int] | None, timeout: float) -> dict[str, Any]:
    proc = spawn([PY, "-m", "bench.clients", *args], cpus, cwd=os.path.dirname(HERE))
    try:
        return read_json_line(proc, timeout)
    finally:
        stop(proc, timeout=5)


def measure_bulk(
    mode: str, port: int, settings: Settings, layout: Layout, server: Server | None
) -> dict[str, Any]:
    pids = server.pids() if server else []
    cpu0 = cpu_seconds(pids)
    res = client(
        [mode, "--port", str(port), "--size", str(settings.s1_bytes)], layout.load_cpus, 300
    )
    cpu = cpu_seconds(pids) - cpu0
    gb = res["bytes"] / 1e9
    out = {"GB/s": gb / res["seconds"], "seconds": res["seconds"]}
    if server:
        out["CPU-s/GB"] = cpu / gb
    return out


def quantile_ms(sorted_us: list[int], q: float) -> float | None:
    if not sorted_us:
        return None
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))] / 1000


def measure_banner(
    port: int, settings: Settings, layout: Layout, server: Server | None
) -> dict[str, Any]:
    pids = server.pids() if server else []
    start_at = time.time() + 1.0  # enough for the client processes to import uvloop
    args = [
        "banner",
        "--port", str(port),
        "--start-at", repr(start_at),
        "--warmup", str(settings.s2_warmup),
        "--duration", str(settings.s2_seconds),
        "--concurrency", str(settings.s2_concurrency),
    ]  # fmt: skip
    if server is None:
        args.append("--proxy-header")
    procs = [
        spawn([PY, "-m", "bench.clients", *args], layout.load_cpus, cwd=os.path.dirname(HERE))
        for _ in range(settings.s2_procs)
    ]
    try:
        # CPU of the proxy over exactly the measured window.
        time.sleep(max(0.0, start_at + settings.s2_warmup - time.time()))
        cpu0 = cpu_seconds(pids)
        time.sleep(max(0.0, start_at + settings.s2_warmup + settings.s2_seconds - time.time()))
        cpu = cpu_seconds(pids) - cpu0
        results = [read_json_line(p, 30) for p in procs]
    finally:
        for p in procs:
            stop(p, timeout=5)
    lat = sorted(v for r in results for v in r["lat_us"])
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    out: dict[str, Any] = {
        "conn/s": len(lat) / settings.s2_seconds,
        "p50 ms": quantile_ms(lat, 0.50),
        "p99 ms": quantile_ms(lat, 0.99),
        "errors": errors,
    }
    if server and lat:
        out["CPU-ms/1k conn"] = cpu * 1e6 / len(lat)
    return out


def measure_idle(port: int, settings: Settings, layout: Layout, server: Server) -> dict[str, Any]:
    # A fresh master and workers: what S1/S2 left in their heaps must not count as "before".
    server.stop()
    server.start()
    time.sleep(0.5)
    before = rss_bytes(server.pids())
    pss_before = pss_bytes(server.pids())
    count = settings.s3_conns
    proc = spawn(
        [PY, "-m", "bench.clients", "idle", "--port", str(port), "--count", str(count)],
        layout.load_cpus,
        stdin=subprocess.PIPE,
        cwd=os.path.dirname(HERE),
    )
    try:
        res = read_json_line(proc, 30 + count / 200)
        time.sleep(0.5)  # let the last upstream connects and buffer allocations settle
        after = rss_bytes(server.pids())
        pss_after = pss_bytes(server.pids())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            stop(proc)
    n = res["established"]
    return {
        "RSS before MiB": before / 2**20,
        "RSS after MiB": after / 2**20,
        "bytes/conn": (after - before) / n if n else None,
        "PSS before MiB": pss_before / 2**20,
        "PSS after MiB": pss_after / 2**20,
        "established": n,
        "errors": res["errors"],
        "connect seconds": res["seconds"],
    }


# -- the run ---------------------------------------------------------------------------------


def record(
    settings: Settings, scenario: str, layout: Layout, who: str, rep: int, values: dict[str, Any]
) -> None:
    sample = {"scenario": scenario, "workers": layout.workers, "who": who, "rep": rep, **values}
    settings.samples.append(sample)
    shown = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in values.items()
        if k not in ("seconds",) and v not in ({}, None)
    )
    print(f"  {scenario:<4} {layout.label} rep{rep} {who:<6} {shown}", file=sys.stderr, flush=True)


def run_layout(settings: Settings, layout: Layout, workdir: str) -> None:
    print(
        f"== {layout.workers} worker(s), worker_cpu_affinity {layout.affinity}, load on "
        f"{sorted(layout.load_cpus) if layout.load_cpus else 'any CPU'}",
        file=sys.stderr,
    )
    backends = Backends(settings, layout, workdir)
    proxies: dict[str, tuple[Server, dict[str, int]]] = {}
    try:
        backends.start()
        proxies = make_proxies(settings, layout, workdir, backends)
        for server, _ in proxies.values():
            server.start()
        order = ("nginx", "pyngx")
        for scenario in settings.only:
            for rep in range(settings.repeats):
                # Alternate who goes first, so a drift during the run favours neither.
                names = order if rep % 2 == 0 else order[::-1]
                if scenario in ("S1", "S1r", "S2"):
                    role = {"S1": "sink", "S1r": "source", "S2": "banner"}[scenario]
                    run_one(settings, scenario, layout, rep, None, backends.ports[role])
                for name in names:
                    server, ports = proxies[name]
                    role = {"S1": "sink", "S1r": "source", "S2": "banner", "S3": "hold"}[scenario]
                    run_one(settings, scenario, layout, rep, server, ports[role])
    finally:
        for server, _ in proxies.values():
            errs = server.error_lines()
            if errs:
                print(
                    f"  {server.name} {layout.label} error log ({len(errs)} lines), e.g.: "
                    f"{errs[-1]}",
                    file=sys.stderr,
                )
            server.stop()
        backends.stop()


def run_one(
    settings: Settings,
    scenario: str,
    layout: Layout,
    rep: int,
    server: Server | None,
    port: int,
) -> None:
    who = server.name if server else "direct"
    measure: Callable[[], dict[str, Any]]
    if scenario == "S1":
        measure = lambda: measure_bulk("up", port, settings, layout, server)  # noqa: E731
    elif scenario == "S1r":
        measure = lambda: measure_bulk("down", port, settings, layout, server)  # noqa: E731
    elif scenario == "S2":
        measure = lambda: measure_banner(port, settings, layout, server)  # noqa: E731
    else:
        assert server is not None
        measure = lambda: measure_idle(port, settings, layout, server)  # noqa: E731
    try:
        values = measure()
    except (OSError, RuntimeError, TimeoutError, ValueError, KeyError) as exc:
        values = {"failed": f"{type(exc).__name__}: {exc}"}
    record(settings, scenario, layout, who, rep, values)


# Metrics shown in the table, per scenario: (name, "hi" if higher is better else "lo").
METRICS = {
    "S1": (("GB/s", "hi"), ("CPU-s/GB", "lo")),
    "S1r": (("GB/s", "hi"), ("CPU-s/GB", "lo")),
    "S2": (("conn/s", "hi"), ("p50 ms", "lo"), ("p99 ms", "lo"), ("CPU-ms/1k conn", "lo")),
    "S3": (
        ("bytes/conn", "lo"),
        ("RSS before MiB", "lo"),
        ("RSS after MiB", "lo"),
        ("PSS before MiB", "lo"),
        ("PSS after MiB", "lo"),
    ),
}


def summarize(settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for scenario in settings.only:
        for workers in settings.workers:
            for metric, better in METRICS[scenario]:
                med: dict[str, float | None] = {}
                for who in ("direct", "nginx", "pyngx"):
                    vals = [
                        s[metric]
                        for s in settings.samples
                        if s["scenario"] == scenario
                        and s["workers"] == workers
                        and s["who"] == who
                        and isinstance(s.get(metric), int | float)
                    ]
                    med[who] = statistics.median(vals) if vals else None
                n, p = med["nginx"], med["pyngx"]
                rows.append(
                    {
                        "scenario": scenario,
                        "workers": workers,
                        "metric": metric,
                        "better": better,
                        "direct": med["direct"],
                        "nginx": n,
                        "pyngx": p,
                        "ratio": (p / n) if n and p is not None else None,
                    }
                )
    return rows


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("scenario", "workers", "metric", "better", "direct", "nginx", "pyngx", "pyngx/nginx")
    body = [
        (
            r["scenario"],
            str(r["workers"]),
            r["metric"],
            "higher" if r["better"] == "hi" else "lower",
            fmt(r["direct"]),
            fmt(r["nginx"]),
            fmt(r["pyngx"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    numeric = {4, 5, 6, 7}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for cells in body:
        print(line(cells))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes (< 2 min)")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: S1,S1r,S2,S3")
    ap.add_argument("--repeats", type=int, help="measurements per proxy (default 5; quick 2)")
    ap.add_argument("--workers", default="1,2", help="layouts to run: 1, 2 or 1,2")
    ap.add_argument("--s1-gib", type=float, help="GiB per S1/S1r transfer (default 2; quick 0.5)")
    ap.add_argument("--s2-seconds", type=float, help="S2 measured seconds (default 5; quick 1.5)")
    ap.add_argument("--s2-procs", type=int, default=2, help="S2 client processes")
    ap.add_argument("--s2-concurrency", type=int, default=32, help="S2 connections per process")
    ap.add_argument("--s3-conns", type=int, help="S3 idle connections (default 10000; quick 2000)")
    ap.add_argument(
        "--nginx",
        default=shutil.which("nginx") or "/usr/sbin/nginx",
        help="nginx binary: the reference and the banner backend (default: %(default)s)",
    )
    ap.add_argument(
        "--proxy-buffer-size", help="add `proxy_buffer_size SIZE;` to both configs (e.g. 256k)"
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="where the JSON goes")
    ap.add_argument("--keep", action="store_true", help="keep the prefixes (configs, logs)")
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    quick = args.quick
    workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
    if not workers or set(workers) - {1, 2}:
        raise SystemExit("--workers takes 1, 2 or 1,2")
    s3 = args.s3_conns if args.s3_conns is not None else (2000 if quick else 10000)
    # One worker holds both sides of every connection: 2 fds each, plus listeners and logs. The
    # hard RLIMIT_NOFILE cannot be raised without CAP_SYS_RESOURCE, so stay under it.
    cap = (nofile_limit() - 64) // 2
    if s3 > cap:
        print(
            f"note: S3 capped at {cap} connections (RLIMIT_NOFILE hard limit {nofile_limit()})",
            file=sys.stderr,
        )
        s3 = cap
    return Settings(
        repeats=args.repeats or (2 if quick else 5),
        s1_bytes=int((args.s1_gib or (0.5 if quick else 2.0)) * GIB),
        s2_seconds=args.s2_seconds or (1.5 if quick else 5.0),
        s2_warmup=0.3 if quick else 0.5,
        s2_procs=args.s2_procs,
        s2_concurrency=args.s2_concurrency,
        s3_conns=s3,
        only=tuple(s for s in SCENARIOS if s in only),
        workers=workers,
        nginx=args.nginx,
        proxy_buffer_size=args.proxy_buffer_size,
        out_dir=args.out,
        keep=args.keep,
    )


@contextmanager
def workdir(keep: bool) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pyngx-bench-")
    try:
        yield path
    finally:
        if keep:
            print(f"prefixes kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    settings = settings_from(parse_args(argv))
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (the layouts pin to CPUs 0 and 1)")
    if not os.path.exists(settings.nginx):
        raise SystemExit(f"nginx not found at {settings.nginx}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every helper
    # SIGTERM ends the run like Ctrl-C does: through the finally blocks that stop our children.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load = os.getloadavg()[0]
    if load > 0.5:
        # A shared machine: other jobs steal CPU from whichever proxy is being measured.
        print(f"note: load average {load:.2f} before starting: expect noise", file=sys.stderr)
    started = time.time()
    all_layouts = layouts(os.cpu_count() or 2)
    try:
        with workdir(settings.keep) as wd:
            for w in settings.workers:
                run_layout(settings, all_layouts[w], wd)
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    rows = summarize(settings)
    print()
    print_table(rows)
    os.makedirs(settings.out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(settings.out_dir, f"{stamp}.json")
    meta = {
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "nginx": subprocess.run(
            [settings.nginx, "-v"], capture_output=True, text=True, check=False
        ).stderr.strip(),
        "settings": {k: v for k, v in vars(settings).items() if k != "samples"},
        "nofile": nofile_limit(),
    }
    with open(path, "w") as f:
        json.dump({"meta": meta, "summary": rows, "samples": settings.samples}, f, indent=1)
    print(f"\nsamples and medians saved to {os.path.relpath(path)} ({meta['seconds']:.0f}s)")
    return 0
