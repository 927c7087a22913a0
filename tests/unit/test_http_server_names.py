"""Virtual server selection by Host (pyngx.http.server_names), against nginx's rules.

Expected answers: nginx's "Server names" documentation and Debian's nginx 1.22 (see also the
differential test tests/e2e/test_http_locations_vs_nginx.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node, parse_string
from pyngx.http.server_names import ServerNames, ascii_lower, check_server_name

WHERE = "127.0.0.1:80"


def servers(text: str, where: str = WHERE, **kwargs: object) -> ServerNames:
    """Servers `server { server_name ...; return 200 ID; }`: the conf of each is its ID (or
    S<n>); the first server (or the one with `listen ... default_server`) is the default."""
    entries: list[tuple[str, object, Node]] = []
    default = None
    for i, node in enumerate(n for n in parse_string(text) if n.name == "server"):
        block = node.block or []
        ident = next((c.args[-1] for c in block if c.name == "return"), f"S{i}")
        names = [c for c in block if c.name == "server_name"]
        for directive in names:
            for arg in directive.args:
                check_server_name(arg, directive, lambda n, m: None)
                entries.append((arg, ident, directive))
        if not names:
            entries.append(("", ident, node))
        if default is None or any("default_server" in c.args for c in block if c.name == "listen"):
            default = ident
    return ServerNames(entries, default, where, **kwargs)  # type: ignore[arg-type]


def pick(names: ServerNames, host: str) -> object:
    return names.find(host)[0]


DOCS = """
server { server_name example.org www.example.org; return 200 EXACT; }
server { server_name *.example.org; return 200 HEAD; }
server { server_name mail.*; return 200 TAIL; }
server { server_name ~^(?<user>.+)\\.example\\.net$; return 200 RX; }
server { server_name .example.com; return 200 DOT; }
server { server_name www.example.com ~^www\\d+\\.example\\.com$; return 200 WWW; }
server { server_name _; return 200 UNDERSCORE; }
"""


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.org", "EXACT"),
        ("www.example.org", "EXACT"),
        ("foo.example.org", "HEAD"),
        ("www.sub.example.org", "HEAD"),  # an asterisk matches several parts
        ("mail.example.org", "HEAD"),  # head wildcards beat tail wildcards
        ("mail.foo.com", "TAIL"),
        ("mail.a.b", "TAIL"),
        ("mail", "EXACT"),  # tail wildcards need a dot after: default (the first server)
        ("bob.example.net", "RX"),
        ("example.com", "DOT"),
        ("a.b.example.com", "DOT"),
        ("www.example.com", "WWW"),
        ("www12.example.com", "DOT"),  # wildcards beat regexes
        ("_", "UNDERSCORE"),
        ("unknown.test", "EXACT"),
        ("", "EXACT"),
    ],
)
def test_docs_examples(host: str, expected: str) -> None:
    assert pick(servers(DOCS), host) == expected


def test_longest_wildcards_win() -> None:
    names = servers(
        """
        server { server_name *.com; return 200 COM; }
        server { server_name *.example.com; return 200 EX; }
        server { server_name .b.example.com; return 200 B; }
        server { server_name *.c.example.com; return 200 C; }
        server { server_name www.*; return 200 W; }
        server { server_name www.example.*; return 200 WE; }
        """
    )
    assert pick(names, "x.com") == "COM"
    assert pick(names, "x.example.com") == "EX"
    assert pick(names, "example.com") == "COM"  # `*.example.com` needs a part more
    assert pick(names, "b.example.com") == "B"
    assert pick(names, "x.b.example.com") == "B"
    assert pick(names, "c.example.com") == "EX"  # `*.c.example.com` needs a part more
    assert pick(names, "x.c.example.com") == "C"
    assert pick(names, "www.example.org") == "WE"
    assert pick(names, "www.example") == "W"
    assert pick(names, "www.other.org") == "W"
    assert pick(names, "www") == "COM"  # no match: the default


def test_regex_order_captures_and_case() -> None:
    names = servers(
        """
        server { server_name default; return 200 D; }
        server { server_name ~^(www\\.)?(?<domain>.+)\\.org$; return 200 ORG; }
        server { server_name ~^www\\.(.+)$ ~^W(\\d+)$; return 200 WWW; }
        """
    )
    conf, match = names.find("www.site.org")
    assert conf == "ORG" and match is not None
    assert match.group("domain") == "site" and match.group(1) == "www."
    conf, match = names.find("www.site.net")
    assert conf == "WWW" and match is not None and match.group(1) == "site.net"
    # a regex with an upper-case letter is case-insensitive
    conf, match = names.find("w42")
    assert conf == "WWW" and match is not None and match.group(1) == "42"
    assert names.find("default") == ("D", None)
    assert names.find("nothing") == ("D", None)


def test_regex_without_uppercase_is_case_sensitive() -> None:
    names = servers("server { server_name d; } server { server_name ~^abc$; return 200 R; }")
    assert pick(names, "abc") == "R"
    assert pick(names, "ABC") == "S0"


def test_empty_host() -> None:
    names = servers(
        """
        server { server_name def; return 200 DEF; }
        server { server_name ~^$ ~.*; return 200 RX; }
        server { server_name "" *.x.a.com; return 200 EMPTY; }
        """
    )
    assert pick(names, "") == "EMPTY"  # only the exact "" name
    assert pick(names, "zzz") == "RX"
    names = servers("server { server_name def; return 200 DEF; } server { server_name ~.*; }")
    assert pick(names, "") == "DEF"  # regexes are not tried for an empty host


def test_server_without_name_has_the_empty_name() -> None:
    names = servers("server { server_name a; return 200 A; } server { return 200 NONAME; }")
    assert pick(names, "") == "NONAME"
    assert pick(names, "b") == "A"


def test_default_server() -> None:
    names = servers(
        """
        server { server_name a; return 200 A; }
        server { listen 80 default_server; server_name b; return 200 B; }
        """
    )
    assert pick(names, "zzz") == "B"
    assert pick(names, "a") == "A"


def test_names_are_lower_cased_and_hostname() -> None:
    names = servers(
        "server { server_name WWW.Example.COM; return 200 A; }"
        "server { server_name $HOSTNAME; return 200 H; }",
        hostname="MyHost",
    )
    assert pick(names, "www.example.com") == "A"
    assert pick(names, "myhost") == "H"
    assert ascii_lower("ÀB") == "Àb"


def test_single_server_matches_nothing() -> None:
    # nginx builds no names for an address with one server (unless its regexes capture)
    names = servers("server { server_name a ~^(?<x>b)$ ~^c$; return 200 A; }")
    assert names.find("b") == ("A", None)
    names = servers("server { server_name a ~^c$ ~^(b)$; return 200 A; }")
    conf, match = names.find("b")
    assert conf == "A" and match is not None and match.group(1) == "b"


def test_conflicts_warn_and_first_wins() -> None:
    seen: list[str] = []
    names = servers(
        """
        server { server_name a.com A.com; return 200 ONE; }
        server { server_name .a.com *.a.com x.* x.*; return 200 TWO; }
        server { server_name *.b.com .b.com; return 200 THREE; }
        server { server_name b.com; return 200 FOUR; }
        server { return 200 FIVE; }
        server { return 200 SIX; }
        """,
        warn=lambda message, node: seen.append(message),
    )
    expected = [
        'conflicting server name "a.com" on 127.0.0.1:80, ignored',
        'conflicting server name ".a.com" on 127.0.0.1:80, ignored',
        'conflicting server name "x.*" on 127.0.0.1:80, ignored',
        'conflicting server name ".b.com" on 127.0.0.1:80, ignored',
        # the ignored `.b.com` still took `b.com` (nginx's ngx_hash_add_key)
        'conflicting server name "b.com" on 127.0.0.1:80, ignored',
        'conflicting server name "" on 127.0.0.1:80, ignored',
    ]
    assert seen == expected
    assert [message for message, _ in names.warnings] == expected
    assert pick(names, "a.com") == "ONE"
    assert pick(names, "x.a.com") == "TWO"
    assert pick(names, "b.com") == "ONE"  # nobody has it: the default
    assert pick(names, "x.b.com") == "THREE"
    assert pick(names, "") == "FIVE"


@pytest.mark.parametrize(
    "name", ["www.*.a.com", "a..com", "a.com*", "*.*", "w*.example.org", "*.a.*"]
)
def test_invalid_wildcards(name: str) -> None:
    text = f"server {{ server_name {name}; }} server {{ server_name b; }}"
    with pytest.raises(ConfigError) as info:
        servers(text)
    assert str(info.value) == f'invalid server name or wildcard "{name}" on 127.0.0.1:80'


def test_odd_but_accepted_wildcards() -> None:
    names = servers("server { server_name .*; return 200 A; } server { server_name b; }")
    assert pick(names, "*") == "A"
    assert pick(names, "x.*") == "A"


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("*a.com", 'server name "*a.com" is invalid'),
        ("*.", 'server name "*." is invalid'),
        ("*", 'server name "*" is invalid'),
        (".", 'server name "." is invalid'),
        ("~", 'empty regex in server name "~"'),
        ("~(a", 'pcre2_compile() failed: missing ), unterminated subpattern in "(a"'),
    ],
)
def test_directive_errors(arg: str, message: str) -> None:
    (node,) = parse_string(f'server_name "{arg}";')
    with pytest.raises(ConfigError) as info:
        check_server_name(arg, node, lambda n, m: None)
    assert info.value.message.startswith(message.split(" in ")[0])
    assert info.value.line == 1


def test_suspicious_symbols_warning() -> None:
    (node,) = parse_string("server_name http://x/;")
    seen: list[tuple[Node, str]] = []
    check_server_name("http://x/", node, lambda n, m: seen.append((n, m)))
    assert seen == [(node, 'server name "http://x/" has suspicious symbols')]


def test_bucket_size() -> None:
    # ngx_hash_init: every exact name and every part of a wildcard must fit a 64-byte bucket.
    servers(f"server {{ server_name {'a' * 46} *.{'b' * 46}; }} server {{ server_name b; }}")
    for name in ("a" * 47, "*." + "a" * 47, "www." + "a" * 47 + ".*", "." + "c" * 50):
        with pytest.raises(ConfigError) as info:
            servers(f"server {{ server_name {name}; }} server {{ server_name b; }}")
        assert str(info.value) == (
            "could not build server_names_hash, you should increase "
            "server_names_hash_bucket_size: 64"
        )
    servers(f"server {{ server_name {'a' * 47}; }} server {{ }}", bucket_size=65)  # -> 128


# --------------------------------------------------------------------------------------------
# property: the dictionaries answer as nginx's wildcard tries


_label = st.sampled_from(["a", "b", "com", "x"])
_hosts = st.lists(_label, min_size=1, max_size=4).map(".".join)
_wild = st.one_of(
    _hosts,
    _hosts.map(lambda h: "*." + h),
    _hosts.map(lambda h: "." + h),
    _hosts.map(lambda h: h + ".*"),
)


def _reference(names: list[tuple[str, str]], host: str) -> str | None:
    """The documented rules, spelled out: exact, longest head, longest tail, regexes."""
    taken: dict[str, str] = {}
    heads: dict[str, tuple[str, bool]] = {}
    tails: dict[str, str] = {}
    exact_claimed: set[str] = set()
    for name, ident in names:
        if name.startswith("."):
            if name[1:] in exact_claimed:
                continue
            exact_claimed.add(name[1:])
            heads.setdefault(name[1:], (ident, True))
        elif name.startswith("*."):
            heads.setdefault(name[2:], (ident, False))
        elif name.endswith(".*"):
            tails.setdefault(name[:-2], ident)
        elif name not in exact_claimed:
            exact_claimed.add(name)
            taken[name] = ident
    if host in taken:
        return taken[host]
    best: tuple[int, str] | None = None
    for body, (ident, bare) in heads.items():
        if (host.endswith("." + body) or (bare and host == body)) and (
            best is None or len(body) > best[0]
        ):
            best = (len(body), ident)
    if best:
        return best[1]
    for body, ident in tails.items():
        if host.startswith(body + ".") and (best is None or len(body) > best[0]):
            best = (len(body), ident)
    return best[1] if best else None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_wild, min_size=1, max_size=3), min_size=2, max_size=5), st.data())
def test_wildcards_match_the_documented_rules(
    server_names: list[list[str]], data: st.DataObject
) -> None:
    node = Node("server_name", [], "<t>", 1)
    entries = [(n, f"S{i}", node) for i, names in enumerate(server_names) for n in names]
    table = ServerNames(entries, "DEFAULT", WHERE)
    pairs = [(n, ident) for n, ident, _ in entries]
    for host in data.draw(st.lists(_hosts, min_size=1, max_size=10)):
        expected = _reference(pairs, host) or "DEFAULT"
        assert table.find(host) == (expected, None), host
