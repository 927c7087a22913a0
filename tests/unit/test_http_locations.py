"""Location parsing and selection (pyngx.http.locations), against nginx's rules.

The expected answers come from nginx's documentation and from Debian's nginx 1.22 (the
differential test in tests/e2e/test_http_locations_vs_nginx.py runs the same kind of tables
against the real thing). A property test compares the dictionary search with a port of nginx's
own binary location tree (ngx_http_create_locations_tree / ngx_http_core_find_static_location).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node, parse_string
from pyngx.http.locations import (
    REDIRECT_SLASH,
    LocationSpec,
    LocationTree,
    parse_location,
)


def location_id(node: Node) -> str:
    """`return 200 X;` inside the block gives X; otherwise the location's arguments."""
    for child in node.block or []:
        if child.name == "return":
            return child.args[-1]
    return " ".join(node.args)


def specs_from_nodes(nodes: list[Node], parent: LocationSpec | None = None) -> list[LocationSpec]:
    """What the http module does: parse each `location`, recurse, mark proxy_pass ones."""
    out: list[LocationSpec] = []
    for node in nodes:
        if node.name != "location":
            continue
        spec = parse_location(node, parent, location_id(node))
        spec.auto_redirect = any(c.name == "proxy_pass" for c in node.block or [])
        spec.children = specs_from_nodes(node.block or [], spec)
        out.append(spec)
    return out


def tree(text: str) -> LocationTree:
    return LocationTree.build(specs_from_nodes(parse_string(text)))


def loc(t: LocationTree, uri: str) -> str | None:
    found = t.find(uri)
    if found is None:
        return None
    conf, _ = found
    return "301" if conf is REDIRECT_SLASH else conf


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        tree(text)
    return info.value


# --------------------------------------------------------------------------------------------
# selection


DOCS_EXAMPLE = """
location = / { return 200 A; }
location / { return 200 B; }
location /documents/ { return 200 C; }
location ^~ /images/ { return 200 D; }
location ~* \\.(gif|jpg|jpeg)$ { return 200 E; }
"""


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/", "A"),
        ("/index.html", "B"),
        ("/documents/document.html", "C"),
        ("/images/1.gif", "D"),
        ("/documents/1.jpg", "E"),
        ("/documents/1.JPG", "E"),  # ~* ignores case
        ("/Images/1.gif", "E"),  # prefixes do not
        ("/images", "B"),
    ],
)
def test_docs_example(uri: str, expected: str) -> None:
    assert loc(tree(DOCS_EXAMPLE), uri) == expected


SELECTION = """
location / { return 200 ROOT; }
location /img/ { return 200 IMG; }
location ~ \\.gif$ { return 200 GIF; }
location ~ /img/$ { return 200 IMGDIR; }
location = /ex { return 200 EX; }
location /ex { return 200 EXP; }
location /n/ {
    location ^~ /n/x/ { return 200 NX; }
    return 200 N;
}
location ^~ /m/ {
    location /m/x/ { return 200 MX; }
    return 200 M;
}
location /k/ {
    location ~ \\.gif$ { return 200 KGIF; }
    location ~ \\.(gif|png)$ { return 200 KIMG; }
    return 200 K;
}
location ~ /r {
    location /r/s/ { return 200 RS; }
    location ~ /r/t { return 200 RT; }
    return 200 R;
}
location /abc { return 200 ABC; }
location /abcd/ { return 200 ABCD; }
location /ab { return 200 AB; }
"""


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/x", "ROOT"),
        # a regex beats a prefix, even a prefix equal to the URI
        ("/img/", "IMGDIR"),
        ("/img/1.gif", "GIF"),
        ("/img/1.png", "IMG"),
        ("/img", "ROOT"),
        # exact beats the prefix of the same name, only on equality
        ("/ex", "EX"),
        ("/exa", "EXP"),
        # a nested ^~ does not stop the enclosing level's regexes (nginx's find_location)
        ("/n/x/a.gif", "GIF"),
        ("/n/x/a.png", "NX"),
        ("/n/a.gif", "GIF"),
        ("/n/a", "N"),
        # an outer ^~ stops them all
        ("/m/x/a.gif", "MX"),
        ("/m/a.gif", "M"),
        # nested regexes first, in order
        ("/k/a.gif", "KGIF"),
        ("/k/a.png", "KIMG"),
        ("/k/a", "K"),
        # prefix locations inside a regex location are never used; nested regexes are
        ("/r/s/", "R"),
        ("/r/s/x", "R"),
        ("/r/t", "RT"),
        # longest prefix
        ("/abcd/e", "ABCD"),
        ("/abcd", "ABC"),
        ("/abc", "ABC"),
        ("/ab", "AB"),
        ("/a", "ROOT"),
    ],
)
def test_selection(uri: str, expected: str) -> None:
    assert loc(tree(SELECTION), uri) == expected


def test_no_match_is_none() -> None:
    t = tree("location /a { } location ~ ^/b { } location = /c { }")
    assert t.find("/x") is None
    assert t.find("/c/") is None
    assert loc(t, "/ab") == "/a"


def test_nested_miss_keeps_deepest_prefix() -> None:
    t = tree(
        """
        location /a/ {
            location /a/b/ { return 200 AB; }
            location ~ zzz$ { return 200 Z; }
            return 200 A;
        }
        """
    )
    assert loc(t, "/a/b/c") == "AB"
    assert loc(t, "/a/c") == "A"
    assert loc(t, "/a/b/zzz") == "Z"


def test_regex_order_and_captures() -> None:
    t = tree(
        """
        location ~ ^/(?<first>[a-z]+)/(\\d+)$ { return 200 ONE; }
        location ~ ^/([a-z]+)/ { return 200 TWO; }
        location ~* ^/UP/(.*) { return 200 UP; }
        """
    )
    conf, m = t.find("/abc/42")  # type: ignore[misc]
    assert conf == "ONE"
    assert m is not None and m.group("first") == "abc" and m.group(2) == "42"
    conf, m = t.find("/abc/x")  # type: ignore[misc]
    assert conf == "TWO" and m is not None and m.group(1) == "abc"
    conf, m = t.find("/UP/Z")  # type: ignore[misc]
    assert conf == "UP" and m is not None and m.group(1) == "Z"  # TWO needs lower case
    conf, m = t.find("/up/Z")  # type: ignore[misc]
    assert conf == "TWO"  # the first in order wins


def test_captures_come_from_the_last_regex_that_matched() -> None:
    t = tree(
        """
        location ~ /(o)uter {
            location ~ (i)nner$ { return 200 IN; }
            location /(o)uter/plain { return 200 DEAD; }
            return 200 OUT;
        }
        location /p/ { location ~ /p/(\\w+) { return 200 PW; } return 200 P; }
        """
    )
    conf, m = t.find("/outer/inner")  # type: ignore[misc]
    assert conf == "IN" and m is not None and m.group(1) == "i"
    conf, m = t.find("/outer/plain")  # type: ignore[misc]
    assert conf == "OUT" and m is not None and m.group(1) == "o"
    conf, m = t.find("/p/word")  # type: ignore[misc]
    assert conf == "PW" and m is not None and m.group(1) == "word"
    assert t.find("/p/") == ("P", None)


def test_empty_and_odd_names() -> None:
    t = tree('location "" { return 200 EMPTY; } location /a { return 200 A; }')
    assert loc(t, "/a/b") == "A"
    assert loc(t, "/b") == "EMPTY"
    t = tree("location ~ { return 200 ANY; } location = { return 200 NONE; }")
    assert loc(t, "/q") == "ANY"
    assert loc(t, "") == "NONE"


def test_prefix_match_is_case_sensitive() -> None:
    t = tree("location /Foo { return 200 F; }")
    assert loc(t, "/Foo/x") == "F"
    assert t.find("/foo/x") is None


# --------------------------------------------------------------------------------------------
# auto redirect


REDIRECTS = """
location / { return 200 ROOT; }
location /p/ { proxy_pass http://u; }
location /q/ { return 200 Q; }
location = /z/ { proxy_pass http://u; }
location /both/ { proxy_pass http://u; }
location = /both { return 200 BOTHEXACT; }
location /e/ {
    location /e/f/ { proxy_pass http://u; }
    return 200 E;
}
location ~ /rx { location /rx/y/ { proxy_pass http://u; } return 200 RX; }
location /nosl { proxy_pass http://u; }
location /pre { return 200 PRE; }
location /pre/ { proxy_pass http://u; }
location ~ ^/pre$ { return 200 PRERX; }
"""


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/p", "301"),
        ("/p/", "/p/"),
        ("/p/x", "/p/"),
        ("/q", "ROOT"),  # no proxy_pass, no redirect
        ("/z", "301"),  # exact locations redirect too
        ("/z/", "= /z/"),
        ("/both", "BOTHEXACT"),  # a location equal to the URI wins
        ("/e/f", "301"),  # nested
        ("/e/fg", "E"),
        ("/rx/y", "RX"),  # not inside a regex location
        ("/nos", "ROOT"),  # only names ending with '/'
        ("/pre", "PRERX"),  # equal prefix: regexes still run, no redirect
    ],
)
def test_auto_redirect(uri: str, expected: str) -> None:
    assert loc(tree(REDIRECTS), uri) == expected


# --------------------------------------------------------------------------------------------
# named


def test_named_locations() -> None:
    t = tree(
        """
        location @a { return 200 A1; }
        location @a { return 200 A2; }
        location @b { return 200 B; }
        location / { return 200 ROOT; }
        """
    )
    assert t.named("@a") == "A1"  # nginx takes the first of duplicates
    assert t.named("@b") == "B"
    assert t.named("@c") is None
    assert t.named("a") is None
    assert loc(t, "@a") is None  # never found by URI
    assert loc(t, "/@a") == "ROOT"


# --------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    ("args", "modifier", "name"),
    [
        ("/x", "", "/x"),
        ("= /x", "=", "/x"),
        ("=/x", "=", "/x"),
        ("^~ /x", "^~", "/x"),
        ("^~/x", "^~", "/x"),
        ("~ \\.php$", "~", "\\.php$"),
        ("~\\.php$", "~", "\\.php$"),
        ("~* \\.PHP$", "~*", "\\.PHP$"),
        ("~*\\.PHP$", "~*", "\\.PHP$"),
        ("@fallback", "@", "@fallback"),
        ("=", "=", ""),
        ("^~", "^~", ""),
        ("~", "~", ""),
        ("^x", "", "^x"),
        ("= @x", "=", "@x"),
    ],
)
def test_parse_forms(args: str, modifier: str, name: str) -> None:
    (node,) = parse_string(f"location {args} {{ }}")
    spec = parse_location(node, None, "c")
    assert (spec.modifier, spec.name) == (modifier, name)
    assert (spec.regex is not None) == modifier.startswith("~")
    if spec.regex is not None:
        assert bool(spec.regex.flags & re.IGNORECASE) == (modifier == "~*")


def test_glued_caseless_regex_matches() -> None:
    t = tree("location ~*\\.GIF$ { return 200 G; }")
    assert loc(t, "/a.gif") == "G"


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("location =^ /x {}", 'invalid location modifier "=^"', 1),
        ("location a b c {}", 'invalid number of arguments in "location" directive', 1),
        ("location /a {\nlocation /b {}\n}", 'location "/b" is outside location "/a"', 2),
        (
            "location = / {\n location /a {} }",
            'location "/a" cannot be inside the exact location "/"',
            2,
        ),
        (
            "location @n {\n location /x {} }",
            'location "/x" cannot be inside the named location "@n"',
            2,
        ),
        (
            "location /a {\n location @x {} }",
            'named location "@x" can be on the server level only',
            2,
        ),
        (
            "location ~ x {\n location @y {} }",
            'named location "@y" can be on the server level only',
            2,
        ),
        (
            "location ~ \\.php$ {\n location /x {} }",
            'location "/x" is outside location "\\.php$"',
            2,
        ),
        # the `{` carries nginx's line
        ("location /x {\n}\nlocation /y {}\nlocation /x\n{\n}", 'duplicate location "/x"', 5),
        ("location = /x {}\nlocation /x\n{}\nlocation = /x {}", 'duplicate location "/x"', 4),
        ("location ^~/x {}\nlocation /x {}", 'duplicate location "/x"', 2),
        ("location /a {\nlocation /a/b {}\nlocation /a/b\n {}\n}", 'duplicate location "/a/b"', 4),
        # nginx reports the first duplicate in its name order, innermost levels first
        (
            "location /b {}\nlocation /a {}\nlocation /b {}\nlocation /a {}",
            'duplicate location "/a"',
            4,
        ),
        (
            "location /z {}\nlocation /z {}\nlocation /a { location /a/q {}\nlocation /a/q {} }",
            'duplicate location "/a/q"',
            4,
        ),
    ],
)
def test_errors(text: str, message: str, line: int) -> None:
    exc = config_error(text)
    assert (exc.message, exc.line) == (message, line)


def test_pcre_errors() -> None:
    # nginx: `pcre2_compile() failed: missing closing parenthesis in "(" in <file>:2`; the
    # reason is Python's wording, the rest is nginx's, located at the line of the `{`.
    exc = config_error("location ~ (\n {}")
    assert exc.message.startswith("pcre2_compile() failed: missing )")
    assert ' in "("' in exc.message and exc.line == 2
    exc = config_error('location ~* "a{2}(?<1a>x)" {}')
    assert exc.message.startswith("pcre2_compile() failed: ")
    assert ' in "a{2}(?<1a>x)"' in exc.message
    exc = config_error("location ~ a[ {}")
    assert exc.message.startswith("pcre2_compile() failed: ")
    assert exc.message.endswith(' in "a[" at "["')


def test_no_duplicate_check_inside_regex_locations() -> None:
    tree("location ~ /x { location /x {} location /x {} }")


def test_exact_and_prefix_may_share_a_name() -> None:
    t = tree("location /x { return 200 P; } location = /x { return 200 E; }")
    assert loc(t, "/x") == "E"
    assert loc(t, "/xy") == "P"


# --------------------------------------------------------------------------------------------
# speed


def test_hundreds_of_locations_stay_fast() -> None:
    parts = []
    for i in range(300):
        parts.append(f"location /app{i}/ {{ return 200 P{i}; }}")
        parts.append(f"location = /exact{i} {{ return 200 E{i}; }}")
        parts.append(f"location /app{i}/static/v{i % 7}/ {{ return 200 S{i}; }}")
    parts.append("location ~ \\.php$ { return 200 PHP; }")
    t = tree("\n".join(parts))
    uris = [f"/app{i}/static/v{i % 7}/file{i}.css" for i in range(300)]
    assert loc(t, uris[5]) == "S5"
    start = time.perf_counter()
    for _ in range(10):
        for uri in uris:
            t.find(uri)
    per_call = (time.perf_counter() - start) / (10 * len(uris))
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per find"


# --------------------------------------------------------------------------------------------
# property: the dictionary search answers as nginx's binary tree does


def _ngx_key(s: str) -> str:
    # ngx_filename_cmp: '/' is the lowest byte (the names here hold no NUL and nothing below '/').
    return s.replace("/", "\x00")


@dataclass
class _Q:
    """ngx_http_location_queue_t."""

    name: str
    exact: LocationSpec | None
    inclusive: LocationSpec | None
    list: list[_Q] = field(default_factory=list)


@dataclass
class _TNode:
    """ngx_http_location_tree_node_t."""

    name: str
    exact: LocationSpec | None
    inclusive: LocationSpec | None
    auto_redirect: bool
    left: _TNode | None = None
    right: _TNode | None = None
    tree: _TNode | None = None


def _ref_create_list(items: list[_Q]) -> None:
    i = 0
    while i < len(items):
        q = items[i]
        if q.inclusive is not None:
            j = i + 1
            while j < len(items) and items[j].name.startswith(q.name):
                j += 1
            if j > i + 1:
                q.list = items[i + 1 : j]
                del items[i + 1 : j]
                _ref_create_list(q.list)
        i += 1


def _ref_create_tree(items: list[_Q], prefix: int) -> _TNode | None:
    if not items:
        return None
    mid = len(items) // 2  # ngx_queue_middle
    q = items[mid]
    auto = bool((q.exact and q.exact.auto_redirect) or (q.inclusive and q.inclusive.auto_redirect))
    node = _TNode(q.name[prefix:], q.exact, q.inclusive, auto)
    node.left = _ref_create_tree(items[:mid], prefix)
    node.right = _ref_create_tree(items[mid + 1 :], prefix)
    node.tree = _ref_create_tree(q.list, prefix + len(node.name))
    return node


@dataclass
class _RefLevel:
    static: _TNode | None
    regexes: list[LocationSpec]
    children: dict[int, _RefLevel]


def _ref_level(specs: list[LocationSpec], static: bool = True) -> _RefLevel:
    statics = [s for s in specs if s.regex is None] if static else []
    statics.sort(key=lambda s: (_ngx_key(s.name), s.modifier != "="))
    queue: list[_Q] = []
    for s in statics:
        if queue and queue[-1].name == s.name:  # ngx_http_join_exact_locations
            queue[-1].inclusive = s
        else:
            queue.append(
                _Q(s.name, s if s.modifier == "=" else None, None if s.modifier == "=" else s)
            )
    _ref_create_list(queue)
    children = {id(s): _ref_level(s.children) for s in statics}
    regexes = [s for s in specs if s.regex is not None]
    children.update({id(s): _ref_level(s.children, static=False) for s in regexes})
    return _RefLevel(_ref_create_tree(queue, 0), regexes, children)


def _ref_static(node: _TNode | None, uri: str, state: list[Any]) -> tuple[str, LocationSpec | None]:
    rv: tuple[str, LocationSpec | None] = ("DECLINED", None)
    while node is not None:
        n = min(len(uri), len(node.name))
        a, b = _ngx_key(uri[:n]), _ngx_key(node.name[:n])
        if a != b:
            node = node.left if a < b else node.right
            continue
        if len(uri) > len(node.name):
            if node.inclusive is not None:
                state[0] = node.inclusive.conf
                rv = ("AGAIN", node.inclusive)
                node, uri = node.tree, uri[n:]
                continue
            node = node.right
            continue
        if len(uri) == len(node.name):
            if node.exact is not None:
                state[0] = node.exact.conf
                return "OK", node.exact
            state[0] = node.inclusive.conf  # type: ignore[union-attr]
            return "AGAIN", node.inclusive
        if len(uri) + 1 == len(node.name) and node.auto_redirect:
            spec = node.exact or node.inclusive
            state[0] = spec.conf  # type: ignore[union-attr]
            rv = ("DONE", spec)
        node = node.left
    return rv


def _ref_find(level: _RefLevel, uri: str, state: list[Any]) -> str:
    rc, spec = _ref_static(level.static, uri, state)
    noregex = False
    if rc == "AGAIN":
        assert spec is not None
        noregex = spec.modifier == "^~"
        rc = _ref_find(level.children[id(spec)], uri, state)
    if rc in ("OK", "DONE"):
        return rc
    if not noregex:
        for rx in level.regexes:
            m = rx.regex.search(uri)  # type: ignore[union-attr]
            if m:
                state[0], state[1] = rx.conf, m
                _ref_find(level.children[id(rx)], uri, state)
                return "OK"
    return rc


_ALPHABET = "/ab."
_names = st.text(_ALPHABET, min_size=0, max_size=5).map(lambda s: "/" + s)


@st.composite
def _configs(draw: st.DrawFn) -> list[LocationSpec]:
    counter = iter(range(10_000))
    dummy = Node("location", [], "<t>", 1, [])

    def level(prefix: str, depth: int) -> list[LocationSpec]:
        out: list[LocationSpec] = []
        seen: set[tuple[str, bool]] = set()
        for _ in range(draw(st.integers(0, 7 if depth == 0 else 3))):
            kind = draw(st.sampled_from(["", "", "^~", "=", "~"]))
            if kind == "~":
                pattern = draw(st.sampled_from(["a$", "^/b", "\\.", "ab", "/$"]))
                spec = LocationSpec(
                    "~", pattern, f"L{next(counter)}", dummy, regex=re.compile(pattern)
                )
            else:
                name = prefix + draw(_names)[1:] if prefix else draw(_names)
                key = (name, kind == "=")
                if key in seen:
                    continue
                seen.add(key)
                spec = LocationSpec(kind, name, f"L{next(counter)}", dummy)
                spec.auto_redirect = name.endswith("/") and draw(st.booleans())
            if depth < 2 and kind != "=":
                spec.children = level(spec.name if kind != "~" else "", depth + 1)
            out.append(spec)
        return out

    return level("", 0)


def _all_names(specs: list[LocationSpec]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        if spec.regex is None:
            out.append(spec.name)
        out.extend(_all_names(spec.children))
    return out


@settings(max_examples=500, deadline=None)
@given(_configs(), st.lists(_names, min_size=1, max_size=8), st.data())
def test_same_answers_as_nginx_tree(
    specs: list[LocationSpec], uris: list[str], data: st.DataObject
) -> None:
    t = LocationTree.build(specs)
    ref = _ref_level(specs)
    # URIs near the names too: equal, one character short (auto-redirect), a bit longer.
    for name in _all_names(specs):
        uris += [name, name[:-1], name + data.draw(_names)[1:]]
    for uri in uris:
        state: list[Any] = [None, None]
        rc = _ref_find(ref, uri, state)
        expected = (
            (REDIRECT_SLASH, None)
            if rc == "DONE"
            else (None if state[0] is None else (state[0], state[1]))
        )
        got = t.find(uri)
        if expected is not None and got is not None and expected[1] is not None:
            assert got[0] == expected[0] and got[1] is not None
            assert got[1].span() == expected[1].span()
        else:
            assert got == expected, uri
