"""allow/deny, limit_req, limit_conn, map/geo/split_clients and stub_status: the same
configurations under Debian's nginx and pyngx, side by side; the answers must be equal.

Clients are told apart by their loopback source address. Values of variables are observed
with `add_header X-Val ... always` on a static file. Rates are chosen so that outcomes are
counts, not timings (1r/m drains nothing measurable during a test).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import NGINX_BIN, ServerProcess, free_port, nginx_available
from tests.http_access_helpers import (
    A,
    B,
    C,
    big_file,
    get,
    slow_download,
    status,
    stub_numbers,
    wait_for,
)

pytestmark = pytest.mark.nginx

Kinds = list[tuple[str, int, ServerProcess]]


def _both(
    pyngx: ServerFactory,
    nginx: ServerFactory,
    tmp_path: Path,
    http: str,
    server: str,
    *,
    workers: int = 1,
) -> Kinds:
    """The same http block under both servers, each on its own port; `{root}` is the site."""
    root = tmp_path / "html"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    made: Kinds = []
    for kind, factory in (("nginx", nginx), ("pyngx", pyngx)):
        port = free_port()
        srv = factory(
            "http {\n"
            f"  access_log {tmp_path}/{kind}-access.log;\n"
            f"{http}\n"
            f"  server {{ listen 127.0.0.1:{port}; server_name localhost; root {root};\n"
            f"{server}\n"
            "  }\n"
            "}\n",
            workers=workers,
        )
        made.append((kind, port, srv))
    return made


def _same(kinds: Kinds, probe: Callable[[int], object]) -> object:
    """Run `probe(port)` against nginx, then pyngx; the results must be equal."""
    results = {kind: probe(port) for kind, port, _ in kinds}
    print(results["nginx"])  # shown with -s, or in the report of a failure
    assert results["pyngx"] == results["nginx"]
    return results["nginx"]


_LOG_HEAD = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: \*\d+ ")
_EXCESS = re.compile(r"excess: (\d+\.\d{3})")


def _excess(m: re.Match[str]) -> str:
    # Rounded: the slowest rate (1r/m) still drains a thousandth every 62.5 ms, and a loaded
    # machine may take that long between two requests under one server and not the other.
    return f"excess: ~{round(float(m.group(1)))}"


def _lines(srv: ServerProcess, port: int, pattern: str) -> list[str]:
    """Error log lines with `pattern`, without time, pid and connection number; the port in
    the Host value is made neutral."""
    out = []
    for line in srv.error_log_text().splitlines():
        if pattern in line:
            m = _LOG_HEAD.match(line)
            assert m, line
            text = _EXCESS.sub(_excess, line[m.end() :].replace(f":{port}", ":PORT"))
            out.append(f"[{m.group(1)}] " + text)
    return out


def _same_lines(kinds: Kinds, pattern: str, n: int) -> list[str]:
    for _, _, srv in kinds:
        srv.wait_for_log(pattern)
    got = {}
    for kind, port, srv in kinds:
        wait_for(lambda s=srv, p=port: len(_lines(s, p, pattern)) >= n, what=f"{n} x {pattern}")
        got[kind] = _lines(srv, port, pattern)
    assert got["pyngx"] == got["nginx"]
    return got["nginx"]


def _val(port: int, path: str, source: str = A, headers: dict[str, str] | None = None) -> str:
    code, h, _ = get(port, path, source=source, headers=headers)
    return f"{code} {h.get('x-val', '-')}"


# -- allow / deny ---------------------------------------------------------------------------


def test_allow_deny_outcomes(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "",
        f"deny {B};\n allow 127.0.0.0/29;\n allow {C};\n deny all;\n"
        " location /open/ { allow all; }\n"
        " location /inherit/ { }\n"
        " location /nets/ { deny 127.0.0.24/31; allow 127.0.0.16/28; deny all; }\n"
        f" location /any/ {{ satisfy any; deny {A}; }}\n"
        f" location /err/ {{ deny {A}; error_page 403 /open/index.html; }}",
    )
    for d in ("open", "inherit", "nets", "any", "err"):
        (tmp_path / "html" / d).mkdir()
        (tmp_path / "html" / d / "index.html").write_text(f"{d}\n")
    paths = ("/", "/open/", "/inherit/", "/nets/", "/any/", "/err/", "/nope")
    sources = (A, B, C, "127.0.0.1", "127.0.0.2")
    _same(kinds, lambda port: [[_val(port, p, s) for p in paths] for s in sources])
    lines = _same_lines(kinds, "access forbidden by rule", 5)
    assert lines[0].startswith("[error] access forbidden by rule, client: ")


# -- map / geo / split_clients -------------------------------------------------------------


def test_map_values(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "more.map").write_text("included  from-file;\n")
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "  map $arg_k $m {\n"
        "    default        dflt;\n"
        "    exact          EXACT;\n"
        "    Mixed          mixed-case;\n"
        "    \\~tilde        escaped;\n"
        "    ~^re(\\d+)$     re-$1;\n"
        "    ~*^CI(?<tail>.*) ci-$tail;\n"
        "    ~^var          var-$arg_v;\n"
        "    empty          '';\n"
        f"    include        {tmp_path}/more.map;\n"
        "  }\n"
        "  map $http_host $h {\n"
        "    hostnames;\n"
        "    default        none;\n"
        "    example.org    exact;\n"
        "    *.example.com  wild;\n"
        "    .example.net   dot;\n"
        "    www.example.*  tail;\n"
        "    ~^(?<first>[^.]+)\\.re\\.  re-$first;\n"
        "  }\n"
        "  map $arg_k $nodefault { a A; }\n"
        "  map $m $chained { EXACT chained-exact; default chained-$m; }",
        'location / { add_header X-Val "$m|$h|$nodefault|$chained" always; }',
    )
    keys = [
        "exact", "EXACT", "mixed", "~tilde", "re12", "re", "ciXYZ", "CIabc", "var", "empty",
        "included", "a", "", "nothing",
    ]  # fmt: skip
    hosts = [
        "example.org", "EXAMPLE.ORG", "example.org.", "a.example.com", "a.b.example.com",
        "example.com", "example.net", "x.example.net", "www.example.io", "one.re.x", "other",
    ]  # fmt: skip

    def probe(port: int) -> list[str]:
        out = [_val(port, f"/?k={k}&v=V") for k in keys]
        out += [_val(port, "/", headers={"Host": h}) for h in hosts]
        return out

    _same(kinds, probe)


def test_map_cached_per_request_unless_volatile(
    pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path
) -> None:
    (tmp_path / "html" / "b").mkdir(parents=True)
    (tmp_path / "html" / "b" / "index.html").write_text("b\n")
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "  map $uri $m { default d; /a A; /b/ B; /b/index.html BI; }\n"
        "  map $uri $v { volatile; default d; /a A; /b/ B; /b/index.html BI; }\n"
        '  limit_req_zone "$m$v" zone=one:1m rate=100r/s;',
        # $m and $v are first evaluated for the limit_req key in /a, before the redirect.
        "location /a { limit_req zone=one burst=5; error_page 404 = /b/; }\n"
        ' location /b/ { add_header X-Val "$m $v" always; }',
    )
    assert _same(kinds, lambda port: _val(port, "/a")) == "200 A BI"


def test_geo_values(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "  geo $arg_ip $cidr {\n"
        "    default        dflt;\n"
        "    10.0.0.0/8     ten;\n"
        "    10.1.0.0/16    ten-one;\n"
        "    10.1.2.3       host;\n"
        "    192.168.0.0/16 private;\n"
        "    delete         192.168.0.0/16;\n"
        "    2001:db8::/32  v6;\n"
        "    255.255.255.255 none;\n"
        "  }\n"
        "  geo $arg_ip $rng {\n"
        "    ranges;\n"
        "    default              dflt;\n"
        "    10.0.0.0-10.0.255.255 big;\n"
        "    10.0.1.0-10.0.1.255  inner;\n"
        "    10.0.0.5-10.0.0.5    one;\n"
        "    172.16.0.0-172.31.255.255 private;\n"
        "  }\n"
        "  geo $client {\n"
        "    default   other;\n"
        f"    {A}  a;\n"
        "    127.0.0.0/8 loop;\n"
        "  }\n"
        "  geo $fwd {\n"
        f"    proxy {A};\n"
        "    default   other;\n"
        "    10.0.0.0/8 ten;\n"
        "    192.168.1.1 trusted-too;\n"
        f"    {A}  the-proxy;\n"
        "  }\n"
        "  geo $fwdr {\n"
        f"    proxy {A};\n"
        "    proxy 192.168.1.0/24;\n"
        "    proxy_recursive;\n"
        "    default   other;\n"
        "    10.0.0.0/8 ten;\n"
        "    192.168.1.0/24 inner-proxy;\n"
        f"    {A}  the-proxy;\n"
        "  }",
        'location / { add_header X-Val "$cidr|$rng|$client|$fwd|$fwdr" always; }',
    )
    ips = [
        "10.0.0.1", "10.1.9.9", "10.1.2.3", "10.0.0.5", "10.0.1.7", "192.168.5.5",
        "2001:db8::1", "::ffff:10.1.2.3", "172.20.1.1", "8.8.8.8", "junk", "",
        "255.255.255.255",
    ]  # fmt: skip
    xffs = [
        "10.1.1.1", "1.2.3.4, 10.2.2.2", "10.3.3.3, 192.168.1.1", "10.3.3.3,192.168.1.9",
        "junk", "10.4.4.4:8080", "[2001:db8::5]:80", " 10.5.5.5 ,, ",
    ]  # fmt: skip

    def probe(port: int) -> list[str]:
        out = [_val(port, f"/?ip={ip}") for ip in ips]
        out += [_val(port, "/", source=s) for s in (A, B)]
        out += [
            _val(port, "/", source=s, headers={"X-Forwarded-For": x}) for s in (A, B) for x in xffs
        ]
        return out

    _same(kinds, probe)


def test_split_clients_values(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        '  split_clients "salt${arg_k}" $part { 10% ten; 33.5% big; 0.5% tiny; * rest; }\n'
        "  split_clients $remote_addr $byip { 50% first; 50% second; }",
        'location / { add_header X-Val "$part $byip" always; }',
    )

    def probe(port: int) -> list[str]:
        return [_val(port, f"/?k={i}", source=(A, B, C)[i % 3]) for i in range(120)]

    values = _same(kinds, probe)
    assert len({v.split()[1] for v in values}) == 4  # type: ignore[attr-defined]


# -- limit_req ------------------------------------------------------------------------------

ZONE_1M = "  limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;"


def test_limit_req_burst_counts(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        ZONE_1M,
        "add_header X-Val $limit_req_status always;\n"
        " location /nodelay/ { limit_req zone=one burst=3 nodelay; alias {root}/; }\n"
        " location /status/ { limit_req zone=one; limit_req_status 429;"
        " limit_req_log_level warn; alias {root}/; }".replace("{root}", str(tmp_path / "html")),
    )

    def probe(port: int) -> list[str]:
        out = [_val(port, "/nodelay/", source=A) for _ in range(7)]
        out += [_val(port, "/nodelay/", source=B) for _ in range(2)]
        out += [_val(port, "/status/", source=C) for _ in range(3)]
        return out

    _same(kinds, probe)
    lines = _same_lines(kinds, "limiting requests", 5)
    assert lines[0].startswith('[error] limiting requests, excess: ~4 by zone "one", client:')
    assert lines[-1].startswith('[warn] limiting requests, excess: ~1 by zone "one"')


def test_limit_req_sequential_delays_and_dry_run(
    pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path
) -> None:
    root = tmp_path / "html"
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "  limit_req_zone $binary_remote_addr zone=fast:1m rate=2r/s;\n" + ZONE_1M,
        "add_header X-Val $limit_req_status always;\n"
        f" location /delay/ {{ limit_req zone=fast burst=3; alias {root}/; }}\n"
        f" location /dry/ {{ limit_req zone=one burst=1; limit_req_dry_run on; alias {root}/; }}\n"
        f" location /both/ {{ limit_req zone=one burst=1 nodelay; limit_req zone=fast;"
        f" alias {root}/; }}",
    )
    # Sequential requests each wait for the one before: the 500 ms of delay at 2r/s brings
    # the bucket back down by about what the next request adds, so each is delayed again.
    _same(kinds, lambda port: [_val(port, "/delay/", source=B) for _ in range(3)])
    _same(kinds, lambda port: [_val(port, "/dry/", source=A) for _ in range(4)])
    _same(kinds, lambda port: [_val(port, "/both/", source=C) for _ in range(3)])
    _same_lines(kinds, "limiting requests, dry run", 2)


# -- limit_conn -----------------------------------------------------------------------------


def test_limit_conn(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "  limit_conn_zone $binary_remote_addr zone=c:1m;\n"
        "  limit_conn_zone $arg_none zone=nokey:1m;",
        "limit_conn c 1;\n limit_conn nokey 1;\n add_header X-Val $limit_conn_status always;\n"
        " location /dry/ { limit_conn c 1; limit_conn_dry_run on; limit_conn_status 429;"
        f" alias {tmp_path}/html/; }}\n"
        f" location /st/ {{ limit_conn c 1; limit_conn_status 429; alias {tmp_path}/html/; }}",
    )
    big_file(tmp_path / "html")

    def probe(port: int) -> list[str]:
        slow = slow_download(port, "/big.bin", source=A)
        try:
            out = [_val(port, p, source=A) for p in ("/", "/dry/", "/st/")]
            out.append(_val(port, "/", source=B))
        finally:
            slow.close()
        wait_for(lambda: status(port, "/", source=A) == 200, what="count released")
        out.append(_val(port, "/", source=A))
        return out

    assert _same(kinds, probe) == [
        "503 REJECTED",
        "200 REJECTED_DRY_RUN",
        "429 REJECTED",
        "200 PASSED",
        "200 PASSED",
    ]
    _same_lines(kinds, "limiting connections", 3)


# -- stub_status ----------------------------------------------------------------------------


def test_stub_status_numbers(pyngx: ServerFactory, nginx: ServerFactory, tmp_path: Path) -> None:
    kinds = _both(
        pyngx,
        nginx,
        tmp_path,
        "",
        "location = /status { stub_status; }\n"
        " location /vars/ { alias "
        f"{tmp_path}/html/; add_header X-Val"
        ' "$connections_active $connections_reading $connections_writing $connections_waiting"'
        " always; }",
    )

    def page(port: int) -> dict[str, int]:
        code, headers, body = get(port, "/status")
        assert (code, headers["content-type"]) == (200, "text/plain")
        return stub_numbers(body.decode())

    def probe(port: int) -> list[object]:
        keep = socket.create_connection(("127.0.0.1", port), timeout=5)
        for _ in range(3):
            keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"hello\n"):
                data += keep.recv(4096)
        status(port)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        half = socket.create_connection(("127.0.0.1", port), timeout=5)
        half.sendall(b"GET / HTTP/1.1\r\nHost:")
        try:
            # Each look is a connection and a request of its own: count them.
            pages: list[dict[str, int]] = []

            def settled() -> bool:
                pages.append(page(port))
                return pages[-1]["reading"] == 1 and pages[-1]["waiting"] == 2

            wait_for(settled, what="idle and half connections seen")
            first = dict(pages[-1])
            first["accepts"] -= len(pages)
            first["handled"] -= len(pages)
            first["requests"] -= len(pages)
            vars_ = _val(port, "/vars/")
        finally:
            for s in (keep, idle, half):
                s.close()
        wait_for(lambda: page(port)["active"] == 1, what="connections closed")
        last = page(port)  # how many pages the wait took is up to the server's speed
        states = (last["active"], last["reading"], last["writing"], last["waiting"])
        invariants = (last["accepts"] == last["handled"], last["requests"] - last["accepts"])
        code, headers, body = get(port, "/status", method="HEAD")
        return [first, vars_, states, invariants, code, "content-length" in headers, body]

    got = _same(kinds, probe)
    assert got[0] == {  # type: ignore[index]
        "active": 4,  # keep, idle, half and the page's own
        "accepts": 4,  # without the pages
        "handled": 4,
        "requests": 5,  # 3 on keep, 1, half's
        "reading": 1,
        "writing": 1,
        "waiting": 2,
    }
    assert _same(kinds, lambda port: status(port, "/status", method="POST")) == 405


# -- configuration errors -------------------------------------------------------------------

CONFIG_ERRORS = {
    "sync is commercial": "limit_req_zone $uri zone=a:1m rate=1r/s sync;",
    "rate 0": "limit_req_zone $uri zone=a:1m rate=0r/s;",
    "rate per hour": "limit_req_zone $uri zone=a:1m rate=1r/h;",
    "zone without size": "limit_req_zone $uri zone=a rate=1r/s;",
    "zone too small": "limit_req_zone $uri zone=a:1k rate=1r/s;",
    "zone rebound": "limit_req_zone $uri zone=a:1m rate=1r/s;\nlimit_req_zone $args zone=a:1m"
    " rate=1r/s;",
    "zone of another module": "limit_req_zone $uri zone=a:1m rate=1r/s;\n"
    "limit_conn_zone $uri zone=a:1m;",
    "burst 0": "limit_req_zone $uri zone=a:1m rate=1r/s;\nserver { limit_req zone=a burst=0; }",
    "bad delay": "limit_req_zone $uri zone=a:1m rate=1r/s;\nserver { limit_req zone=a delay=x; }",
    "limit_req without zone": "server {\nlimit_req burst=1; }",
    "limit_req duplicate": "limit_req_zone $uri zone=a:1m rate=1r/s;\nserver {\n"
    "limit_req zone=a;\nlimit_req zone=a; }",
    "undefined zone": "server { limit_req zone=b; }",
    "status out of range": "server {\nlimit_req_status 600; }",
    "status not a number": "server {\nlimit_conn_status abc; }",
    "log level": "limit_req_log_level crit;",
    "dry run flag": "limit_conn_dry_run maybe;",
    "limit_conn 0": "limit_conn_zone $uri zone=a:1m;\nserver { limit_conn a 0; }",
    "satisfy value": "satisfy some;",
    "deny network": "server {\ndeny 1.2.3.4/33; }",
    "stub_status in http": "stub_status;",
    "stub_status arguments": "server { location / {\nstub_status on off; } }",
    "map duplicate builtin": "map $uri $uri { default 1; }",
    "map duplicate module variable": "map $uri $limit_req_status { default 1; }",
    "geo proxy network": "geo $g {\nproxy 1.2.3.4/33; }",
    "geo volatile": "geo $g {\nvolatile; }",
    "geo ranges late": "geo $g {\ndefault a;\nranges; }",
}

_EMERG = re.compile(r"\[emerg\] \d+#\d+: (.*)$")


def _emerg(stderr: str) -> str:
    for line in stderr.splitlines():
        m = _EMERG.search(line)
        if m:
            return m.group(1)
    return f"<no [emerg] line in {stderr!r}>"


@pytest.mark.skipif(not nginx_available(), reason="Debian's nginx is not installed")
@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_errors_as_nginx(case: str, tmp_path: Path) -> None:
    conf = tmp_path / "test.conf"
    conf.write_text("pid logs/t.pid;\nevents { }\nhttp {\n" + CONFIG_ERRORS[case] + "\n}\n")
    for sub in ("n/logs", "p/logs"):
        (tmp_path / sub).mkdir(parents=True)

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    ngx = run([str(NGINX_BIN), "-t", "-p", f"{tmp_path}/n/", "-c", str(conf)])
    pyn = run([sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf)])
    assert ngx.returncode == 1, ngx.stderr
    assert (pyn.returncode, _emerg(pyn.stderr)) == (1, _emerg(ngx.stderr))


def test_config_accepted_as_nginx(tmp_path: Path) -> None:
    """Duplicate map names and the warnings of low address bits are as nginx's."""
    if not nginx_available():
        pytest.skip("Debian's nginx is not installed")
    conf = tmp_path / "test.conf"
    conf.write_text(
        "pid logs/t.pid;\nevents { }\nhttp {\n"
        "map $uri $a { default 1; }\nmap $args $a { default 2; }\n"
        "geo $a { default 3; }\n"
        "server {\ndeny 10.1.2.3/8; }\n}\n"
    )
    for sub in ("n/logs", "p/logs"):
        (tmp_path / sub).mkdir(parents=True)
    ngx = subprocess.run(
        [str(NGINX_BIN), "-t", "-p", f"{tmp_path}/n/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    pyn = subprocess.run(
        [sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ngx.returncode == pyn.returncode == 0, (ngx.stderr, pyn.stderr)

    def warns(text: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in text.splitlines() if "[warn]" in line]

    assert warns(pyn.stderr) == warns(ngx.stderr)
