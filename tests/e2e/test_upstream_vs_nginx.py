"""Stream load balancing, pyngx against Debian's nginx: same upstream block, same clients.

Each comparison runs nginx, then pyngx, with one worker (balancer state is per worker) against
the same three backends, which greet with distinct banners ("A\\n", "B\\n", "C\\n") so the
client can tell where it landed. What must agree: the sequence of backends reached, the error
log lines about failing peers (after the `*N ` prefix, ports replaced by names) and the access
log's `$status $upstream_*` values (times reduced to their shape).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import Backend, ServerProcess, client, free_port, read_banner

BackendFactory = Callable[..., Backend]

CLIENT = "127.0.0.23"
# nginx's smooth weighted round robin for weights 5, 1, 1: seven picks per cycle.
SMOOTH_WRR_5_1_1 = ["A", "A", "B", "A", "C", "A", "A"]
LOG_FMT = (
    "$status $upstream_addr|$upstream_bytes_sent|$upstream_bytes_received|"
    "$upstream_connect_time|$upstream_first_byte_time|$upstream_session_time"
)


@dataclass
class Lab:
    """Three live backends A, B, C and any number of dead addresses (nothing listening)."""

    backends: dict[str, Backend]
    dead: dict[str, int] = field(default_factory=dict)

    def addr(self, name: str) -> str:
        if name in self.backends:
            return self.backends[name].address
        if name not in self.dead:
            self.dead[name] = free_port()
        return f"127.0.0.1:{self.dead[name]}"

    def port_names(self) -> dict[int, str]:
        names = {b.port: n for n, b in self.backends.items()}
        names.update({p: n for n, p in self.dead.items()})
        return names

    def normalize(self, text: str) -> str:
        """Ports of known peers become their names, any other port becomes PORT."""
        names = self.port_names()

        def sub(m: re.Match[str]) -> str:
            return "127.0.0.1:" + names.get(int(m.group(1)), "PORT")

        return re.sub(r"127\.0\.0\.1:(\d+)", sub, text)


@pytest.fixture
def lab(backend: BackendFactory) -> Lab:
    return Lab({n: backend(banner=f"{n}\n".encode()) for n in "ABC"})


def upstream_conf(lab: Lab, port: int, servers: str, *, extra: str = "", log: Path | None) -> str:
    """`servers`: upstream block lines, peers written as {A}, {B}, {D1} ..."""
    names = set(re.findall(r"\{(\w+)\}", servers))
    body = servers.format(**{n: lab.addr(n) for n in names})
    access = f"access_log {log} lb;" if log is not None else ""
    return (
        "stream {\n"
        f"  log_format lb '{LOG_FMT}';\n"
        f"  upstream backend {{\n{body}\n  }}\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass backend; {access} {extra} }}\n"
        "}\n"
    )


def visit(port: int, source: str = CLIENT, *, src_port: int = 0) -> str:
    """One connection: the name of the backend that greeted it, "" if closed without data."""
    sock = socket.socket()
    try:
        sock.settimeout(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((source, src_port))
        sock.connect(("127.0.0.1", port))
        return read_banner(sock)
    finally:
        sock.close()


@contextmanager
def holding(port: int) -> Iterator[Callable[[], str]]:
    """open() -> the backend reached by a new connection, kept open until the block ends."""
    socks: list[socket.socket] = []

    def open_one() -> str:
        s = client("127.0.0.1", port, source=CLIENT)
        socks.append(s)
        return read_banner(s)

    try:
        yield open_one
    finally:
        for s in socks:
            s.close()


@dataclass
class Run:
    reached: list[str]
    errors: list[str]  # "[level] message" of error/warn lines, after "*N ", ports named
    access: list[str]  # access log lines, ports named, digits of times zeroed


def _wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


_LOG_LINE = re.compile(r"\[(error|warn|crit|alert|emerg)\] \d+#\d+: \*\d+ (.*)")


def _times_shape(line: str) -> str:
    status_addr, *fields = line.split("|")
    # bytes stay exact; times keep only their structure ("-", ", ", digits as 0)
    shaped = [*fields[:2], *(re.sub(r"\d", "0", f) for f in fields[2:])]
    return "|".join([status_addr, *shaped])


def run(
    factory: ServerFactory,
    lab: Lab,
    tmp_path: Path,
    servers: str,
    scenario: Callable[[int], list[str]],
    *,
    extra: str = "",
) -> Run:
    """Start a server on `servers`, run `scenario(port)`, stop it and collect its logs."""
    port = free_port()
    log = tmp_path / f"access-{port}.log"
    srv: ServerProcess = factory(upstream_conf(lab, port, servers, extra=extra, log=log))
    reached = scenario(port)
    access = _wait_lines(log, len(reached))
    srv.stop()
    errors = [
        f"[{m.group(1)}] {lab.normalize(m.group(2))}"
        for m in map(_LOG_LINE.search, srv.error_log_text().splitlines())
        if m
    ]
    return Run(reached, errors, [_times_shape(lab.normalize(a)) for a in access])


def both(
    pyngx: ServerFactory,
    nginx: ServerFactory,
    lab: Lab,
    tmp_path: Path,
    servers: str,
    scenario: Callable[[int], list[str]],
    *,
    extra: str = "",
) -> tuple[Run, Run]:
    theirs = run(nginx, lab, tmp_path, servers, scenario, extra=extra)
    ours = run(pyngx, lab, tmp_path, servers, scenario, extra=extra)
    return theirs, ours


def sequential(n: int) -> Callable[[int], list[str]]:
    return lambda port: [visit(port) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# methods


@pytest.mark.nginx
def test_weighted_round_robin_sequence(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    servers = "server {A} weight=5; server {B}; server {C};"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, sequential(70))
    assert theirs.reached == SMOOTH_WRR_5_1_1 * 10
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors == []


@pytest.mark.nginx
@pytest.mark.slow
def test_hash_remote_addr_mapping(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    sources = [f"127.0.0.{i}" for i in range(2, 61)]

    def scenario(port: int) -> list[str]:
        return [visit(port, src) for src in sources]

    for method in ("hash $remote_addr;", "hash $remote_addr consistent;"):
        servers = f"{method} server {{A}}; server {{B}} weight=2; server {{C}};"
        theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, scenario)
        assert dict(zip(sources, ours.reached, strict=True)) == dict(
            zip(sources, theirs.reached, strict=True)
        ), method
        assert set(theirs.reached) == {"A", "B", "C"}, method
        # The same client always lands on the same backend.
        again = run(pyngx, lab, tmp_path, servers, scenario)
        assert again.reached == ours.reached, method


@pytest.mark.nginx
@pytest.mark.parametrize("method", ["hash $remote_addr;", "hash $remote_addr consistent;"])
def test_hash_with_a_dead_server(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path, method: str
) -> None:
    """Keys of the dead server are rehashed (or walk the ring) to the same live server."""
    sources = [f"127.0.0.{i}" for i in range(2, 32)]

    def scenario(port: int) -> list[str]:
        return [visit(port, src) for src in sources]

    servers = f"{method} server {{A}}; server {{D1}}; server {{B}}; server {{C}};"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, scenario)
    assert "" not in theirs.reached
    assert any(a.startswith("200 127.0.0.1:D1, ") for a in theirs.access)
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors


@pytest.mark.nginx
def test_hash_remote_port_sequence(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    # The same client ports for both servers (from two source addresses, so that no
    # TIME_WAIT of the first run is in the way of the second).
    ports: list[int] = []
    while len(ports) < 40:  # distinct: a 4-tuple in TIME_WAIT cannot be used again
        p = free_port("127.0.0.31")
        if p not in ports:
            ports.append(p)
    sources = iter(["127.0.0.31", "127.0.0.32"])

    def scenario(port: int) -> list[str]:
        src = next(sources)
        return [visit(port, src, src_port=p) for p in ports]

    servers = "hash $remote_port; server {A}; server {B}; server {C};"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, scenario)
    assert "" not in theirs.reached
    assert ours.reached == theirs.reached
    assert len(set(theirs.reached)) > 1


@pytest.mark.nginx
def test_least_conn_with_held_connections(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    def scenario(port: int) -> list[str]:
        with holding(port) as open_one:
            reached = [open_one() for _ in range(6)]
            with holding(port) as open_more:
                reached += [open_more() for _ in range(4)]
            # Those four are closed: wait until the server has freed their peers.
            _wait_closed(lab, held=6)
            reached += [open_one() for _ in range(5)]
        _wait_closed(lab)
        return reached

    servers = "least_conn; server {A} weight=2; server {B}; server {C};"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, scenario)
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors == []


def _wait_closed(lab: Lab, held: int = 0) -> None:
    """Wait until only `held` connections to the backends are open: the server has freed the
    peers of the others (nginx and pyngx free a peer before closing its connection)."""
    deadline = time.monotonic() + 5
    while True:
        live = sum(not c.closed for b in lab.backends.values() for c in list(b.connections))
        if live <= held:
            return
        assert time.monotonic() < deadline, f"{live} upstream connections still open"
        time.sleep(0.01)


@pytest.mark.nginx
def test_max_conns_with_held_connections(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    def scenario(port: int) -> list[str]:
        with holding(port) as open_one:
            reached = [open_one() for _ in range(6)]
        _wait_closed(lab)
        return reached

    servers = "server {A} max_conns=1; server {B} weight=3 max_conns=2; server {C} max_conns=2;"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, scenario)
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors


# --------------------------------------------------------------------------------------------
# down, backup, failures


@pytest.mark.nginx
@pytest.mark.parametrize(
    "servers",
    [
        "server {A}; server {B} down; server {C} backup;",
        "server {A} down; server {B} backup; server {C} backup;",
        "server {D1}; server {A} down; server {B} backup; server {C} backup;",
        "least_conn; server {D1}; server {D2}; server {B} backup weight=2; server {C} backup;",
        # nginx accepts `backup` before `hash` (the check is in `server`), and uses the backups
        # once the hash and its round robin fallback found no live primary.
        "server {D1}; server {D2}; server {C} backup; hash $remote_addr;",
    ],
    ids=["down", "all-down", "dead-then-backup", "least-conn-backup", "backup-before-hash"],
)
def test_down_and_backup(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path, servers: str
) -> None:
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, sequential(8))
    assert "" not in theirs.reached
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors


@pytest.mark.nginx
def test_dead_primary_is_skipped(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    servers = (
        "server {A} max_fails=1 fail_timeout=10s; server {D1} max_fails=1 fail_timeout=10s;"
        " server {C} max_fails=1 fail_timeout=10s;"
    )
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, sequential(20))
    assert "" not in theirs.reached  # proxy_next_upstream hides the dead peer
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    refused = (
        "[error] connect() failed (111: Connection refused) while connecting to upstream, "
        'client: 127.0.0.23, server: 127.0.0.1:PORT, upstream: "127.0.0.1:D1", '
        "bytes from/to client:0/0, bytes from/to upstream:0/0"
    )
    disabled = (
        "[warn] upstream server temporarily disabled while connecting to upstream, "
        'client: 127.0.0.23, server: 127.0.0.1:PORT, upstream: "127.0.0.1:D1", '
        "bytes from/to client:0/0, bytes from/to upstream:0/0"
    )
    assert theirs.errors == [refused, disabled]
    assert ours.errors == theirs.errors


@pytest.mark.nginx
def test_all_servers_dead(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    servers = "server {D1}; server {D2};"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, sequential(3))
    assert theirs.reached == ["", "", ""]
    assert ours.reached == theirs.reached
    assert [a.split("|")[0] for a in theirs.access] == [
        "502 127.0.0.1:D1, 127.0.0.1:D2",
        "502 backend",
        "502 backend",
    ]
    assert ours.access == theirs.access
    assert any(e.startswith("[error] no live upstreams while connecting") for e in theirs.errors)
    assert ours.errors == theirs.errors


@pytest.mark.nginx
@pytest.mark.parametrize(
    ("extra", "servers"),
    [
        ("proxy_next_upstream off;", "server {D1}; server {A}; server {B};"),
        ("proxy_next_upstream_tries 2;", "server {D1}; server {D2}; server {D3};"),
        ("proxy_next_upstream_tries 2;", "server {D1}; server {D2}; server {A};"),
    ],
    ids=["off", "tries-all-dead", "tries-one-live"],
)
def test_next_upstream_limits(
    pyngx: ServerFactory,
    nginx: ServerFactory,
    lab: Lab,
    tmp_path: Path,
    extra: str,
    servers: str,
) -> None:
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, sequential(5), extra=extra)
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors
    if "off" in extra:
        assert theirs.access[0].startswith("502 127.0.0.1:D1|")
    elif "D3" in servers:
        assert theirs.access[0].startswith("502 127.0.0.1:D1, 127.0.0.1:D2|")


@pytest.mark.nginx
def test_upstream_variables_across_retries(
    pyngx: ServerFactory, nginx: ServerFactory, lab: Lab, tmp_path: Path
) -> None:
    """$upstream_bytes_*, $upstream_*_time: one value per try, as nginx lists them."""

    def scenario(port: int) -> list[str]:
        out = []
        for i in range(4):
            with client("127.0.0.1", port, source=CLIENT) as c:
                name = read_banner(c)
                if name:
                    c.sendall(b"x" * (i + 1))
                    # the backend records it; wait so that the byte counts are deterministic
                    lab.backends[name].connections[-1].wait_for_bytes(i + 1)
                out.append(name)
        return out

    servers = "server {D1}; server {D2}; server {A}; server {B};"
    theirs, ours = both(pyngx, nginx, lab, tmp_path, servers, scenario)
    assert ours.reached == theirs.reached
    assert ours.access == theirs.access
    assert ours.errors == theirs.errors


# --------------------------------------------------------------------------------------------
# the same scenarios against one implementation at a time (`server`: nginx, then pyngx), with
# the results nginx 1.22 gives written down: these run without nginx too (-m "not nginx")

EXPECTED = {
    "weighted": ("server {A} weight=5; server {B}; server {C};", "", SMOOTH_WRR_5_1_1 * 2),
    "down": ("server {A}; server {B} down; server {C} backup;", "", ["A"] * 6),
    "backups": ("server {A} down; server {B} backup; server {C} backup;", "", ["B", "C"] * 3),
    "dead-primary": (
        "server {A}; server {D1}; server {C};",
        "",
        ["A", "C", "C", "A", "C", "A", "C", "A"],
    ),
    "all-dead": ("server {D1}; server {D2};", "", ["", "", ""]),
    "next-upstream-off": (
        "server {D1}; server {A}; server {B};",
        "proxy_next_upstream off;",
        ["", "A", "B", "A", "B"],
    ),
    "backup-before-hash": (
        "server {D1}; server {D2}; server {C} backup; hash $remote_addr;",
        "",
        ["C"] * 4,
    ),
    "tries": (
        "server {D1}; server {D2}; server {A};",
        "proxy_next_upstream_tries 2;",
        ["", "A", "A", "A"],
    ),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_sequence_as_nginx_gives_it(
    server: ServerFactory, lab: Lab, tmp_path: Path, case: str
) -> None:
    servers, extra, expected = EXPECTED[case]
    result = run(server, lab, tmp_path, servers, sequential(len(expected)), extra=extra)
    assert result.reached == expected
