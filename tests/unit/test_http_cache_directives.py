"""The cache directives: nginx's errors (texts checked against Debian's nginx 1.22.1 `-t`),
defaults, inheritance, and what proxy_cache_path creates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyngx.conf.errors import ConfigError
from tests.unit._http_cache_fakes import load, request

P = "proxy_cache_path {d}/c1 keys_zone=z:1m;"


def err(tmp_path: Path, body: str) -> str:
    """The error text, with the location made relative ('D' for the file)."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body.replace("{d}", str(tmp_path)))
    text = str(info.value)
    conf = str(tmp_path / "prefix" / "conf" / "pyngx.conf")
    return text.replace(conf, "D").replace(str(tmp_path), "T")


# The body starts at line 7 of D (see _http_cache_fakes.load).
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("proxy_cache_path {d}/c1 levels=3 keys_zone=z:10m;", 'invalid "levels" "levels=3" in D:7'),
        (
            "proxy_cache_path {d}/c1 levels=1:2:2:2 keys_zone=z:10m;",
            'invalid "levels" "levels=1:2:2:2" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 levels=1: keys_zone=z:10m;",
            'invalid "levels" "levels=1:" in D:7',
        ),
        ("proxy_cache_path {d}/c1 keys_zone=z;", 'invalid keys zone size "keys_zone=z" in D:7'),
        ("proxy_cache_path {d}/c1 keys_zone=z:;", 'invalid keys zone size "keys_zone=z:" in D:7'),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:abc;",
            'invalid keys zone size "keys_zone=z:abc" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:1g;",
            'invalid keys zone size "keys_zone=z:1g" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:8191;",
            'keys zone "keys_zone=z:8191" is too small in D:7',
        ),
        ("proxy_cache_path {d}/c1 keys_zone=z:0;", 'keys zone "keys_zone=z:0" is too small in D:7'),
        (
            "proxy_cache_path {d}/c1 keys_zone=:10m;",
            '"proxy_cache_path" must have "keys_zone" parameter in D:7',
        ),
        (
            "proxy_cache_path {d}/c1;",
            'invalid number of arguments in "proxy_cache_path" directive in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 inactive=1x keys_zone=z:1m;",
            'invalid inactive value "inactive=1x" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:1m inactive=500ms;",
            'invalid inactive value "inactive=500ms" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 max_size=1x keys_zone=z:1m;",
            'invalid max_size value "max_size=1x" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:1m max_size=9223372036854775808;",
            'invalid max_size value "max_size=9223372036854775808" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 min_free=-1 keys_zone=z:1m;",
            'invalid min_free value "min_free=-1" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 use_temp_path=yes keys_zone=z:1m;",
            'invalid use_temp_path value "use_temp_path=yes", it must be "on" or "off" in D:7',
        ),
        ("proxy_cache_path {d}/c1 foo=bar keys_zone=z:1m;", 'invalid parameter "foo=bar" in D:7'),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:1m; proxy_cache_path {d}/c2 keys_zone=z:1m;",
            'duplicate zone "z" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:1m;\nproxy_cache_path {d}/c1 keys_zone=y:1m;",
            'the same path name "T/c1" used in D:7 and in D:8',
        ),
        (
            "proxy_cache_path {d}/c1 keys_zone=z:1m; proxy_cache_path {d}/c2 keys_zone=z:2m;",
            'the size 2097152 of shared memory zone "z" conflicts with already declared size'
            " 1048576 in D:7",
        ),
        (
            "proxy_cache_path {d}/c1 loader_files=x keys_zone=z:1m;",
            'invalid loader_files value "loader_files=x" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 loader_files=-1 keys_zone=z:1m;",
            'invalid loader_files value "loader_files=-1" in D:7',
        ),
        (
            "proxy_cache_path {d}/c1 manager_sleep=x keys_zone=z:1m;",
            'invalid manager_sleep value "manager_sleep=x" in D:7',
        ),
        (
            "server { proxy_cache_path {d}/c1 keys_zone=z:1m; }",
            '"proxy_cache_path" directive is not allowed here in D:7',
        ),
        (P + " proxy_cache_valid 200 x;", 'invalid time value "x" in D:7'),
        (P + " proxy_cache_valid 500ms;", 'invalid time value "500ms" in D:7'),
        (P + " proxy_cache_valid 99 1m;", 'invalid status "99" in D:7'),
        (P + " proxy_cache_valid foo 1m;", 'invalid status "foo" in D:7'),
        (P + " proxy_cache_valid 600 1m;", 'invalid status "600" in D:7'),
        (
            P + " proxy_cache_valid;",
            'invalid number of arguments in "proxy_cache_valid" directive in D:7',
        ),
        (P + " proxy_cache_methods POST PUT;", 'invalid value "PUT" in D:7'),
        (P + " proxy_cache_methods FOO;", 'invalid value "FOO" in D:7'),
        (P + " proxy_cache_min_uses x;", '"proxy_cache_min_uses" directive invalid number in D:7'),
        (
            P + " proxy_cache_min_uses 1; proxy_cache_min_uses 2;",
            '"proxy_cache_min_uses" directive is duplicate in D:7',
        ),
        (P + " proxy_cache_use_stale foo;", 'invalid value "foo" in D:7'),
        (
            P + " proxy_cache_lock maybe;",
            'invalid value "maybe" in "proxy_cache_lock" directive, it must be "on" or "off"'
            " in D:7",
        ),
        (
            P + " proxy_cache_lock_timeout x;",
            '"proxy_cache_lock_timeout" directive invalid value in D:7',
        ),
        (P + " proxy_ignore_headers foo;", 'invalid value "foo" in D:7'),
        (
            P + " proxy_cache_key a; proxy_cache_key b;",
            '"proxy_cache_key" directive is duplicate in D:7',
        ),
        (P + " proxy_cache_key $nosuch;", 'unknown "nosuch" variable'),
        (
            P + " proxy_cache_max_range_offset x;",
            '"proxy_cache_max_range_offset" directive invalid value in D:7',
        ),
        (
            P + " proxy_cache_bypass;",
            'invalid number of arguments in "proxy_cache_bypass" directive in D:7',
        ),
        (P + " proxy_cache_bypass $nosuch;", 'unknown "nosuch" variable'),
        (
            P + " proxy_cache_revalidate yes;",
            'invalid value "yes" in "proxy_cache_revalidate" directive, it must be "on" or'
            ' "off" in D:7',
        ),
        (
            P + " server { location / { proxy_cache z; proxy_cache off; } }",
            '"proxy_cache" directive is duplicate in D:7',
        ),
    ],
)
def test_errors_as_nginx(tmp_path: Path, body: str, message: str) -> None:
    assert err(tmp_path, body) == message


def test_not_allowed_in_if(tmp_path: Path) -> None:
    body = P + " server { location / { if ($arg_x) { proxy_cache z; } } }"
    assert err(tmp_path, body) == '"proxy_cache" directive is not allowed here in D:7'


def test_unknown_zone_is_reported_at_the_end_of_http(tmp_path: Path) -> None:
    body = "server {\n  location / {\n    proxy_cache zz;\n  }\n}\n"
    # http's closing brace: line 13 of D (the body runs from line 7 to 12)
    assert err(tmp_path, body) == '"proxy_cache" zone "zz" is unknown in D:13'
    body = P + "\nproxy_cache zz;\nserver { }\n"
    assert err(tmp_path, body).startswith('"proxy_cache" zone "zz" is unknown in D:')


def test_mkdir_failure(tmp_path: Path) -> None:
    message = err(tmp_path, "proxy_cache_path relative/dir keys_zone=y:1m;")
    assert message == 'mkdir() "T/prefix/relative/dir" failed (2: No such file or directory)'


@pytest.mark.parametrize(
    "body",
    [
        P + " proxy_cache_methods get;",
        P + " proxy_cache_min_uses 0;",
        P + " proxy_cache_use_stale off error;",
        P + " proxy_cache_use_stale http_404 http_429 updating invalid_header timeout;",
        P + " proxy_cache_use_stale non_idempotent;",
        P + " proxy_cache_lock_age 0; proxy_cache_lock_timeout 0;",
        P + " proxy_ignore_headers x-accel-expires Set-Cookie;",
        P + " proxy_ignore_headers Vary; proxy_ignore_headers Expires;",
        P + " proxy_no_cache $arg_a; proxy_no_cache $arg_b;",
        P + " proxy_cache_valid 200 1m; proxy_cache_valid 404 1m; proxy_cache_valid any 200 1m;",
        P + " proxy_cache_max_range_offset 10m;",
        "proxy_cache_path {d}/c1 keys_zone=z:1M levels= inactive=0 max_size=0 min_free=1k;",
        "proxy_cache_path {d}/c1/ keys_zone=z:1m levels=2:2:2 manager_sleep=0 loader_threshold=1s;",
        "server { location / { proxy_cache z; } }\nproxy_cache_path {d}/c1 keys_zone=z:1m;",
    ],
)
def test_accepted_as_nginx(tmp_path: Path, body: str) -> None:
    load(tmp_path, body.replace("{d}", str(tmp_path)))


def test_defaults(tmp_path: Path) -> None:
    c = load(tmp_path, P.format(d=tmp_path) + " server { location / { proxy_cache z; } }")
    s = request(c, "/").loc.cache  # type: ignore[attr-defined]
    assert s.zone.name == "z"
    assert s.key is None  # the proxy's own key (the upstream URL)
    assert s.methods == frozenset(("GET", "HEAD"))
    assert (s.min_uses, s.valid, s.bypass, s.no_cache) == (1, (), (), ())
    assert (s.use_stale, s.ignore) == (frozenset(), frozenset())
    assert (s.lock, s.lock_timeout, s.lock_age) == (False, 5.0, 5.0)
    assert (s.background_update, s.revalidate, s.convert_head) == (False, False, True)
    assert s.max_range_offset is None
    zone = s.zone
    assert (zone.inactive, zone.max_size, zone.min_free, zone.use_temp_path) == (600, None, 0, True)
    assert (zone.loader_files, zone.loader_sleep, zone.loader_threshold) == (100, 0.05, 0.2)
    assert (zone.manager_files, zone.manager_sleep, zone.manager_threshold) == (100, 0.05, 0.2)
    assert zone.levels == ()


def test_inheritance_and_lists(tmp_path: Path) -> None:
    body = (
        P.format(d=tmp_path)
        + """
        proxy_cache z;
        proxy_cache_valid 200 1m;
        proxy_cache_valid 404 5s;
        proxy_cache_use_stale error timeout;
        proxy_cache_methods POST;
        server {
            proxy_cache_lock on;
            location /a { }
            location /b { proxy_cache_valid 10s; proxy_cache_use_stale off updating; }
            location /c { proxy_cache off; }
            location /d { proxy_cache_bypass $arg_x; proxy_cache_bypass $arg_y $arg_z; }
        }
    """
    )
    c = load(tmp_path, body)
    a = request(c, "/a").loc.cache  # type: ignore[attr-defined]
    assert a.valid == ((200, 60), (404, 5))
    assert a.use_stale == frozenset(("error", "timeout"))
    assert a.methods == frozenset(("GET", "HEAD", "POST"))
    assert a.lock
    b = request(c, "/b").loc.cache  # type: ignore[attr-defined]
    assert b.valid == ((200, 10), (301, 10), (302, 10))
    assert b.use_stale == frozenset()  # off wins
    assert request(c, "/c").loc.cache is None  # type: ignore[attr-defined]
    assert len(request(c, "/d").loc.cache.bypass) == 3  # type: ignore[attr-defined]


def test_paths_are_created_like_nginx(tmp_path: Path) -> None:
    c = load(
        tmp_path,
        "proxy_cache_path cache keys_zone=z:1m;"
        f" proxy_cache_path /{tmp_path}/abs/ keys_zone=y:1m use_temp_path=off;",
    )
    prefix = tmp_path / "prefix"
    assert (prefix / "cache").is_dir()
    assert oct((prefix / "cache").stat().st_mode & 0o777) == "0o700"
    assert (prefix / "proxy_temp").is_dir()  # use_temp_path=on (the default)
    assert (tmp_path / "abs").is_dir()
    zones = {cp.name: cp for cp in c.http.caches}  # type: ignore[union-attr]
    assert zones["z"].path == str(prefix / "cache")
    assert zones["z"].temp_dir == str(prefix / "proxy_temp")
    assert zones["y"].path == os.path.normpath(f"/{tmp_path}/abs") or zones["y"].path.endswith(
        "/abs"
    )
    assert zones["y"].temp_dir is None
    assert zones["z"].index is not None and zones["z"].hot is not None


def test_redis_path(tmp_path: Path) -> None:
    c = load(tmp_path, "proxy_cache_path redis://127.0.0.1:6390/2 keys_zone=r:1m inactive=30s;")
    cp = c.http.caches[0]  # type: ignore[union-attr]
    assert cp.redis == ("127.0.0.1", 6390, 2)
    assert cp.store is not None and cp.store.inactive_ms == 30000
    assert cp.file_path("ab") == "redis://127.0.0.1:6390/2/ab"
    assert err(tmp_path, "proxy_cache_path redis://h:x keys_zone=r:1m;") == (
        'invalid redis cache path "redis://h:x" in D:7'
    )
