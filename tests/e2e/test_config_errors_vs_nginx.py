"""Bad configurations: pyngx must refuse each one with nginx's exact message and location.

Every case is run through Debian's `nginx -t` and `pyngx -t` on the same file; the `[emerg]`
text (message, file and line) and the exit status must match.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(
        not (Path(NGINX).exists() and Path(STREAM_MODULE).exists()),
        reason="Debian's nginx with libnginx-mod-stream is not installed",
    ),
]

HEAD = f"load_module {STREAM_MODULE};\npid logs/test.pid;\n"
EVENTS = "events { }\n"

CASES: dict[str, str] = {
    "listen without port binds port 0 in nginx too": EVENTS
    + "stream { server { listen 127.0.0.1; } }\n",
    "unknown directive": EVENTS + "stream { frobnicate on; }\n",
    "not allowed here": EVENTS + "stream { proxy_pass 127.0.0.1:1; }\n",
    "not allowed in main": EVENTS + "proxy_timeout 1s;\n",
    "invalid number of arguments": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:2 x; } }\n",
    "no arguments": EVENTS + "stream { server { listen; proxy_pass 127.0.0.1:2; } }\n",
    "is duplicate": EVENTS
    + "stream {\n server { listen 127.0.0.1:1;\n proxy_timeout 1s;\n proxy_timeout 2s;\n"
    " proxy_pass 127.0.0.1:2; } }\n",
    "duplicate proxy_pass": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:2;\n"
    "proxy_pass 127.0.0.1:3; } }\n",
    "host not found": EVENTS
    + "stream { server { listen 127.0.0.1:1;\n proxy_pass no-such-host.invalid:25; } }\n",
    "no port in upstream": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_pass no-such-host; } }\n",
    "invalid port in upstream": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:99999; } }\n",
    "unexpected close brace": EVENTS + "}\n",
    "unexpected end of file in block": EVENTS + "stream {\n server {\n",
    "unexpected end of file in args": EVENTS + "stream { server { listen 127.0.0.1:1",
    "unexpected semicolon": EVENTS + ";\n",
    "unexpected open brace": EVENTS + "{ }\n",
    "no events section": "stream { }\n",
    "duplicate events": EVENTS + EVENTS,
    "invalid flag value": EVENTS + "daemon maybe;\n",
    "block directive without block": "events;\n",
    "simple directive with block": EVENTS + "daemon on { }\n",
    "invalid listen port": EVENTS
    + "stream { server { listen 127.0.0.1:0; proxy_pass 127.0.0.1:2; } }\n",
    "duplicate listen": EVENTS
    + "stream {\n server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:2; }\n"
    " server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:3; }\n}\n",
    "invalid listen parameter": EVENTS
    + "stream { server { listen 127.0.0.1:1 frob; proxy_pass 127.0.0.1:2; } }\n",
    "invalid time": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_timeout 10x; proxy_pass 127.0.0.1:2; } }\n",
    "invalid size": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_buffer_size 1q; proxy_pass 127.0.0.1:2; } }\n",
    "unknown log format": EVENTS
    + "stream { server { listen 127.0.0.1:1; access_log logs/a.log nosuch;"
    " proxy_pass 127.0.0.1:2; } }\n",
    "unknown variable": EVENTS + "stream { log_format f '$no_such_variable'; }\n",
    "duplicate log format": EVENTS + "stream { log_format f 'a';\n log_format f 'b'; }\n",
    "no handler": EVENTS + "stream { server { listen 127.0.0.1:1; } }\n",
    "invalid log level": EVENTS + "error_log stderr loud;\n",
    "missing include": EVENTS + "include /nonexistent/pyngx-test.conf;\n",
    "include with two args": EVENTS + "include a b;\n",
    "invalid worker_processes": EVENTS + "worker_processes many;\n",
    "unknown user": "user no-such-user-pyngx;\n" + EVENTS,
    "unknown group": "user root no-such-group-pyngx;\n" + EVENTS,
    "map over a built-in variable": EVENTS
    + "stream {\n map $remote_addr $remote_port {\n default 1; }\n}\n",
    "map with three words": EVENTS + "stream {\n map $remote_addr $x {\n a b c;\n }\n}\n",
    "map outside stream": EVENTS + "map $a $b { }\n",
    "proxy_pass unknown variable": EVENTS
    + "stream { server { listen 127.0.0.1:1; proxy_pass $nope; } }\n",
    "stream inside events": "events { stream { } }\n",
    "server outside stream": EVENTS + "server { }\n",
    "quote then junk": EVENTS + 'stream { log_format f "a"b; }\n',
    "set_real_ip_from bad": EVENTS
    + "stream { server { listen 127.0.0.1:1; set_real_ip_from 999.1.1.1;"
    " proxy_pass 127.0.0.1:2; } }\n",
}

# The stream `upstream` block; every case on several lines so that the location is checked.
_PASS_B = " server { listen 127.0.0.1:1; proxy_pass b; }\n"
CASES.update(
    {
        "upstream: duplicate": EVENTS
        + "stream {\n upstream b { server 127.0.0.1:2; }\n upstream b {\n"
        " server 127.0.0.1:3; }\n" + _PASS_B + "}\n",
        # nginx locates this at the block's closing brace (also tested on several lines below).
        "upstream: no servers inside": EVENTS + "stream {\n upstream b { }\n" + _PASS_B + "}\n",
        "upstream: weight=0": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2 weight=0; }\n"
        + _PASS_B
        + "}\n",
        "upstream: may not have port": EVENTS + "stream {\n upstream x { server 127.0.0.1:2; }\n"
        " server { listen 127.0.0.1:1;\n proxy_pass x:25; }\n}\n",
        "upstream: unused group still checked": EVENTS
        + "stream {\n upstream b { server 127.0.0.1:2; }\n upstream c {\n"
        " server 127.0.0.1:2 backup; }\n" + _PASS_B + "}\n",
        "upstream: only backup servers": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2 backup;\n"
        " server 127.0.0.1:3 backup; }\n" + _PASS_B + "}\n",
        "upstream: backup after hash": EVENTS
        + "stream {\n upstream b {\n hash $remote_addr;\n server 127.0.0.1:2;\n"
        " server 127.0.0.1:3 backup; }\n" + _PASS_B + "}\n",
        "upstream: backup after random": EVENTS
        + "stream {\n upstream b {\n random two least_conn;\n"
        " server 127.0.0.1:2 backup; }\n" + _PASS_B + "}\n",
        "upstream: only backups before hash": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2 backup;\n"
        " hash $remote_addr; }\n" + _PASS_B + "}\n",
        "upstream: no port in server": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1; }\n"
        + _PASS_B
        + "}\n",
        "upstream: bad server parameters": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2 weight=2\n max_fails=-1; }\n"
        + _PASS_B
        + "}\n",
        "upstream: unsupported server parameter": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2 slow_start=10s; }\n"
        + _PASS_B
        + "}\n",
        "upstream: hash parameter": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2;\n hash $remote_addr ketama; }\n"
        + _PASS_B
        + "}\n",
        "upstream: hash unknown variable": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2;\n hash $nosuch; }\n"
        + _PASS_B
        + "}\n",
        "upstream: random parameter": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2;\n random one; }\n"
        + _PASS_B
        + "}\n",
        "upstream: least_conn arguments": EVENTS
        + "stream {\n upstream b {\n server 127.0.0.1:2;\n least_conn x; }\n"
        + _PASS_B
        + "}\n",
        "upstream: zone too small": EVENTS
        + "stream {\n upstream b {\n zone z 32767;\n server 127.0.0.1:2; }\n"
        + _PASS_B
        + "}\n",
        "upstream: zone size in g": EVENTS
        + "stream {\n upstream b {\n zone z 1g;\n server 127.0.0.1:2; }\n"
        + _PASS_B
        + "}\n",
        "upstream: zone size conflict": EVENTS
        + "stream {\n upstream b { zone z 64k; server 127.0.0.1:2; }\n upstream c {\n"
        " server 127.0.0.1:2;\n zone z 128k; }\n" + _PASS_B + "}\n",
        "upstream: zero size zone": EVENTS
        + "stream {\n upstream b { zone z; server 127.0.0.1:2; }\n upstream c {\n"
        " server 127.0.0.1:2;\n zone y; }\n" + _PASS_B + "}\n",
        "upstream: outside stream": EVENTS + "upstream b {\n server 127.0.0.1:2; }\n",
    }
)

# allow/deny and limit_conn (pyngx/stream/access.py, pyngx/stream/limit_conn.py).
_LC = "stream {\n limit_conn_zone $binary_remote_addr zone=x:1m;\n"
_SRV = " server { listen 127.0.0.1:1; proxy_pass 127.0.0.1:2;\n"
CASES.update(
    {
        "access: invalid address": EVENTS + "stream {\n" + _SRV + " allow foo; } }\n",
        "access: invalid v4 bits": EVENTS + "stream {\n" + _SRV + " deny 10.0.0.0/33; } }\n",
        "access: invalid v6 bits": EVENTS + "stream {\n" + _SRV + " deny ::1/129; } }\n",
        "access: netmask form": EVENTS + "stream {\n" + _SRV + " deny 10.0.0.0/255.0.0.0; } }\n",
        "access: unix path": EVENTS + "stream {\n" + _SRV + " allow unix:/x; } }\n",
        "access: two arguments": EVENTS + "stream {\n" + _SRV + " allow 1.2.3.4 all; } }\n",
        "limit_conn: unknown zone": EVENTS + "stream {\n" + _SRV + " limit_conn x 1; } }\n",
        "limit_conn: zero": EVENTS + _LC + _SRV + " limit_conn x 0; } }\n",
        "limit_conn: not a number": EVENTS + _LC + _SRV + " limit_conn x abc; } }\n",
        "limit_conn: too many": EVENTS + _LC + _SRV + " limit_conn x 65536; } }\n",
        "limit_conn: duplicate": EVENTS + _LC + _SRV + " limit_conn x 1;\n limit_conn x 2; } }\n",
        "limit_conn: log level": EVENTS + _LC + _SRV + " limit_conn_log_level crit; } }\n",
        "limit_conn: dry run flag": EVENTS + _LC + _SRV + " limit_conn_dry_run maybe; } }\n",
        "limit_conn_zone: bound twice": EVENTS
        + _LC
        + " limit_conn_zone $remote_addr zone=x:1m;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: size conflict": EVENTS
        + _LC
        + " limit_conn_zone $binary_remote_addr zone=x:2m;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: too small": EVENTS
        + "stream {\n limit_conn_zone $binary_remote_addr zone=x:1k;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: no size": EVENTS
        + "stream {\n limit_conn_zone $binary_remote_addr zone=x;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: bad size": EVENTS
        + "stream {\n limit_conn_zone $binary_remote_addr zone=x:1q;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: no zone": EVENTS
        + "stream {\n limit_conn_zone $binary_remote_addr zone=:1m;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: bad parameter": EVENTS
        + "stream {\n limit_conn_zone $binary_remote_addr x;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: one argument": EVENTS
        + "stream {\n limit_conn_zone $binary_remote_addr;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: unknown variable": EVENTS
        + "stream {\n limit_conn_zone $nope zone=x:1m;\n"
        + _SRV
        + " } }\n",
        "limit_conn_zone: in server": EVENTS
        + "stream {\n"
        + _SRV
        + " limit_conn_zone $binary_remote_addr zone=x:1m; } }\n",
        "limit_conn_zone: upstream zone of the name": EVENTS
        + "stream {\n upstream u { zone x 64k; server 127.0.0.1:3; }\n"
        + " limit_conn_zone $binary_remote_addr zone=x:1m;\n"
        + _SRV
        + " } }\n",
        "limit_conn: zone of an upstream": EVENTS
        + "stream {\n upstream u { zone x 64k; server 127.0.0.1:3; }\n"
        + _SRV
        + " limit_conn x 1; } }\n",
    }
)

# geo, split_clients, set, return (pyngx/stream/geo.py, split_clients.py, set_return.py).
_RET = " server { listen 127.0.0.1:1; return x; }\n"
CASES.update(
    {
        "split_clients over 100%": EVENTS
        + "stream {\n split_clients $remote_addr $s {\n 60% a;\n 50% b;\n }\n"
        + _RET
        + "}\n",
        "split_clients bad percent": EVENTS
        + "stream {\n split_clients $remote_addr $s {\n 0% a;\n }\n"
        + _RET
        + "}\n",
        "split_clients percent without %": EVENTS
        + "stream {\n split_clients $remote_addr $s {\n 10 a;\n }\n"
        + _RET
        + "}\n",
        "split_clients name without $": EVENTS
        + "stream {\n split_clients $remote_addr s {\n * a;\n }\n"
        + _RET
        + "}\n",
        "geo bad network": EVENTS + "stream {\n geo $g {\n 10.0.0.0/33 a;\n }\n" + _RET + "}\n",
        "geo bad address": EVENTS + "stream {\n geo $g {\n 10.0.0.x a;\n }\n" + _RET + "}\n",
        "geo three words": EVENTS + "stream {\n geo $g {\n 10.0.0.0/8 a b;\n }\n" + _RET + "}\n",
        "geo bad range": EVENTS
        + "stream {\n geo $g {\n ranges;\n 10.0.0.9-10.0.0.1 a;\n }\n"
        + _RET
        + "}\n",
        "geo range without dash": EVENTS
        + "stream {\n geo $g {\n ranges;\n 10.0.0.9 a;\n }\n"
        + _RET
        + "}\n",
        "geo overlapping ranges": EVENTS
        + "stream {\n geo $g {\n ranges;\n 10.0.0.1-10.0.0.9 a;\n 10.0.0.5-10.0.0.20 b;\n"
        " }\n" + _RET + "}\n",
        "geo ranges not first": EVENTS
        + "stream {\n geo $g {\n default a;\n ranges;\n }\n"
        + _RET
        + "}\n",
        "geo unknown source variable": EVENTS
        + "stream {\n geo $nope $g {\n default a;\n }\n"
        + _RET
        + "}\n",
        "geo over a built-in variable": EVENTS
        + "stream {\n geo $remote_port {\n default a;\n }\n"
        + _RET
        + "}\n",
        "set without $": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n set k v;\n return x; }\n}\n",
        "set a built-in variable": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n set $remote_addr v;\n return x; }\n}\n",
        "set with one arg": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n set $k;\n return x; }\n}\n",
        "set unknown variable in value": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n set $k $nope;\n return x; }\n}\n",
        "set outside server": EVENTS + "stream {\n set $k v;\n}\n",
        "return with two args": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n return a b; }\n}\n",
        "return duplicate": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n return a;\n return b; }\n}\n",
        "return unknown variable": EVENTS
        + "stream {\n server { listen 127.0.0.1:1;\n return $nope; }\n}\n",
    }
)

_EMERG = re.compile(r"\[emerg\] (?:\d+#\d+: )?(.*)")


def _emerg(stderr: str) -> str:
    for line in stderr.splitlines():
        m = _EMERG.search(line)
        if m:
            return m.group(1)
    return f"<no [emerg] line in {stderr!r}>"


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_error_as_nginx(case: str, tmp_path: Path) -> None:
    conf = tmp_path / "test.conf"
    conf.write_text(HEAD + CASES[case])
    for sub in ("n/logs", "p/logs"):
        (tmp_path / sub).mkdir(parents=True)
    ngx = _run([NGINX, "-t", "-p", f"{tmp_path}/n/", "-c", str(conf)])
    pyn = _run([sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf)])
    assert ngx.returncode == 1, ngx.stderr
    assert pyn.returncode == 1, pyn.stderr
    assert _emerg(pyn.stderr) == _emerg(ngx.stderr)
    assert f"configuration file {conf} test failed" in pyn.stderr


def test_command_line_directive_errors_match(tmp_path: Path) -> None:
    conf = tmp_path / "test.conf"
    conf.write_text(HEAD + "daemon off;\n" + EVENTS)
    for sub in ("n/logs", "p/logs"):
        (tmp_path / sub).mkdir(parents=True)
    for g in ("daemon on;", "frob on;", "daemon"):
        ngx = _run([NGINX, "-t", "-p", f"{tmp_path}/n/", "-c", str(conf), "-g", g])
        pyn = _run(
            [sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf), "-g", g]
        )
        assert (pyn.returncode, _emerg(pyn.stderr)) == (ngx.returncode, _emerg(ngx.stderr)), g


def test_no_servers_inside_upstream_at_closing_brace(tmp_path: Path) -> None:
    conf = tmp_path / "test.conf"
    conf.write_text(HEAD + EVENTS + "stream {\n upstream b {\n }\n" + _PASS_B + "}\n")
    for sub in ("n/logs", "p/logs"):
        (tmp_path / sub).mkdir(parents=True)
    ngx = _run([NGINX, "-t", "-p", f"{tmp_path}/n/", "-c", str(conf)])
    pyn = _run([sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf)])
    assert _emerg(ngx.stderr).endswith(f"{conf}:6")
    assert _emerg(pyn.stderr) == _emerg(ngx.stderr)
