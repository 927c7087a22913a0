"""HTTP scenarios (S4–S7) through nginx and pyngx, alternating; and `python -m bench` itself.

    python -m bench [--quick] [--only S4,S5,S6,S7] [--http-seconds N] [--http-conns N] ...

- S4: reverse proxy to an upstream with `keepalive 32` (proxy_http_version 1.1), 1 KiB body.
- S5: proxy_cache hits, 1 KiB and 100 KiB bodies, the cache warmed before measuring.
- S6: static files, 1 KiB and 100 KiB, served by the proxy itself.
- S7: `return 200 "ok"`: the HTTP server path alone (parse, find location, respond).

The load is wrk (`-c 64`, `--latency`): requests/s, p50 and p99 as wrk prints them, and the
proxy's CPU per request (utime + stime of master and workers over the run, /proc). The upstream
of S4/S5 (the "origin") is a third process, Debian's nginx answering from memory (`return`) or
from a static file, the same for both proxies, so only the proxy differs; "direct" is wrk
straight at the origin: the ceiling of the load generator and origin on this box.

Every scenario gets its own pair of servers (own prefixes, own configuration), started for it
and stopped after it, so a directive pyngx does not know yet (proxy_cache while it is being
written) makes that scenario "n/a (pyngx: <its error>)" and the run goes on. Each case is also
checked before it is measured (status 200 and the exact body; for S5, that a repeated request
no longer reaches the origin): a proxy answering fast with the wrong thing is n/a, not a number.

The stream scenarios S1–S3 (bench/stream_bench.py) share the layouts, the settings, the table
and the JSON file: `main` here drives both, handing S1–S3 to stream_bench unchanged.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench import stream_bench
from bench.procs import Server, StartError, cpu_seconds, free_port, pin_tree, spawn, stop
from bench.stream_bench import Layout, Settings, nofile_limit, record

HTTP_SCENARIOS = ("S4", "S5", "S6", "S7")
KIB = 1024
# Printable and not compressible by accident; the same bytes for `return` and for the files.
BODY_1K = b"0123456789abcdef" * 64
BODY_100K = BODY_1K * 100
PROXIES = ("nginx", "pyngx")


@dataclass(frozen=True)
class Case:
    """One measured URL of a scenario: what the table calls it and the exact body expected."""

    label: str
    path: str
    body: bytes
    direct: bool  # also measured straight against the origin (the ceiling)


CASES: dict[str, tuple[Case, ...]] = {
    "S4": (Case("S4", "/1k", BODY_1K, True),),
    "S5": (Case("S5 1k", "/1k", BODY_1K, True), Case("S5 100k", "/100k", BODY_100K, True)),
    "S6": (Case("S6 1k", "/1k", BODY_1K, False), Case("S6 100k", "/100k", BODY_100K, False)),
    "S7": (Case("S7", "/ok", b"ok", False),),
}

_LATENCY = (("p50 ms", "lo"), ("p99 ms", "lo"), ("CPU-us/req", "lo"))
METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "S4": (("req/s", "hi"), *_LATENCY),
    # The origin's request rate during the measurement: 0 when every response is a cache hit.
    "S5": (("req/s", "hi"), *_LATENCY, ("origin req/s", "lo")),
    "S6": (("req/s", "hi"), *_LATENCY),
    "S7": (("req/s", "hi"), *_LATENCY),
}


@dataclass
class HttpSettings:
    only: tuple[str, ...]
    seconds: int  # wrk -d: whole seconds only
    warmup: int
    conns: int
    threads: int | None  # None: one per CPU the load may use
    wrk: str
    # (case label, workers, who) → why it was not measured.
    unavailable: dict[tuple[str, int, str], str] = field(default_factory=dict)


# -- configurations --------------------------------------------------------------------------


def nginx_temp_paths(prefix: str) -> list[str]:
    """Debian builds nginx with its temp paths in /var/lib/nginx, which nginx creates (and
    chowns, as root) at startup even when unused: keep it inside our prefix. nginx-only lines:
    they place files, they do not change what is measured."""
    return [
        f"    {kind}_temp_path {prefix}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ]


def write_html(root: str) -> str:
    html = os.path.join(root, "html")
    os.makedirs(html, exist_ok=True)
    for name, body in (("1k", BODY_1K), ("100k", BODY_100K)):
        with open(os.path.join(html, name), "wb") as f:
            f.write(body)
    return html


class Origin:
    """The upstream of S4 and S5: Debian's nginx, keepalive, nothing logged but on `logged_port`
    (S5's upstream), whose access log counts the requests that missed the proxies' caches."""

    def __init__(self, nginx: str, layout: Layout, workdir: str, html: str) -> None:
        ncpu = len(layout.load_cpus) if layout.load_cpus else (os.cpu_count() or 1)
        self.layout = layout
        self.server = Server(
            "origin", [nginx], os.path.join(workdir, f"origin-{layout.label}"), ncpu
        )
        self.html = html
        self.port = free_port()
        self.logged_port = free_port()
        self.log = os.path.join(self.server.prefix, "logs", "s5-origin.log")

    def start(self) -> None:
        s = self.server
        locations = f'location = /1k {{ return 200 "{BODY_1K.decode()}"; }}'
        s.write_conf(
            "\n".join(
                [
                    s.header(None, nofile_limit()),
                    "http {",
                    *nginx_temp_paths(s.prefix),
                    "    access_log off;",
                    # The proxies' pooled connections should not be closed under them every
                    # 1000 requests: the origin is scenery, its reconnects are not measured.
                    "    keepalive_requests 1000000;",
                    f"    server {{ listen 127.0.0.1:{self.port} backlog=4096; root {self.html};",
                    f"        {locations} }}",
                    f"    server {{ listen 127.0.0.1:{self.logged_port}; root {self.html};",
                    f"        access_log {self.log}; {locations} }}",
                    "}",
                    "",
                ]
            )
        )
        s.start()
        pin_tree(s.pids()[0], self.layout.load_cpus)

    def logged(self) -> int:
        try:
            with open(self.log, "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0

    def stop(self) -> None:
        self.server.stop()


def http_conf(
    scenario: str, server: Server, layout: Layout, port: int, origin: Origin | None, html: str
) -> str:
    """The same text for nginx and pyngx (but for ports, paths and nginx's temp paths)."""
    lines = [server.header(layout.affinity, nofile_limit()), "http {"]
    if server.name == "nginx":
        lines += nginx_temp_paths(server.prefix)
    lines.append("    access_log off;")
    proxy = 'proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";'
    listen = f"listen 127.0.0.1:{port};"
    if scenario == "S4":
        assert origin is not None
        lines += [
            f"    upstream b {{ server 127.0.0.1:{origin.port}; keepalive 32; }}",
            f"    server {{ {listen} location / {{ {proxy} }} }}",
        ]
    elif scenario == "S5":
        assert origin is not None
        lines += [
            f"    proxy_cache_path {server.prefix}/cache keys_zone=c:10m;",
            f"    upstream b {{ server 127.0.0.1:{origin.logged_port}; keepalive 32; }}",
            f"    server {{ {listen} location / {{ {proxy}",
            "        proxy_cache c; proxy_cache_valid 200 1h; } }",
        ]
    elif scenario == "S6":
        lines.append(f"    server {{ {listen} root {html}; }}")
    else:
        lines.append(f'    server {{ {listen} location / {{ return 200 "ok"; }} }}')
    lines += ["}", ""]
    return "\n".join(lines)


# -- wrk ---------------------------------------------------------------------------------------

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.M)
_PCT = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_SOCK = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk 4.x's report with --latency → req/s, p50/p75/p90/p99 in ms, request count, errors."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output: {text[-300:]!r}")
    out: dict[str, Any] = {"req/s": float(rps.group(1)), "requests": int(total.group(1))}
    for pct, value, unit in _PCT.findall(text):
        out[f"p{pct} ms"] = float(value) * _UNIT_MS[unit]
    errors: dict[str, int] = {}
    sock = _SOCK.search(text)
    if sock:
        for name, n in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            if int(n):
                errors[name] = int(n)
    non2xx = _NON2XX.search(text)
    if non2xx:
        errors["non-2xx/3xx"] = int(non2xx.group(1))
    out["errors"] = errors
    return out


def wrk_threads(hs: HttpSettings, layout: Layout) -> int:
    n = hs.threads or (len(layout.load_cpus) if layout.load_cpus else (os.cpu_count() or 1))
    return max(1, min(n, hs.conns))


def run_wrk(url: str, seconds: int, hs: HttpSettings, layout: Layout) -> dict[str, Any]:
    cmd = [hs.wrk, "-t", str(wrk_threads(hs, layout)), "-c", str(hs.conns)]
    cmd += ["-d", f"{seconds}s", "--timeout", "5s", "--latency", url]
    proc = spawn(cmd, layout.load_cpus, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        stop(proc, timeout=5)
        raise TimeoutError(f"wrk did not finish within {seconds + 30}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {text[-300:]!r}")
    return parse_wrk(text)


def measure(
    port: int,
    case: Case,
    hs: HttpSettings,
    layout: Layout,
    server: Server | None,
    origin: Origin | None,
) -> dict[str, Any]:
    """One measured wrk run; `origin` given: count the requests that reached it meanwhile."""
    pids = server.pids() if server else []
    logged0 = origin.logged() if origin else 0
    cpu0 = cpu_seconds(pids)
    res = run_wrk(f"http://127.0.0.1:{port}{case.path}", hs.seconds, hs, layout)
    cpu = cpu_seconds(pids) - cpu0
    n = res["requests"]
    bad = sum(res["errors"].values())
    if not n or bad > 0.01 * n:
        # Errors answered fast are no throughput: keep the sample out of the medians.
        return {"failed": f"{bad} errors in {n} requests", "errors": res["errors"]}
    out = {k: res[k] for k in ("req/s", "p50 ms", "p99 ms") if k in res}
    if server:
        out["CPU-us/req"] = cpu * 1e6 / n
    if origin:
        time.sleep(0.1)  # the origin logs after it sent the response: let the last lines land
        out["origin req/s"] = (origin.logged() - logged0) / hs.seconds
    out["errors"] = res["errors"]
    out["load1"] = os.getloadavg()[0]
    return out


# -- checks before measuring -----------------------------------------------------------------


def fetch(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check(port: int, case: Case, origin: Origin | None) -> str | None:
    """None when the server answers `case` right (and, with `origin`, from its cache); else
    what is wrong, for the n/a note."""
    try:
        for _ in range(3 if origin else 1):  # a cache is filled by the first one
            status, body = fetch(port, case.path)
            if status != 200 or body != case.body:
                return (
                    f"GET {case.path} answered {status} with {len(body)} bytes,"
                    f" expected 200 with {len(case.body)}"
                )
        if origin:
            time.sleep(0.1)
            before = origin.logged()
            fetch(port, case.path)
            time.sleep(0.1)
            if origin.logged() != before:
                return f"GET {case.path} is not cached: a repeated request reached the upstream"
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {case.path}: {type(exc).__name__}: {exc}"
    return None


# -- the run -----------------------------------------------------------------------------------


def mark_unavailable(
    settings: Settings, hs: HttpSettings, label: str, layout: Layout, who: str, reason: str
) -> None:
    hs.unavailable[(label, layout.workers, who)] = reason
    settings.samples.append(
        {"scenario": label, "workers": layout.workers, "who": who, "unavailable": reason}
    )
    print(f"  {label:<7} {layout.label} {who}: n/a ({reason})", file=sys.stderr, flush=True)


def run_http_layout(settings: Settings, hs: HttpSettings, layout: Layout, workdir: str) -> None:
    print(
        f"== HTTP, {layout.workers} worker(s), worker_cpu_affinity {layout.affinity}, load on "
        f"{sorted(layout.load_cpus) if layout.load_cpus else 'any CPU'}, wrk -t"
        f"{wrk_threads(hs, layout)} -c{hs.conns} -d{hs.seconds}s",
        file=sys.stderr,
    )
    html = os.path.join(workdir, "html")
    origin = None
    try:
        if {"S4", "S5"} & set(hs.only):
            origin = Origin(settings.nginx, layout, workdir, html)
            origin.start()
        for scenario in hs.only:
            run_scenario(settings, hs, layout, workdir, scenario, origin, html)
    finally:
        if origin is not None:
            origin.stop()


def run_scenario(
    settings: Settings,
    hs: HttpSettings,
    layout: Layout,
    workdir: str,
    scenario: str,
    origin: Origin | None,
    html: str,
) -> None:
    servers: dict[str, tuple[Server, int]] = {}
    for name, argv in (("nginx", [settings.nginx]), ("pyngx", [stream_bench.PY, "-m", "pyngx"])):
        prefix = os.path.join(workdir, f"{name}-{scenario}-{layout.label}")
        server = Server(name, argv, prefix, layout.workers)
        port = free_port()
        server.write_conf(http_conf(scenario, server, layout, port, origin, html))
        servers[name] = (server, port)
    cache_origin = origin if scenario == "S5" else None
    try:
        live: dict[str, tuple[Server, int]] = {}
        for name, (server, port) in servers.items():
            try:
                server.start()
                live[name] = (server, port)
            except (StartError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, StartError) else str(exc)
                for case in CASES[scenario]:
                    mark_unavailable(settings, hs, case.label, layout, name, reason)
        for case in CASES[scenario]:
            ready: dict[str, tuple[Server, int]] = {}
            for name, (server, port) in live.items():
                problem = check(port, case, cache_origin)
                if problem is None:
                    # Warm-up: caches, pools and the first accept()s are not measured.
                    try:
                        run_wrk(f"http://127.0.0.1:{port}{case.path}", hs.warmup, hs, layout)
                    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                        problem = f"warm-up: {exc}"
                if problem is None:
                    ready[name] = (server, port)
                else:
                    mark_unavailable(settings, hs, case.label, layout, name, problem)
            if case.direct and origin is not None and check(origin.port, case, None) is not None:
                raise RuntimeError(f"the origin does not answer {case.path} right")
            for rep in range(settings.repeats):
                # Alternate who goes first, so a drift during the run favours neither.
                names = PROXIES if rep % 2 == 0 else PROXIES[::-1]
                if case.direct and origin is not None:
                    run_one(settings, hs, case, layout, rep, None, origin.port, None)
                for name in names:
                    if name in ready:
                        server, port = ready[name]
                        run_one(settings, hs, case, layout, rep, server, port, cache_origin)
    finally:
        for server, _ in servers.values():
            errs = server.error_lines()
            if errs and server.proc is not None:
                print(
                    f"  {server.name} {scenario} {layout.label} error log ({len(errs)} lines),"
                    f" e.g.: {errs[-1]}",
                    file=sys.stderr,
                )
            server.stop()


def run_one(
    settings: Settings,
    hs: HttpSettings,
    case: Case,
    layout: Layout,
    rep: int,
    server: Server | None,
    port: int,
    origin: Origin | None,
) -> None:
    who = server.name if server else "direct"
    try:
        values = measure(port, case, hs, layout, server, origin)
    except (OSError, RuntimeError, TimeoutError, ValueError, KeyError) as exc:
        values = {"failed": f"{type(exc).__name__}: {exc}"}
    record(settings, case.label, layout, who, rep, values)


# -- the table -------------------------------------------------------------------------------


def summarize(settings: Settings, hs: HttpSettings) -> list[dict[str, Any]]:
    rows = []
    for scenario in hs.only:
        for case in CASES[scenario]:
            for workers in settings.workers:
                for metric, better in METRICS[scenario]:
                    med: dict[str, float | None] = {}
                    for who in ("direct", "nginx", "pyngx"):
                        vals = [
                            s[metric]
                            for s in settings.samples
                            if s["scenario"] == case.label
                            and s["workers"] == workers
                            and s["who"] == who
                            and isinstance(s.get(metric), int | float)
                        ]
                        med[who] = statistics.median(vals) if vals else None
                    if not case.direct or metric in ("CPU-us/req", "origin req/s"):
                        med["direct"] = None
                    n, p = med["nginx"], med["pyngx"]
                    row: dict[str, Any] = {
                        "scenario": case.label,
                        "workers": workers,
                        "metric": metric,
                        "better": better,
                        **med,
                        "ratio": (p / n) if n and p is not None else None,
                    }
                    for who in PROXIES:
                        reason = hs.unavailable.get((case.label, workers, who))
                        if reason is not None:
                            row[who] = "n/a"
                            row["note"] = f"n/a ({who}: {reason})"
                    rows.append(row)
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, str):
        return v
    return stream_bench.fmt(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    """stream_bench's table, but cells may say "n/a"; the reasons are listed under it."""
    head = ("scenario", "workers", "metric", "better", "direct", "nginx", "pyngx", "pyngx/nginx")
    body = [
        (
            r["scenario"],
            str(r["workers"]),
            r["metric"],
            "higher" if r["better"] == "hi" else "lower",
            _cell(r["direct"]),
            _cell(r["nginx"]),
            _cell(r["pyngx"]),
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
    notes: dict[str, list[str]] = {}
    for r in rows:
        if "note" in r:
            where = f"{r['scenario']} ({r['workers']}w)"
            if where not in notes.setdefault(r["note"], []):
                notes[r["note"]].append(where)
    if notes:
        print()
        for note, where in notes.items():
            print(f"{', '.join(where)}: {note}")


# -- `python -m bench`: stream and HTTP scenarios --------------------------------------------


def http_parser() -> argparse.ArgumentParser:
    # allow_abbrev off: an abbreviated stream option must not be taken for one of these.
    hp = argparse.ArgumentParser(
        prog="bench/run",
        add_help=False,
        allow_abbrev=False,
        description="HTTP scenarios S4-S7 (bench/http_bench.py); `--only` takes S1-S7, all by "
        "default. The options of the stream scenarios above apply too (--repeats, --workers, "
        "--nginx, --out, --keep).",
    )
    hp.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    hp.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs")
    hp.add_argument("--only", help="comma-separated: S1,S1r,S2,S3,S4,S5,S6,S7")
    hp.add_argument("--http-seconds", type=int, help="wrk -d per run (default 5; quick 2)")
    hp.add_argument("--http-warmup", type=int, default=1, help="wrk seconds before measuring")
    hp.add_argument("--http-conns", type=int, default=64, help="wrk -c (default %(default)s)")
    hp.add_argument(
        "--http-threads", type=int, help="wrk -t (default: CPUs of the load: 1 pinned, 2 unpinned)"
    )
    hp.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="wrk binary")
    return hp


def parse(argv: list[str] | None) -> tuple[Settings, HttpSettings]:
    hp = http_parser()
    hargs, rest = hp.parse_known_args(sys.argv[1:] if argv is None else argv)
    if hargs.help:
        try:
            stream_bench.parse_args(["--help"])
        except SystemExit:
            pass
        print()
        print(hp.format_help())
        raise SystemExit(0)
    every = (*stream_bench.SCENARIOS, *HTTP_SCENARIOS)
    names = {s.strip() for s in (hargs.only or ",".join(every)).split(",") if s.strip()}
    unknown = names - set(every)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    stream_only = [s for s in stream_bench.SCENARIOS if s in names]
    # stream_bench's own parser and defaults, given only its scenarios (one stands in when
    # there are none; it is then not run).
    sargv = [*rest, "--only", ",".join(stream_only) or "S1"]
    if hargs.quick:
        sargv.append("--quick")
    if "S3" not in stream_only:
        sargv += ["--s3-conns", "0"]  # silences the S3 cap note of a run without S3
    settings = stream_bench.settings_from(stream_bench.parse_args(sargv))
    settings.only = tuple(stream_only)
    hs = HttpSettings(
        only=tuple(s for s in HTTP_SCENARIOS if s in names),
        seconds=hargs.http_seconds or (2 if hargs.quick else 5),
        warmup=hargs.http_warmup,
        conns=hargs.http_conns,
        threads=hargs.http_threads,
        wrk=hargs.wrk,
    )
    return settings, hs


def _interpreter() -> str:
    """The interpreter binary behind this venv (bench/run picks it: see "Which Python")."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def main(argv: list[str] | None = None) -> int:
    settings, hs = parse(argv)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (the layouts pin to CPUs 0 and 1)")
    if not os.path.exists(settings.nginx):
        raise SystemExit(f"nginx not found at {settings.nginx}")
    if hs.only and not os.path.exists(hs.wrk):
        raise SystemExit(f"wrk not found at {hs.wrk} (apt-get install wrk)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every helper
    # SIGTERM ends the run like Ctrl-C does: through the finally blocks that stop our children.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load = os.getloadavg()
    if load[0] > 0.5:
        # A shared machine: other jobs steal CPU from whichever proxy is being measured.
        print(f"note: load average {load[0]:.2f} before starting: expect noise", file=sys.stderr)
    started = time.time()
    print(f"pyngx runs on Python {platform.python_version()} ({_interpreter()})", file=sys.stderr)
    all_layouts = stream_bench.layouts(os.cpu_count() or 2)
    try:
        with stream_bench.workdir(settings.keep) as wd:
            # As root, nginx's workers run as nobody: they must reach the files and the cache
            # directory in here (mkdtemp makes it 0700).
            os.chmod(wd, 0o755)
            write_html(wd)
            for w in settings.workers:
                if settings.only:
                    stream_bench.run_layout(settings, all_layouts[w], wd)
                if hs.only:
                    run_http_layout(settings, hs, all_layouts[w], wd)
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    load_end = os.getloadavg()
    rows = stream_bench.summarize(settings) + summarize(settings, hs)
    print()
    print_table(rows)
    print(
        f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start,"
        f" {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at end"
    )
    os.makedirs(settings.out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(settings.out_dir, f"{stamp}.json")
    meta = {
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load[0],
        "loadavg_start_1_5_15": load,
        "loadavg_end_1_5_15": load_end,
        "python": platform.python_version(),
        "python_executable": _interpreter(),
        "nginx": subprocess.run(
            [settings.nginx, "-v"], capture_output=True, text=True, check=False
        ).stderr.strip(),
        "wrk": subprocess.run(
            [hs.wrk, "--version"], capture_output=True, text=True, check=False
        ).stdout.split("\n")[0]
        if hs.only
        else None,
        "settings": {k: v for k, v in vars(settings).items() if k != "samples"},
        "http_settings": {k: v for k, v in vars(hs).items() if k != "unavailable"},
        "unavailable": [
            {"scenario": c, "workers": w, "who": who, "reason": r}
            for (c, w, who), r in hs.unavailable.items()
        ],
        "nofile": nofile_limit(),
    }
    with open(path, "w") as f:
        json.dump({"meta": meta, "summary": rows, "samples": settings.samples}, f, indent=1)
    print(f"\nsamples and medians saved to {os.path.relpath(path)} ({meta['seconds']:.0f}s)")
    return 0
