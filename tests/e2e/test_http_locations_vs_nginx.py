"""Location and server_name selection: Debian's nginx against pyngx.http's pure code.

nginx runs a configuration whose every location (and server) answers `return 200 "ID|$1|$2|$uri"`;
the same text is parsed with pyngx.conf.parser and handed to LocationTree / ServerNames. Each
URI (Host) must select the same location (server), with the same regex captures; a 301 from
nginx must be pyngx's REDIRECT_SLASH to the URI plus '/', and nginx's 404 (no location, the
server's own static handler) must be "no location".

The URIs sent are already in nginx's normal form (no %-escapes, dot segments or double
slashes), so that nginx's $uri is the string the pyngx side searches with; the test checks it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pyngx.conf.parser import Node, parse_string
from pyngx.http.locations import REDIRECT_SLASH, LocationSpec, LocationTree
from pyngx.http.server_names import ServerNames
from tests.conftest import ServerFactory
from tests.harness import free_port, nginx_available, recv_all
from tests.unit.test_http_locations import specs_from_nodes

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not nginx_available(), reason="needs Debian's nginx"),
]

RET = '"{id}|$1|$2|$uri"'
PROXY = "proxy_pass http://127.0.0.1:1;"  # never reached: `return` runs first; sets auto-redirect

# The server with `location /` (everything matches something) ...
FULL = r"""
location = / { return 200 RET(A); }
location / { return 200 RET(B); }
location /documents/ { return 200 RET(C); }
location ^~ /images/ { return 200 RET(D); }
location ~* \.(gif|jpg|jpeg)$ { return 200 RET(E); }
location /img/ { return 200 RET(IMG); }
location ~ /img/$ { return 200 RET(IMGDIR); }
location = /ex { return 200 RET(EX); }
location /ex { return 200 RET(EXP); }
location /n/ {
    location ^~ /n/x/ { return 200 RET(NX); }
    location /n/y/ { return 200 RET(NY); }
    return 200 RET(N);
}
location ^~ /m/ {
    location /m/x/ { return 200 RET(MX); }
    location ~ \.png$ { return 200 RET(MPNG); }
    return 200 RET(M);
}
location /k/ {
    location ~ \.gif$ { return 200 RET(KGIF); }
    location ~ \.(gif|png)$ { return 200 RET(KIMG); }
    location /k/deep/ {
        location ~ (\w+)\.css$ { return 200 RET(KDCSS); }
        return 200 RET(KD);
    }
    return 200 RET(K);
}
location ~ /r {
    location /r/s/ { return 200 RET(RS); }
    location ~ /r/(t) { return 200 RET(RT); }
    return 200 RET(R);
}
location /abc { return 200 RET(ABC); }
location /abcd/ { return 200 RET(ABCD); }
location /ab { return 200 RET(AB); }
location /p/ { PROXY return 200 RET(P); }
location = /z/ { PROXY return 200 RET(Z); }
location /both/ { PROXY return 200 RET(BOTH); }
location = /both { return 200 RET(BOTHEX); }
location /e/ {
    location /e/f/ { PROXY return 200 RET(EF); }
    return 200 RET(E1);
}
location /pre { return 200 RET(PRE); }
location /pre/ { PROXY return 200 RET(PRESL); }
location ~ ^/pre$ { return 200 RET(PRERX); }
location ~ ^/cap/(?<word>[a-z]+)/(\d+)? { return 200 RET(CAP); }
location /q- { return 200 RET(QMINUS); }
location /q/ { PROXY return 200 RET(QSL); }
location /q.x { return 200 RET(QDOT); }
location /q0 { return 200 RET(QZERO); }
location /qq { PROXY return 200 RET(QQ); }
location ~ ^/deep {
    location ~ ^/deep/(\w+) {
        location ~ z$ { return 200 RET(DZ); }
        return 200 RET(DW);
    }
    return 200 RET(DEEP);
}
location /Case/ { return 200 RET(CASE); }
location ~* ^/ci/(X) { return 200 RET(CI); }
location ^~ /static/ {
    location /static/js/ { PROXY return 200 RET(SJS); }
    location ~ \.js$ { return 200 RET(SJSRX); }
    return 200 RET(STATIC);
}
"""

# ... and one without it (some URIs match nothing).
SPARSE = r"""
location /api/ { PROXY return 200 RET(API); }
location = /api { return 200 RET(APIEX); }
location /api/v1/ { return 200 RET(V1); }
location ~ ^/api/v(\d+)/users$ { return 200 RET(USERS); }
location ^~ /assets/ { return 200 RET(ASSETS); }
location ~ \.php$ { return 200 RET(PHP); }
location /x { return 200 RET(X); }
location @named { return 200 RET(NAMED); }
"""

EXTRA_URIS = """
/ /index.html /documents/document.html /images/1.gif /documents/1.jpg /documents/1.JPG
/Images/1.gif /images /img/ /img/1.gif /img/1.png /img /ex /exa /ex/ /n/x/a.gif /n/x/a.png
/n/a.gif /n/a /n/y/1.gif /m/x/a.gif /m/a.gif /m/a.png /m/x/a.png /k/a.gif /k/a.png /k/a
/k/deep/a.css /k/deep/a.gif /k/deep /r/s/ /r/s/x /r/t /r/tt /rr /abcd/e /abcd /abc /ab /a
/p /p/ /p/x /z /z/ /both /both/ /e/f /e/fg /e/f/ /pre /pre/ /pres /cap/abc/12 /cap/abc/
/cap/ABC/1 /q /q- /q/ /q.x /q0 /qq /qqq /deep /deep/abc /deep/abcz /deep/ /Case/x /case/x
/ci/x /CI/X /static/js /static/js/a.js /static/a.js /static/js/a.css /static/
/api /api/ /api/v1 /api/v1/ /api/v1/users /api/v2/users /api/v2/users/ /assets/a.php
/assets /a.php /x /xy /x/y /nothing /@named /favicon.ico
"""

SERVERS = r"""
server { listen LISTEN; server_name default.test; return 200 "DEF|$1|$2"; }
server { listen LISTEN; server_name example.org www.example.org; return 200 "EXACT|$1|$2"; }
server { listen LISTEN; server_name *.example.org; return 200 "HEAD|$1|$2"; }
server { listen LISTEN; server_name *.sub.example.org; return 200 "SUBHEAD|$1|$2"; }
server { listen LISTEN; server_name mail.*; return 200 "TAIL|$1|$2"; }
server { listen LISTEN; server_name mail.example.*; return 200 "TAIL2|$1|$2"; }
server { listen LISTEN; server_name ~^(?<user>[a-z]+)\.example\.net$; return 200 "RX1|$1|$2"; }
server { listen LISTEN; server_name .example.com; return 200 "DOT|$1|$2"; }
server {
    listen LISTEN;
    server_name www.example.com ~^www(\d+)\.example\.com$ "~^www(\d+)\.Other\.(com)$";
    return 200 "WWW|$1|$2";
}
server { listen LISTEN; server_name "" _; return 200 "EMPTY|$1|$2"; }
server { listen LISTEN default_server; server_name dflt.test; return 200 "DFLT|$1|$2"; }
server { listen LISTEN; server_name example.org ~^(.+)\.last$; return 200 "LATE|$1|$2"; }
"""

HOSTS = [
    None,  # no Host header (HTTP/1.0)
    "example.org",
    "Example.ORG",
    "example.org.",
    "example.org:8080",
    "www.example.org",
    "a.example.org",
    "a.b.example.org",
    "sub.example.org",
    "x.sub.example.org",
    "mail.example.org",
    "mail.foo.com",
    "mail.example.com",
    "mail.example.net",
    "mail",
    "bob.example.net",
    "bob.smith.example.net",
    "example.com",
    "www.example.com",
    "x.y.example.com",
    "www12.example.com",
    "www12.foo.com",
    "WWW7.OTHER.COM",
    "www7.other.com",
    "_",
    "default.test",
    "dflt.test",
    "unknown.test",
    "127.0.0.1",
    "x.last",
    "a.b.last",
    "last",
    "example.net",
    "com",
    "mail.",
    "www.example.co",
    "sub.example.org.",
    "EXAMPLE.com:80",
    "[::1]",
    "[::1]:8080",
]


def _conf_text(text: str) -> str:
    text = re.sub(r"RET\((\w+)\)", lambda m: RET.format(id=m.group(1)), text)
    return text.replace("PROXY", PROXY)


def _request(port: int, target: str, host: str | None) -> tuple[int, bytes, str | None]:
    head = f"GET {target} HTTP/1.0\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((head + "\r\n").encode())
        data = recv_all(s)
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    location = next(
        (v.strip() for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "location"),
        None,
    )
    return int(lines[0].split()[1]), body, location


def _captures(match: re.Match[str] | None) -> tuple[str, str]:
    def group(i: int) -> str:
        if match is None or i > match.re.groups:
            return ""
        return match.group(i) or ""

    return group(1), group(2)


def _static_names(specs: list[LocationSpec]) -> Iterator[str]:
    for spec in specs:
        if spec.regex is None and spec.modifier != "@":
            yield spec.name
        yield from _static_names(spec.children)


def _uris(specs: list[LocationSpec]) -> list[str]:
    out = EXTRA_URIS.split()
    for name in _static_names(specs):
        out += [name, name[:-1], name + "x", name + "/y.gif", name + "1.JPG", name + "t/u.png"]
    seen: set[str] = set()
    uris = []
    for uri in out:
        # only URIs nginx leaves alone: $uri is then the request target
        if not uri.startswith("/") or "//" in uri or "/." in uri or uri in seen:
            continue
        seen.add(uri)
        uris.append(uri)
    return uris


@pytest.fixture
def running(nginx: ServerFactory) -> dict[str, Any]:
    ports = {"full": free_port(), "sparse": free_port(), "names": free_port()}
    body = (
        "http {\n    access_log off;\n"
        f"    server {{ listen 127.0.0.1:{ports['full']};\n{_conf_text(FULL)}\n    }}\n"
        f"    server {{ listen 127.0.0.1:{ports['sparse']};\n{_conf_text(SPARSE)}\n    }}\n"
        + SERVERS.replace("LISTEN", f"127.0.0.1:{ports['names']}")
        + "}\n"
    )
    nginx(body)
    return {"ports": ports, "body": body}


def _http_block(body: str) -> list[Node]:
    (http,) = [n for n in parse_string(body) if n.name == "http"]
    return [n for n in http.block or [] if n.name == "server"]


@pytest.mark.parametrize("which", ["full", "sparse"])
def test_locations_vs_nginx(running: dict[str, Any], which: str) -> None:
    servers = _http_block(running["body"])
    server = servers[0 if which == "full" else 1]
    specs = specs_from_nodes(server.block or [])
    tree = LocationTree.build(specs)
    port = running["ports"][which]
    uris = _uris(specs)
    assert len(uris) > 100
    mismatches = []
    for uri in uris:
        status, body, location = _request(port, uri, "localhost")
        found = tree.find(uri)
        if status == 200:
            ident, c1, c2, nginx_uri = body.decode().split("|")
            assert nginx_uri == uri, "the URI list must hold nginx-normal URIs only"
            got = None if found is None else (str(found[0]).split("|")[0], *_captures(found[1]))
            want: Any = (ident, c1, c2)
        elif status == 301:
            assert location == f"http://localhost:{port}{uri}/"
            got, want = found, (REDIRECT_SLASH, None)
        else:
            assert status in (403, 404), (uri, status)
            got, want = found, None
        if got != want:
            mismatches.append((uri, want, got))
    assert not mismatches


def test_server_names_vs_nginx(running: dict[str, Any]) -> None:
    servers = _http_block(running["body"])[2:]
    entries: list[tuple[str, Any, Node]] = []
    default = None
    for node in servers:
        block = node.block or []
        ident = next(c.args[-1] for c in block if c.name == "return").split("|")[0]
        for directive in (c for c in block if c.name == "server_name"):
            entries.extend((arg, ident, directive) for arg in directive.args)
        if default is None or any("default_server" in c.args for c in block if c.name == "listen"):
            default = ident
    port = running["ports"]["names"]
    names = ServerNames(entries, default, f"127.0.0.1:{port}")
    assert [m for m, _ in names.warnings] == [
        f'conflicting server name "example.org" on 127.0.0.1:{port}, ignored'
    ]
    mismatches = []
    for host in HOSTS:
        status, body, _ = _request(port, "/", host)
        assert status == 200, host
        want = tuple(body.decode().split("|"))
        conf, match = names.find(_validated(host))
        got = (conf, *_captures(match))
        if got != want:
            mismatches.append((host, want, got))
    assert not mismatches


def _validated(host: str | None) -> str:
    """What ngx_http_validate_host leaves of a Host header (for the hosts used here)."""
    if host is None:
        return ""
    host = host.lower()
    if host.startswith("["):
        host = host[: host.index("]") + 1]
    else:
        host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host
