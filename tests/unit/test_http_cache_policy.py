"""The cache's pure decisions (pyngx/http/cache/policy.py), against nginx's rules.

Cases marked "nginx 1.22" were checked against Debian's nginx 1.22.1 (second request HIT
or MISS with the same upstream headers, no proxy_cache_valid unless stated).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyngx.http.cache import policy as p
from pyngx.http.httpdate import http_date

NOW = 1_700_000_000
NOTHING: frozenset[str] = frozenset()
FUTURE = http_date(NOW + 3600)
PAST = http_date(NOW - 3600)


def fresh(headers: list[tuple[str, str]], ignore: frozenset[str] = NOTHING) -> p.Freshness:
    return p.parse_freshness(headers, ignore, NOW)


def stored(
    headers: list[tuple[str, str]],
    status: int = 200,
    valid: tuple[tuple[int, int], ...] = (),
    ignore: frozenset[str] = NOTHING,
    no_cache: bool = False,
) -> p.Decision:
    return p.decide(status, fresh(headers, ignore), valid, NOW, no_cache=no_cache)


# -- the header rules, one by one (nginx 1.22) ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "cached", "valid"),
    [
        ([("Cache-Control", "max-age=100")], True, NOW + 100),
        ([("Cache-Control", "s-maxage=100")], True, NOW + 100),
        ([("Cache-Control", "max-age=0")], False, 0),
        ([("Cache-Control", "private")], False, 0),
        ([("Cache-Control", "no-cache")], False, 0),
        ([("Cache-Control", "no-store")], False, 0),
        ([("Cache-Control", "public")], False, 0),  # no validity at all
        ([("Expires", FUTURE)], True, NOW + 3600),
        ([("Expires", PAST)], False, 0),
        ([("Expires", "garbage")], False, 0),
        ([("X-Accel-Expires", "100")], True, NOW + 100),
        ([("X-Accel-Expires", "0")], False, 0),
        ([("X-Accel-Expires", "@4000000000")], True, 4000000000),
        ([("X-Accel-Expires", "100"), ("Cache-Control", "no-cache")], True, NOW + 100),
        ([("Cache-Control", "max-age=100"), ("Expires", PAST)], True, NOW + 100),
        ([("Cache-Control", "max-age=100"), ("Set-Cookie", "a=b")], False, 0),
        ([("Cache-Control", "max-age=100"), ("Vary", "*")], False, 0),
        ([("Cache-Control", "max-age=1x")], False, 0),
        ([("Cache-Control", "max-age=100, no-store")], False, 0),
        ([("Cache-Control", "s-maxage=0,max-age=100")], False, 0),
        ([("X-Accel-Expires", "abc"), ("Cache-Control", "max-age=100")], True, NOW + 100),
        ([("Cache-Control", "max-age=100;")], True, NOW + 100),
    ],
)
def test_headers_as_nginx_1_22(headers: list[tuple[str, str]], cached: bool, valid: int) -> None:
    d = stored(headers)
    assert d.cacheable is cached, d
    assert d.valid_sec == valid


@pytest.mark.parametrize(
    "headers",
    [
        # nginx 1.22 applied the rules in header order: these two were not cached there;
        # 1.23 fixed that (ticket #964) and so do we: the precedence holds in any order.
        [("Cache-Control", "no-cache"), ("X-Accel-Expires", "100")],
        [("Expires", PAST), ("Cache-Control", "max-age=100")],
    ],
)
def test_precedence_in_any_order(headers: list[tuple[str, str]]) -> None:
    d = stored(headers)
    assert d.cacheable
    assert d.valid_sec == NOW + 100


def test_precedence_x_accel_expires_over_cache_control_over_expires() -> None:
    xae = ("X-Accel-Expires", "10")
    cc = ("Cache-Control", "max-age=20")
    ex = ("Expires", FUTURE)
    for order in ([xae, cc, ex], [cc, xae, ex], [ex, cc, xae], [ex, xae, cc], [cc, ex, xae]):
        assert stored(order).valid_sec == NOW + 10, order
    for order in ([cc, ex], [ex, cc]):
        assert stored(order).valid_sec == NOW + 20, order
    assert stored([ex]).valid_sec == NOW + 3600


def test_proxy_cache_valid_is_the_last_resort() -> None:
    valid = ((200, 60), (404, 5))
    assert stored([], valid=valid).valid_sec == NOW + 60
    assert stored([], 404, valid).valid_sec == NOW + 5
    assert not stored([], 500, valid).cacheable
    assert stored([("Cache-Control", "max-age=7")], valid=valid).valid_sec == NOW + 7
    # ...but it does not override a refusal
    assert not stored([("Cache-Control", "no-store")], valid=valid).cacheable
    assert not stored([("Set-Cookie", "x=1")], valid=valid).cacheable


def test_any_status_can_be_cached_with_a_validity() -> None:
    assert stored([("Cache-Control", "max-age=9")], 404).valid_sec == NOW + 9
    assert stored([("X-Accel-Expires", "9")], 500).valid_sec == NOW + 9


def test_valid_for_status_first_match_and_any() -> None:
    table = ((200, 10), (0, 20), (404, 30))
    assert p.valid_for_status(table, 200) == 10
    assert p.valid_for_status(table, 404) == 20  # `any` comes first
    assert p.valid_for_status((), 200) == 0
    assert p.valid_for_status(((301, 1),), 200) == 0


def test_ignore_headers() -> None:
    ign = frozenset(("set-cookie", "vary", "cache-control", "expires", "x-accel-expires"))
    valid = ((200, 60),)
    d = stored(
        [
            ("Set-Cookie", "a=b"),
            ("Vary", "*"),
            ("Cache-Control", "no-store"),
            ("Expires", PAST),
            ("X-Accel-Expires", "0"),
        ],
        valid=valid,
        ignore=ign,
    )
    assert d.cacheable and d.valid_sec == NOW + 60
    assert stored([("Set-Cookie", "a")], valid=valid, ignore=frozenset(["set-cookie"])).cacheable
    f = fresh([("Vary", "Accept-Encoding")], frozenset(["vary"]))
    assert f.vary is None


def test_no_cache_predicate_refuses() -> None:
    d = stored([("Cache-Control", "max-age=9")], no_cache=True)
    assert not d.cacheable and d.reason == "proxy_no_cache"


def test_cache_control_is_a_case_insensitive_substring_search() -> None:
    assert not stored([("Cache-Control", "NO-CACHE")]).cacheable
    assert not stored([("Cache-Control", 'no-cache="Set-Cookie", max-age=60')]).cacheable
    assert not stored([("Cache-Control", "privatestuff, max-age=60")]).cacheable
    assert stored([("Cache-Control", "Max-Age=60")]).valid_sec == NOW + 60
    assert stored([("Cache-Control", "public, max-age=60 ")]).valid_sec == NOW + 60
    assert not stored([("Cache-Control", 'max-age="60"')]).cacheable
    assert not stored([("Cache-Control", "max-age=")]).cacheable  # 0


def test_several_cache_control_lines() -> None:
    d = stored([("Cache-Control", "public"), ("Cache-Control", "max-age=30")])
    assert d.valid_sec == NOW + 30
    assert not stored([("Cache-Control", "max-age=30"), ("Cache-Control", "private")]).cacheable


def test_stale_extensions() -> None:
    f = fresh([("Cache-Control", "max-age=10, stale-while-revalidate=20")])
    assert (f.valid_sec, f.updating_sec, f.error_sec) == (NOW + 10, 20, 20)
    f = fresh([("Cache-Control", "max-age=10, stale-while-revalidate=20, stale-if-error=5")])
    assert (f.updating_sec, f.error_sec) == (20, 5)
    f = fresh([("Cache-Control", "stale-if-error=5, max-age=10")])
    assert (f.valid_sec, f.updating_sec, f.error_sec) == (NOW + 10, 0, 5)
    assert not fresh([("Cache-Control", "max-age=1, stale-if-error=x")]).cacheable
    # X-Accel-Expires set first: Cache-Control only contributes its extensions
    f = fresh([("X-Accel-Expires", "5"), ("Cache-Control", "max-age=50, stale-if-error=7")])
    assert (f.valid_sec, f.error_sec) == (NOW + 5, 7)


def test_duplicate_expires_and_x_accel_expires_lines_are_ignored() -> None:
    assert stored([("X-Accel-Expires", "5"), ("X-Accel-Expires", "0")]).valid_sec == NOW + 5
    far = http_date(NOW + 99)
    assert stored([("Expires", FUTURE), ("Expires", far)]).valid_sec == NOW + 3600


def test_x_accel_expires_values() -> None:
    assert stored([("X-Accel-Expires", "-5")], valid=((200, 1),)).valid_sec == NOW + 1
    assert stored([("X-Accel-Expires", "@")], valid=((200, 1),)).valid_sec == NOW + 1
    # in the past: still stored (then expired at once), as nginx does
    assert stored([("X-Accel-Expires", "@5")]).valid_sec == 5


def test_huge_max_age_is_clamped() -> None:
    d = stored([("Cache-Control", "max-age=" + "9" * 30)])
    assert d.cacheable and d.valid_sec == p.MAX_TIME


def test_vary() -> None:
    assert fresh([("Vary", "Accept-Encoding")]).vary == "Accept-Encoding"
    f = fresh([("Vary", "Accept-Encoding"), ("Vary", "Accept-Language")])
    assert f.vary == "Accept-Encoding, Accept-Language"
    assert not fresh([("Vary", "X-" + "a" * 130)]).cacheable
    assert not fresh([("Vary", "Accept"), ("Vary", "*")]).cacheable


# -- variants ----------------------------------------------------------------------------


def _reference_variant(main: bytes, vary: str, headers: list[tuple[str, str]]) -> bytes:
    """ngx_http_file_cache_vary written out the long way."""
    md5 = hashlib.md5(main)
    names = [n for n in vary.lower().replace(",", " ").split(" ") if n]
    for name in names:
        md5.update(name.encode() + b":")
        values = [v for n, v in headers if n.lower() == name]
        if name in ("accept-encoding", "accept-charset", "accept-language"):
            tokens = [t for v in values for t in v.replace(",", " ").split(" ") if t]
            md5.update(",".join(tokens).encode())
        else:
            md5.update(",".join(values).encode())
        md5.update(b"\r\n")
    return md5.digest()


def test_variant_hash() -> None:
    main = hashlib.md5(b"key").digest()
    gz = p.variant_hash(main, "Accept-Encoding", [("Accept-Encoding", "gzip")])
    assert gz == _reference_variant(main, "Accept-Encoding", [("Accept-Encoding", "gzip")])
    # normalised spaces (nginx 1.22: "gzip" and " gzip" hit the same variant)
    assert p.variant_hash(main, "accept-encoding", [("accept-encoding", "  gzip ")]) == gz
    assert p.variant_hash(main, "Accept-Encoding", [("Accept-Encoding", "br")]) != gz
    assert p.variant_hash(main, "Accept-Encoding", []) != gz
    # several lines of a header, other headers verbatim
    hs = [("X-A", "1"), ("x-a", "2"), ("Accept-Language", "en, fr")]
    assert p.variant_hash(main, "X-A, Accept-Language", hs) == _reference_variant(
        main, "X-A, Accept-Language", hs
    )
    # the main key is part of it
    other = hashlib.md5(b"other").digest()
    assert p.variant_hash(other, "Accept-Encoding", [("Accept-Encoding", "gzip")]) != gz


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Accept-Encoding", "X-Foo", "Cookie", "accept-language"]),
            st.text(alphabet="ab ,;=", max_size=8),
        ),
        max_size=5,
    ),
    st.sampled_from(["Accept-Encoding", "X-Foo, Cookie", "accept-language,x-foo", "Cookie"]),
)
def test_variant_hash_matches_reference(headers: list[tuple[str, str]], vary: str) -> None:
    main = b"\x01" * 16
    assert p.variant_hash(main, vary, headers) == _reference_variant(main, vary, headers)


# -- validators, predicates, ranges ------------------------------------------------------


def test_validators() -> None:
    lm = http_date(NOW)
    hs = [("Last-Modified", lm), ("ETag", '"abc"')]
    assert p.validators(200, hs) == (NOW, '"abc"')
    assert p.validators(206, hs) == (NOW, '"abc"')
    assert p.validators(404, hs) == (-1, "")
    assert p.validators(200, []) == (-1, "")
    assert p.validators(200, [("ETag", '"' + "x" * 200 + '"')]) == (-1, "")


def test_declines() -> None:
    assert not p.declines([])
    assert not p.declines(["", "0"])
    assert p.declines(["", "1"])
    assert p.declines(["no"])
    assert p.declines(["00"])  # only "0" itself says no


@pytest.mark.parametrize(
    ("value", "limit", "ok"),
    [
        (None, 10, True),
        ("bytes=0-5", None, True),
        ("bytes=0-5", 0, False),
        ("bytes=5-9", 10, True),
        ("bytes=10-", 10, False),
        ("bytes= 10-", 10, False),
        ("bytes=-5", 10, False),  # a suffix range: never
        ("items=20-", 10, True),  # not bytes: nginx lets it through
        ("bytes=", 10, True),  # too short to look at
        ("BYTES=20-", 10, False),
    ],
)
def test_range_cacheable(value: str | None, limit: int | None, ok: bool) -> None:
    assert p.range_cacheable(value, limit) is ok


# -- using entries -----------------------------------------------------------------------


def test_entry_state() -> None:
    assert p.entry_state(NOW, 0, 0, NOW) == p.EntryState(False, False, False)
    assert p.entry_state(NOW - 1, 0, 0, NOW) == p.EntryState(True, False, False)
    assert p.entry_state(NOW - 5, 10, 3, NOW) == p.EntryState(True, True, False)
    assert p.entry_state(NOW - 5, 5, 5, NOW) == p.EntryState(True, True, True)


@pytest.mark.parametrize(
    ("opened", "stale_updating_setting", "window", "bg", "status", "action", "cacheable"),
    [
        ("hit", False, False, False, "HIT", p.SERVE, True),
        ("error", False, False, False, "HIT", p.ERROR, True),
        ("miss", False, False, False, "MISS", p.UPSTREAM, True),
        ("scarce", False, False, False, "MISS", p.UPSTREAM, False),
        ("stale", False, False, False, "EXPIRED", p.UPSTREAM, True),
        ("stale", True, False, False, "EXPIRED", p.UPSTREAM, True),  # no background update
        ("stale", True, False, True, "STALE", p.SERVE_AND_UPDATE, True),
        ("stale", False, True, True, "STALE", p.SERVE_AND_UPDATE, True),  # swr window
        ("updating", False, False, False, "EXPIRED", p.UPSTREAM, True),
        ("updating", True, False, False, "UPDATING", p.SERVE, True),
        ("updating", False, True, False, "UPDATING", p.SERVE, True),
    ],
)
def test_classify(
    opened: str,
    stale_updating_setting: bool,
    window: bool,
    bg: bool,
    status: str,
    action: str,
    cacheable: bool,
) -> None:
    out = p.classify(
        opened,
        use_stale_updating=stale_updating_setting,
        stale_updating=window,
        background_update=bg,
    )
    assert (out.status, out.action, out.cacheable) == (status, action, cacheable)


def test_classify_background_request_never_serves_stale() -> None:
    out = p.classify(
        "updating",
        use_stale_updating=True,
        stale_updating=True,
        background_update=True,
        background_request=True,
    )
    assert out.action == p.UPSTREAM
    with pytest.raises(ValueError):
        p.classify("bogus", use_stale_updating=False, stale_updating=False, background_update=False)


def test_stale_allowed() -> None:
    use = frozenset(("error", "http_502"))
    assert p.stale_allowed(use, "error", False)
    assert p.stale_allowed(use, "no_live", False)  # error implies no live upstreams
    assert p.stale_allowed(use, "http_502", False)
    assert not p.stale_allowed(use, "timeout", False)
    assert p.stale_allowed(NOTHING, "timeout", True)  # stale-if-error window


def test_revalidation_headers() -> None:
    assert p.revalidation_headers(-1, "") == []
    assert p.revalidation_headers(NOW, '"e"') == [
        ("If-Modified-Since", http_date(NOW)),
        ("If-None-Match", '"e"'),
    ]


def test_revalidated_valid() -> None:
    none = p.Freshness()
    r304 = p.Freshness(valid_sec=NOW + 5, updating_sec=1, error_sec=2)
    cached = p.Freshness(valid_sec=NOW + 50, updating_sec=3, error_sec=4)
    assert p.revalidated_valid(r304, cached, ((200, 9),), 200, NOW) == (NOW + 5, 1, 2)
    assert p.revalidated_valid(none, cached, ((200, 9),), 200, NOW) == (NOW + 50, 3, 4)
    assert p.revalidated_valid(none, none, ((200, 9),), 200, NOW) == (NOW + 9, 0, 0)
    assert p.revalidated_valid(none, none, (), 200, NOW) == (0, 0, 0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["Cache-Control", "Expires", "X-Accel-Expires", "Set-Cookie", "Vary", "X-Other"]
            ),
            st.one_of(
                st.sampled_from(
                    ["max-age=5", "no-cache", "0", "10", "@9", FUTURE, PAST, "*", "a, b", ""]
                ),
                st.text(max_size=12),
            ),
        ),
        max_size=6,
    )
)
def test_parse_freshness_never_fails_and_is_consistent(headers: list[tuple[str, str]]) -> None:
    f = fresh(headers)
    d = p.decide(200, f, ((200, 60),), NOW)
    assert d.cacheable == f.cacheable
    if d.cacheable:
        assert d.valid_sec != 0
    assert 0 <= f.valid_sec <= p.MAX_TIME
