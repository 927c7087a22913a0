"""The http proxy, pyngx against Debian's nginx 1.22: same configuration, same requests.

One origin (tests/http_backend.py) serves both. Each case is its own `server` (selected by
Host: cNNN) with a few directives, and one request; it runs on nginx, then on pyngx, and what
must agree is:
- what the origin received: method, request target, HTTP version, header lines in order, body;
- what the client got: status line, header lines in order (Date's value and the version in
  Server ignored), body (de-chunked; JSON echoes compared as data);
- for failures, the error log lines the request produced (after the `*N ` prefix).
Ports of the two servers differ: the listen port is replaced by PORT before comparing.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyngx.protocols import http1 as http1_module
from tests.harness import Nginx, Pyngx, free_port, nginx_available, nginx_conf, pyngx_conf
from tests.http_backend import HttpBackend, Recorded

pytestmark = pytest.mark.nginx

# The request-line parser in use may still be the skeleton's stand-in, which does not
# normalise paths (merge slashes, resolve dot segments) as nginx does.
STAND_IN_PARSER = (http1_module.__doc__ or "").startswith("TEMPORARY")
try:
    from pyngx.http import rewrite as _rewrite  # noqa: F401

    HAVE_REWRITE = True
except ImportError:
    HAVE_REWRITE = False


@dataclass
class Case:
    id: str
    conf: str  # the server block's body; ORIGIN is the origin's address
    target: str = "/"
    method: str = "GET"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    version: str = "HTTP/1.1"
    routes: dict[str, bytes] = field(default_factory=dict)  # raw origin responses by path
    keepalive: bool = False  # send no `Connection: close`; read one response
    raw: bytes | None = None  # the request as is (Host: HOST is replaced)
    needs_parser: bool = False  # needs nginx's URI normalisation (not the stand-in's)
    compare_log: bool = False
    # A difference outside the proxy (core http code), expected to fail until fixed there.
    known: str | None = None
    needs_rewrite: bool = False  # rewrite/if/set: the rewrite module (another branch)


def raw_route(status: str, headers: list[str], body: bytes = b"", close: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


P = "proxy_pass http://ORIGIN"
K11 = 'proxy_http_version 1.1; proxy_set_header Connection "";'

CASES: list[Case] = [
    # -- the URI ---------------------------------------------------------------------------
    Case("no-uri-part", f"location / {{ {P}; }}", "/plain?x=1&y"),
    Case("no-uri-part-raw-escapes", f"location / {{ {P}; }}", "/a%20b/c%2fd?q=%20"),
    Case("no-uri-part-dot-segments", f"location / {{ {P}; }}", "/a/../b?k"),
    Case("uri-part", f"location /a/ {{ {P}/x/; }}", "/a/b?x"),
    Case("uri-part-escaped-space", f"location /a/ {{ {P}/x/; }}", "/a/b%20c"),
    Case("uri-part-plus", f"location /a/ {{ {P}/x/; }}", "/a/b+c"),
    Case("uri-part-tilde", f"location /a/ {{ {P}/x/; }}", "/a/%7Euser"),
    Case("uri-part-hash", f"location /a/ {{ {P}/x/; }}", "/a/%23frag"),
    Case("uri-part-question", f"location /a/ {{ {P}/x/; }}", "/a/b%3Fc?real=1"),
    Case("uri-part-utf8", f"location /a/ {{ {P}/x/; }}", "/a/caf%C3%A9"),
    Case("uri-part-slash-encoded", f"location /a/ {{ {P}/x/; }}", "/a/b%2Fc"),
    Case("uri-part-merge-slashes", f"location /a/ {{ {P}/x/; }}", "/a/b//c", needs_parser=True),
    Case("uri-part-dots", f"location /a/ {{ {P}/x/; }}", "/a/./b/../c", needs_parser=True),
    Case("uri-part-unescaped", f"location /a/ {{ {P}/x/; }}", "/a/plain-path_1.txt"),
    Case("prefix-no-slash", f"location /a {{ {P}/x; }}", "/abc"),
    Case("prefix-to-root", f"location /a/ {{ {P}/; }}", "/a/"),
    Case("prefix-to-root-deeper", f"location /a/ {{ {P}/; }}", "/a/b/c?d"),
    Case("location-slash-proxy-no-slash", f"location /a/ {{ {P}/x; }}", "/a/z"),
    Case("exact", f"location = /exact {{ {P}/other; }}", "/exact?z"),
    Case("caret-tilde", f"location ^~ /pre/ {{ {P}/p/; }}", "/pre/x"),
    Case("regex-no-uri", f"location ~ ^/re/ {{ {P}; }}", "/re/x%20y"),
    Case("regex-case-insensitive", f"location ~* ^/RE2/ {{ {P}; }}", "/re2/Q"),
    Case("vars-uri", f"location /v/ {{ {P}/fixed$is_args$args; }}", "/v/z?a=1"),
    Case("vars-uri-no-args", f"location /v/ {{ {P}/fixed$is_args$args; }}", "/v/z"),
    Case("vars-dollar-uri", "location /v2/ { proxy_pass http://ORIGIN$uri; }", "/v2/a%41b?q"),
    Case(
        "vars-host-only",
        "location /v3/ { proxy_pass http://$http_x_target; }",
        "/v3/p%20q?x",
        headers=[("X-Target", "ORIGIN")],
    ),
    Case(
        "vars-host-request-uri",
        "location /v4/ { proxy_pass http://$http_x_target/base$request_uri; }",
        "/v4/p?x",
        headers=[("X-Target", "ORIGIN")],
    ),
    Case("upstream-block", "location /up/ { proxy_pass http://grp; }", "/up/q"),
    Case("upstream-block-uri", "location /up/ { proxy_pass http://grp/u/; }", "/up/q?r"),
    Case(
        "nested",
        f"location /n/ {{ {P}/n1/; location /n/inner/ {{ {P}/n2/; }} }}",
        "/n/inner/x",
    ),
    Case("nested-outer", f"location /n/ {{ {P}/n1/; location /n/inner/ {{ {P}/n2/; }} }}", "/n/x"),
    Case(
        "nested-not-inherited",
        f"location /m/ {{ {P}; location /m/static/ {{ }} }}",
        "/m/static/nothing-here",
    ),
    Case(
        "try-files-named",
        f"location /t/ {{ try_files /nonexistent @up; }} location @up {{ {P}; }}",
        "/t/a%20b?q",
    ),
    Case(
        "error-page-uri-keeps-status",
        f"location /e/ {{ {P}; proxy_intercept_errors on; error_page 404 /fb/x; }}\n"
        f"location /fb/ {{ {P}; }}",
        "/e/a?status=404",
    ),
    Case(
        "error-page-uri-equals",
        f"location /e/ {{ {P}; proxy_intercept_errors on; error_page 404 = /fb/y?k=v; }}\n"
        f"location /fb/ {{ {P}; }}",
        "/e/a?status=404",
    ),
    Case("absolute-form", f"location / {{ {P}; }}", "http://HOST/abs/p?x"),
    Case("http10-client", f"location / {{ {P}; }}", "/ten", version="HTTP/1.0"),
    Case("empty-args", f"location /qq/ {{ {P}/z/; }}", "/qq/a?"),
    Case("empty-args-raw", f"location / {{ {P}; }}", "/qq/a?"),
    # -- after rewrite, in `if` blocks (nginx's valid_location / valid_unparsed_uri) ---------
    Case(
        "rewrite-break",
        "location /rw/ { rewrite ^/rw/(.*)$ /new/$1 break; proxy_pass http://ORIGIN; }",
        "/rw/a%20b?x",
        needs_rewrite=True,
    ),
    Case(
        "rewrite-break-ignores-uri-part",
        "location /rw2/ { rewrite ^ /changed break; proxy_pass http://ORIGIN/ignored/; }",
        "/rw2/q?y",
        needs_rewrite=True,
    ),
    Case(
        "rewrite-last-new-location",
        "location /rw3/ { rewrite ^/rw3/(.*)$ /to/$1 last; }\n"
        "location /to/ { proxy_pass http://ORIGIN/dest/; }",
        "/rw3/z%41?k",
        needs_rewrite=True,
    ),
    Case(
        "set-args",
        "location /sa/ { set $args z=1; proxy_pass http://ORIGIN; }",
        "/sa/x%20y?orig",
        needs_rewrite=True,
    ),
    Case(
        "if-own-proxy-pass",
        f"location /if/ {{ if ($arg_go) {{ {P}; }} {P}/else/; }}",
        "/if/a%20b?go=1",
        needs_rewrite=True,
    ),
    Case(
        "if-inherits-proxy-pass",
        "location /if2/ { proxy_pass http://ORIGIN/p/; if ($arg_x) { set $dummy 1; } }",
        "/if2/a?x=1",
        needs_rewrite=True,
    ),
    # -- request headers --------------------------------------------------------------------
    Case(
        "default-request-headers",
        f"location / {{ {P}; }}",
        "/h",
        headers=[
            ("User-Agent", "t/1"),
            ("Accept", "*/*"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X-Dup", "1"),
            ("X-Dup", "2"),
            ("Keep-Alive", "300"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("Content-Type", "text/plain"),
        ],
    ),
    Case(
        "real-ip-and-xff",
        f"location / {{ {P}; proxy_set_header X-Real-IP $remote_addr;\n"
        "  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }",
        "/h",
        headers=[("X-Forwarded-For", "10.1.1.1")],
    ),
    Case(
        "xff-without-client-header",
        f"location / {{ {P}; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}",
        "/h",
    ),
    Case("host-http-host", f"location / {{ {P}; proxy_set_header Host $http_host; }}", "/h"),
    Case(
        "host-host-port", f"location / {{ {P}; proxy_set_header Host $host:$server_port; }}", "/h"
    ),
    Case(
        "host-case-insensitive",
        f"location / {{ {P}; proxy_set_header host custom.example; }}",
        "/h",
    ),
    Case(
        "remove-user-agent",
        f'location / {{ {P}; proxy_set_header User-Agent ""; }}',
        "/h",
        headers=[("User-Agent", "ua"), ("Accept-Encoding", "gzip")],
    ),
    Case(
        "empty-variable-omitted",
        f"location / {{ {P}; proxy_set_header X-Empty $http_x_missing; }}",
        "/h",
    ),
    Case("http11-connection-removed", f"location / {{ {P}; {K11} }}", "/h"),
    Case(
        "http11-keepalive-header-kept",
        f"location / {{ {P}; proxy_http_version 1.1; }}",
        "/h",
        headers=[("Connection", "keep-alive")],
        keepalive=True,
    ),
    Case(
        "server-level-inherited",
        f"proxy_set_header X-Srv 1;\nlocation / {{ {P}; }}",
        "/h",
    ),
    Case(
        "location-replaces-server-list",
        f"proxy_set_header X-Srv 1;\nlocation / {{ {P}; proxy_set_header X-Loc 2; }}",
        "/h",
    ),
    Case(
        "duplicate-set-header",
        f"location / {{ {P}; proxy_set_header X-A one; proxy_set_header X-A two; }}",
        "/h",
    ),
    Case(
        "no-request-headers",
        f"location / {{ {P}; proxy_pass_request_headers off; }}",
        "/h",
        headers=[("X-A", "1")],
    ),
    Case(
        "configured-before-defaults",
        f"location / {{ {P}; proxy_set_header X-First a;\n"
        "  proxy_set_header Connection keep-alive; }",
        "/h",
    ),
    Case(
        "proxy-host-and-port-vars",
        f"location / {{ {P}; proxy_set_header X-P $proxy_host|$proxy_port; }}",
        "/h",
    ),
    Case(
        "set-header-scheme-uri",
        f'location / {{ {P}; proxy_set_header X-Uri "$scheme $request_uri $uri $args"; }}',
        "/h/%41?b=1",
    ),
    # -- methods and bodies -------------------------------------------------------------------
    Case("post-length", f"location / {{ {P}; }}", "/b", method="POST", body=b"hello"),
    Case(
        "post-chunked-to-length",
        f"location / {{ {P}; }}",
        "/b",
        method="POST",
        headers=[("Transfer-Encoding", "chunked")],
        body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ),
    Case("put-empty", f"location / {{ {P}; }}", "/b", method="PUT", body=b""),
    Case("head", f"location / {{ {P}; }}", "/b?size=1234", method="HEAD"),
    Case("proxy-method", f"location / {{ {P}; proxy_method POST; }}", "/b"),
    Case(
        "set-body",
        f'location / {{ {P}; proxy_set_body "x=$arg_a"; }}',
        "/b?a=7",
        method="POST",
        body=b"original",
    ),
    Case(
        "no-request-body",
        f'location / {{ {P}; proxy_pass_request_body off; proxy_set_header Content-Length ""; }}',
        "/b",
        method="POST",
        body=b"dropped",
    ),
    Case("delete-with-body", f"location / {{ {P}; }}", "/b", method="DELETE", body=b"d"),
    Case("custom-method", f"location / {{ {P}; }}", "/b", method="PROPFIND"),
    Case(
        "expect-continue",
        f"location / {{ {P}; }}",
        "/b",
        method="POST",
        headers=[("Expect", "100-continue")],
        body=b"data",
    ),
    Case(
        "unbuffered-length",
        f"location / {{ {P}; proxy_request_buffering off; }}",
        "/b",
        method="POST",
        body=b"streamed",
    ),
    # -- response heads ----------------------------------------------------------------------
    Case(
        "reason-phrase",
        f"location / {{ {P}; }}",
        "/r1",
        routes={"/r1": raw_route("299 Fine Thanks", ["Content-Length: 2"], b"ok")},
    ),
    Case(
        "no-reason",
        f"location / {{ {P}; }}",
        "/r2",
        routes={"/r2": raw_route("200", ["Content-Length: 2"], b"ok")},
    ),
    Case(
        "close-delimited-to-chunked",
        f"location / {{ {P}; }}",
        "/r3",
        routes={"/r3": raw_route("200 OK", ["Content-Type: text/x"], b"until close")},
    ),
    Case(
        "close-delimited-http10-client",
        f"location / {{ {P}; }}",
        "/r3",
        version="HTTP/1.0",
        routes={"/r3": raw_route("200 OK", ["Content-Type: text/x"], b"until close")},
    ),
    Case(
        "chunked-passthrough",
        f"location / {{ {P}; }}",
        "/r4",
        routes={
            "/r4": raw_route(
                "200 OK", ["Transfer-Encoding: chunked"], b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
            )
        },
    ),
    Case(
        "chunked-http10-client",
        f"location / {{ {P}; }}",
        "/r4",
        version="HTTP/1.0",
        routes={
            "/r4": raw_route("200 OK", ["Transfer-Encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n")
        },
    ),
    Case(
        "hidden-by-default",
        f"location / {{ {P}; }}",
        "/r5",
        routes={
            "/r5": raw_route(
                "200 OK",
                [
                    "Server: origin",
                    "Date: never",
                    "X-Pad: p",
                    "X-Accel-Expires: 1",
                    "X-Accel-Charset: utf-8",
                    "X-Accel-Limit-Rate: 10",
                    "X-Accel-Buffering: no",
                    "X-Kept: k",
                    "Content-Length: 2",
                ],
                b"ok",
            )
        },
    ),
    Case(
        "pass-server-date",
        f"location / {{ {P}; proxy_pass_header Server; proxy_pass_header Date; }}",
        "/r6",
        routes={"/r6": raw_route("200 OK", ["Date: never", "Server: origin", "Content-Length: 0"])},
    ),
    Case(
        "pass-server-date-absent",
        f"location / {{ {P}; proxy_pass_header Server; proxy_pass_header Date; }}",
        "/r7",
        routes={"/r7": raw_route("200 OK", ["X-A: 1", "Content-Length: 0"])},
    ),
    Case(
        "hide-header",
        f"location / {{ {P}; proxy_hide_header X-Secret; proxy_hide_header content-type; }}",
        "/r8",
        routes={
            "/r8": raw_route(
                "200 OK",
                ["X-Secret: s", "Content-Type: text/html", "X-Public: p", "Content-Length: 0"],
            )
        },
    ),
    Case(
        "many-headers",
        f"location / {{ {P}; }}",
        "/r9",
        routes={
            "/r9": raw_route(
                "200 OK",
                [
                    "Set-Cookie: a=1; Path=/",
                    "Set-Cookie: b=2",
                    "Cache-Control: no-cache",
                    "Cache-Control: private",
                    "Link: </a>; rel=preload",
                    "Vary: Accept",
                    'ETag: "e1"',
                    "Last-Modified: Thu, 01 Jan 1970 00:00:00 GMT",
                    "Expires: Thu, 01 Jan 1970 00:00:00 GMT",
                    "Accept-Ranges: bytes",
                    "Content-Disposition: inline",
                    "Content-Encoding: identity",
                    "Content-Type: text/plain; charset=koi8-r",
                    "Content-Length: 3",
                ],
                b"abc",
            )
        },
    ),
    Case(
        "duplicate-content-length",
        f"location / {{ {P}; }}",
        "/r10",
        routes={"/r10": raw_route("200 OK", ["Content-Length: 2", "Content-Length: 3"], b"abc")},
    ),
    Case(
        "chunked-and-length",
        f"location / {{ {P}; }}",
        "/r11",
        routes={
            "/r11": raw_route(
                "200 OK",
                ["Content-Length: 99", "Transfer-Encoding: chunked"],
                b"2\r\nhi\r\n0\r\n\r\n",
            )
        },
    ),
    Case(
        "upstream-connection-close-client-keepalive",
        f"location / {{ {P}; }}",
        "/r12",
        keepalive=True,
        routes={"/r12": raw_route("200 OK", ["Keep-Alive: timeout=1", "Content-Length: 2"], b"ok")},
    ),
    Case(
        "status-204-with-length",
        f"location / {{ {P}; }}",
        "/r13",
        routes={"/r13": raw_route("204 No Content", ["Content-Length: 5", "X-A: 1"])},
    ),
    # No body and no length: the client's connection stays (ngx_http_chunked_header_filter).
    Case(
        "status-204-no-length-keepalive",
        f"location / {{ {P}; }}",
        "/r25",
        keepalive=True,
        routes={"/r25": raw_route("204 No Content", ["X-A: 1"])},
    ),
    Case(
        "status-304-no-length-keepalive",
        f"location / {{ {P}; }}",
        "/r26",
        keepalive=True,
        routes={"/r26": raw_route("304 Not Modified", ['ETag: "x"'])},
    ),
    Case(
        "status-304",
        f"location / {{ {P}; }}",
        "/r14",
        routes={"/r14": raw_route("304 Not Modified", ['ETag: "x"', "Content-Length: 5"])},
    ),
    Case(
        "interim-100",
        f"location / {{ {P}; }}",
        "/r15",
        routes={
            "/r15": b"HTTP/1.1 100 Continue\r\n\r\n"
            + raw_route("200 OK", ["Content-Length: 2"], b"hi")
        },
    ),
    Case(
        "header-without-colon",
        f"location / {{ {P}; }}",
        "/r16",
        routes={"/r16": raw_route("200 OK", ["NoColon", "Content-Length: 0"])},
    ),
    Case(
        "invalid-header-name",
        f"location / {{ {P}; }}",
        "/r17",
        compare_log=True,
        routes={"/r17": raw_route("200 OK", ["Bad Name: x", "Content-Length: 0"])},
    ),
    Case(
        "header-value-spaces",
        f"location / {{ {P}; }}",
        "/r18",
        routes={"/r18": raw_route("200 OK", ["X-Sp:    padded   ", "Content-Length: 0"])},
    ),
    Case(
        "lf-only-head",
        f"location / {{ {P}; }}",
        "/r19",
        routes={"/r19": b"HTTP/1.1 200 OK\nX-Lf: 1\nContent-Length: 2\nConnection: close\n\nhi"},
    ),
    Case(
        "http10-upstream",
        f"location / {{ {P}; }}",
        "/r20",
        keepalive=True,
        routes={"/r20": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"},
    ),
    Case(
        "x-accel-redirect",
        f"location / {{ {P}; }}\nlocation /internal/ {{ internal; {P}/landed/; }}",
        "/r21",
        routes={
            "/r21": raw_route(
                "200 OK",
                [
                    "X-Accel-Redirect: /internal/f?q=1",
                    "Set-Cookie: s=1",
                    "X-Gone: 1",
                    "Content-Length: 0",
                ],
            )
        },
    ),
    Case(
        "x-accel-redirect-named",
        f"location / {{ {P}; }}\n"
        "location @named { proxy_pass http://ORIGIN/landed$is_args$args; }",
        "/r22?k",
        routes={"/r22": raw_route("200 OK", ["X-Accel-Redirect: @named", "Content-Length: 0"])},
    ),
    Case(
        "x-accel-redirect-named-cycle",
        f"location / {{ {P}; }}\nlocation @named {{ {P}; }}",
        "/r22?k",
    ),
    Case(
        "x-accel-redirect-ignored",
        f"location / {{ {P}; proxy_ignore_headers X-Accel-Redirect; }}",
        "/r23",
        routes={"/r23": raw_route("200 OK", ["X-Accel-Redirect: /elsewhere", "Content-Length: 0"])},
    ),
    Case(
        "x-accel-redirect-passed",
        f"location / {{ {P}; proxy_ignore_headers X-Accel-Redirect;\n"
        "  proxy_pass_header X-Accel-Redirect; }",
        "/r24",
        routes={"/r24": raw_route("200 OK", ["X-Accel-Redirect: /elsewhere", "Content-Length: 0"])},
    ),
    # -- proxy_redirect -------------------------------------------------------------------------
    Case(
        "redirect-default",
        f"location / {{ {P}; }}",
        "/l1",
        routes={
            "/l1": raw_route(
                "302 Found", ["Location: http://ORIGIN/x/y?q", "X-After: 1", "Content-Length: 0"]
            )
        },
    ),
    Case(
        "redirect-default-uri-part",
        f"location /one/ {{ {P}/two/; }}",
        "/one/l2",
        routes={
            "/two/l2": raw_route(
                "301 Moved", ["Location: http://ORIGIN/two/page", "Content-Length: 0"]
            )
        },
    ),
    Case(
        "redirect-default-no-match",
        f"location /one/ {{ {P}/two/; }}",
        "/one/l3",
        routes={
            "/two/l3": raw_route(
                "302 Found", ["Location: http://ORIGIN/other", "Content-Length: 0"]
            )
        },
    ),
    Case(
        "redirect-relative-untouched",
        f"location / {{ {P}; }}",
        "/l4",
        routes={
            "/l4": raw_route(
                "302 Found", ["X-B: 1", "Location: /rel", "X-A: 1", "Content-Length: 0"]
            )
        },
    ),
    Case(
        "redirect-elsewhere-untouched",
        f"location / {{ {P}; }}",
        "/l5",
        routes={
            "/l5": raw_route("302 Found", ["Location: https://other.example/", "Content-Length: 0"])
        },
    ),
    Case(
        "redirect-off",
        f"location / {{ {P}; proxy_redirect off; }}",
        "/l6",
        routes={"/l6": raw_route("302 Found", ["Location: http://ORIGIN/x", "Content-Length: 0"])},
    ),
    Case(
        "redirect-explicit",
        f"location / {{ {P}; proxy_redirect http://ORIGIN/x/ /new/; }}",
        "/l7",
        routes={
            "/l7": raw_route("302 Found", ["Location: http://ORIGIN/x/y", "Content-Length: 0"])
        },
    ),
    Case(
        "redirect-explicit-absolute",
        f"location / {{ {P}; proxy_redirect http://ORIGIN/ https://front.example/; }}",
        "/l8",
        routes={"/l8": raw_route("302 Found", ["Location: http://ORIGIN/y", "Content-Length: 0"])},
    ),
    Case(
        "redirect-regex",
        f"location / {{ {P}; proxy_redirect ~^http://[^/]+/(\\w+)/(.*)$ /$2/$1; }}",
        "/l9",
        routes={
            "/l9": raw_route("302 Found", ["Location: http://ORIGIN/ab/cd", "Content-Length: 0"])
        },
    ),
    Case(
        "redirect-regex-caseless",
        f"location / {{ {P}; proxy_redirect ~*^HTTP://ORIGIN/(.*)$ /ci/$1; }}",
        "/l10",
        routes={"/l10": raw_route("302 Found", ["Location: http://ORIGIN/Z", "Content-Length: 0"])},
    ),
    Case(
        "redirect-variables",
        f"location / {{ {P}; proxy_redirect http://$proxy_host/ /via/; }}",
        "/l11",
        routes={"/l11": raw_route("302 Found", ["Location: http://ORIGIN/z", "Content-Length: 0"])},
    ),
    Case(
        "redirect-refresh",
        f"location / {{ {P}; }}",
        "/l12",
        routes={
            "/l12": raw_route("200 OK", ["Refresh: 5; URL=http://ORIGIN/next", "Content-Length: 0"])
        },
    ),
    Case(
        "redirect-multiple-rules",
        f"location / {{ {P}; proxy_redirect http://nomatch/ /a/;\n"
        "  proxy_redirect http://ORIGIN/ /b/; }",
        "/l13",
        routes={"/l13": raw_route("302 Found", ["Location: http://ORIGIN/q", "Content-Length: 0"])},
    ),
    Case(
        "redirect-server-level",
        f"proxy_redirect http://ORIGIN/ /srv/;\nlocation / {{ {P}; }}",
        "/l14",
        routes={"/l14": raw_route("302 Found", ["Location: http://ORIGIN/q", "Content-Length: 0"])},
    ),
    Case(
        "redirect-201-location",
        f"location / {{ {P}; }}",
        "/l15",
        routes={
            "/l15": raw_route("201 Created", ["Location: http://ORIGIN/made", "Content-Length: 0"])
        },
    ),
    Case(
        "redirect-exact-url",
        f"location / {{ {P}; }}",
        "/l16",
        routes={"/l16": raw_route("302 Found", ["Location: http://ORIGIN/", "Content-Length: 0"])},
    ),
    Case(
        "redirect-absolute-redirect-off",
        f"absolute_redirect off; location / {{ {P}; }}",
        "/l17",
        routes={"/l17": raw_route("302 Found", ["Location: http://ORIGIN/x", "Content-Length: 0"])},
    ),
    # -- proxy_cookie_path / proxy_cookie_domain -------------------------------------------
    Case(
        "cookie-path-and-domain",
        f"location / {{ {P}; proxy_cookie_path /two/ /; proxy_cookie_domain up.example "
        "front.example; }",
        "/ck1",
        routes={
            "/ck1": raw_route(
                "200 OK",
                [
                    "Set-Cookie: a=1;Path=/two/x ; Domain=.UP.example;HttpOnly",
                    "Set-Cookie: b=2; path=/other",
                    "Content-Length: 0",
                ],
            )
        },
    ),
    Case(
        "cookie-path-regex",
        f"location / {{ {P}; proxy_cookie_path ~^/(\\w+)/(.*)$ /$2/$1; }}",
        "/ck2",
        routes={"/ck2": raw_route("200 OK", ["Set-Cookie: c=3; Path=/aa/bb", "Content-Length: 0"])},
    ),
    Case(
        "cookie-off",
        f"proxy_cookie_path /two/ /;\nlocation / {{ {P}; proxy_cookie_path off; }}",
        "/ck3",
        routes={"/ck3": raw_route("200 OK", ["Set-Cookie: a=1; Path=/two/x", "Content-Length: 0"])},
    ),
    # -- intercepted errors ------------------------------------------------------------------
    Case(
        "intercept-named",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 404 = @fb; }}\n"
        f"location @fb {{ proxy_pass http://ORIGIN; }}",
        "/i1?status=404",
        routes={"/i1": raw_route("404 Not Found", ["Content-Length: 3"], b"nah")},
    ),
    Case(
        "intercept-uri-keeps-status",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 500 /err/page; }}\n"
        f"location /err/ {{ {P}; }}",
        "/i2?status=500",
    ),
    Case(
        "intercept-no-error-page",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 404 /x; }}",
        "/i3?status=403",
    ),
    Case(
        "intercept-off",
        f"location / {{ {P}; error_page 404 /x; }}",
        "/i4?status=404",
    ),
    Case(
        "intercept-post-body-sent-again",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 500 = @fb; }}\n"
        "location @fb { proxy_pass http://ORIGIN/fb$is_args$args; }",
        "/i8?status=500",
        method="POST",
        body=b"the body",
    ),
    Case(
        "request-body-variable",
        f"location / {{ {P}; proxy_set_header X-Body $request_body; }}",
        "/i9",
        method="POST",
        body=b"in-memory",
    ),
    Case(
        "intercept-401-keeps-challenge",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 401 = @fb; }}\n"
        f"location @fb {{ {P}; }}",
        "/i5",
        routes={
            "/i5": raw_route(
                "401 Unauthorized", ["WWW-Authenticate: Basic realm=x", "Content-Length: 0"]
            )
        },
    ),
    Case(
        "intercept-overwrite-status",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 502 =200 /err/ok; }}\n"
        f"location /err/ {{ {P}; }}",
        "/i6?status=502",
    ),
    Case(
        "intercept-builtin-page",
        f"location / {{ {P}; proxy_intercept_errors on; error_page 503 @none; }}",
        "/i7?status=503",
    ),
    # -- failures ----------------------------------------------------------------------------
    Case(
        "dead-upstream",
        "location / { proxy_pass http://127.0.0.1:DEAD/x; }",
        "/f1?a",
        compare_log=True,
    ),
    Case(
        "dead-upstream-block", "location / { proxy_pass http://deadgrp; }", "/f2", compare_log=True
    ),
    Case("closed-without-answer", f"location / {{ {P}; }}", "/f3?drop=1", compare_log=True),
    Case(
        "no-status-line",
        f"location / {{ {P}; }}",
        "/f4",
        compare_log=True,
        routes={"/f4": b"garbage\r\nConnection: close\r\n"},
    ),
    Case(
        "short-body",
        f"location / {{ {P}; }}",
        "/f5",
        compare_log=True,
        routes={"/f5": raw_route("200 OK", ["Content-Length: 10"], b"abc")},
    ),
    Case(
        "long-body",
        f"location / {{ {P}; }}",
        "/f6",
        routes={"/f6": raw_route("200 OK", ["Content-Length: 2"], b"abcdef")},
    ),
    Case("keepalive-upstream", f"location / {{ proxy_pass http://kagrp; {K11} }}", "/k?x"),
    Case(
        "keepalive-upstream-chunked",
        f"location / {{ proxy_pass http://kagrp; {K11} }}",
        "/k?chunked=1&size=5000&piece=1000",
    ),
]


# -- running a case --------------------------------------------------------------------------


def build_request(case: Case, host: str) -> bytes:
    if case.raw is not None:
        return case.raw.replace(b"HOST", host.encode())
    target = case.target.replace("HOST", host)
    lines = [f"{case.method} {target} {case.version}", f"Host: {host}"]
    lines += [f"{n}: {v}" for n, v in case.headers]
    if case.body is not None and not any(
        n.lower() in ("content-length", "transfer-encoding") for n, _ in case.headers
    ):
        lines.append(f"Content-Length: {len(case.body)}")
    if not case.keepalive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (case.body or b"")


def read_all(sock: socket.socket, case: Case, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    expect_continue = any(n.lower() == "expect" for n, _ in case.headers)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if case.keepalive and _complete(data):
                break
            if expect_continue and data == b"HTTP/1.1 100 Continue\r\n\r\n":
                continue
    except TimeoutError:
        data += b"<timeout>"
    return data


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"\r\nContent-Length: (\d+)", head)
    if m:
        return len(body) >= int(m.group(1))
    return b"chunked" in head and body.endswith(b"0\r\n\r\n")


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    rest = body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return body
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


def normalize_client(data: bytes, port: int) -> dict[str, Any]:
    text_port = str(port).encode()
    data = data.replace(b":" + text_port, b":PORT")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return {"raw": data.decode("latin-1")}
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        value = value.strip()
        if name == "Date":
            value = "DATE"
        elif name == "Server":
            value = re.sub(r"nginx/[\d.]+", "nginx/V", value)
        elif name.lower() == "transfer-encoding" and "chunked" in value:
            chunked = True
        headers.append(f"{name}: {value}")
    if chunked:
        body = dechunk(body)
    body = re.sub(rb"nginx/[\d.]+", b"nginx/V", body)
    try:
        echo = json.loads(body)
        echo.pop("conn", None)
        shown: Any = echo
    except ValueError:
        shown = body.decode("latin-1")
    return {"status": lines[0], "headers": headers, "body": shown}


def recorded(reqs: list[Recorded], port: int) -> list[dict[str, Any]]:
    out = []
    for r in reqs:
        headers = [(n, v.replace(f":{port}", ":PORT")) for n, v in r.headers]
        out.append(
            {
                "method": r.method,
                "target": r.target,
                "version": r.version,
                "headers": headers,
                "body": r.body_sha256,
            }
        )
    return out


def log_lines(text: str, port: int, dead: int) -> list[str]:
    out = []
    for line in text.splitlines():
        if "[notice]" in line or "client closed connection while waiting" in line:
            continue
        m = re.search(r"\[(\w+)\] \d+#\d+: \*\d+ (.*)$", line)
        if m is None:
            continue
        text_line = f"[{m.group(1)}] {m.group(2)}".replace(f":{port}", ":PORT")
        out.append(text_line.replace(f":{dead}", ":DEAD"))
    return out


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.origin = HttpBackend()
        self.dead = free_port()
        self.ports = {"nginx": free_port(), "pyngx": free_port()}
        self.servers: dict[str, Any] = {}
        for case in CASES:
            for path, raw in case.routes.items():
                self.origin.routes[path] = raw.replace(b"ORIGIN", self.origin.address.encode())
        for kind in ("nginx", "pyngx"):
            body = self.http_conf(self.ports[kind])
            if kind == "nginx":
                prefix = Nginx.prefix_dir(tmp, "nginx")
                server: Any = Nginx(tmp, nginx_conf(body, prefix=prefix, level="info"))
            else:
                prefix = Pyngx.prefix_dir(tmp, "pyngx")
                server = Pyngx(tmp, pyngx_conf(body, prefix=prefix, level="info"))
            server.start()
            self.servers[kind] = server

    def http_conf(self, port: int) -> str:
        out = [
            "http {",
            "  access_log off;",
            f"  upstream grp {{ server {self.origin.address}; }}",
            f"  upstream kagrp {{ server {self.origin.address}; keepalive 4; }}",
            f"  upstream deadgrp {{ server 127.0.0.1:{self.dead}; }}",
            f"  server {{ listen 127.0.0.1:{port} default_server; server_name _; }}",
        ]
        for i, case in enumerate(CASES):
            if case.needs_rewrite and not HAVE_REWRITE:
                continue
            conf = case.conf.replace("ORIGIN", self.origin.address)
            conf = conf.replace("DEAD", str(self.dead))
            out.append(f"  server {{ listen 127.0.0.1:{port}; server_name c{i};\n{conf}\n  }}")
        out.append("}")
        return "\n".join(out) + "\n"

    def run(self, kind: str, i: int, case: Case) -> dict[str, Any]:
        port = self.ports[kind]
        server = self.servers[kind]
        mark = len(server.error_log_text())
        self.origin.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(build_request(case, f"c{i}"))
            data = read_all(sock, case)
        result = {
            "client": normalize_client(data, port),
            "origin": recorded(list(self.origin.requests), port),
        }
        if case.compare_log:
            deadline = time.monotonic() + 2
            lines: list[str] = []
            while time.monotonic() < deadline:
                lines = log_lines(server.error_log_text()[mark:], port, self.dead)
                if lines:
                    break
                time.sleep(0.05)
            time.sleep(0.1)
            result["log"] = log_lines(server.error_log_text()[mark:], port, self.dead)
        return result

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.origin.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not nginx_available():
        pytest.skip("Debian's nginx is not installed")
    lab = Lab(tmp_path_factory.mktemp("proxy-vs-nginx"))
    yield lab
    lab.close()


def _params() -> list[Any]:
    out = []
    for i, case in enumerate(CASES):
        marks = []
        if case.needs_parser and STAND_IN_PARSER:
            marks.append(
                pytest.mark.xfail(reason="the stand-in request parser does not normalise URIs")
            )
        if case.known:
            marks.append(pytest.mark.xfail(reason=case.known, strict=True))
        if case.needs_rewrite and not HAVE_REWRITE:
            marks.append(pytest.mark.skip(reason="the rewrite module is not in this tree yet"))
        out.append(pytest.param(i, case, id=case.id, marks=marks))
    return out


@pytest.mark.parametrize(("index", "case"), _params())
def test_proxy_like_nginx(lab: Lab, index: int, case: Case) -> None:
    want = lab.run("nginx", index, case)
    got = lab.run("pyngx", index, case)
    assert got == want


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 100
