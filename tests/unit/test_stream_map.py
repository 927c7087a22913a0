"""`map` matching order and values, on pure inputs."""

from __future__ import annotations

from pyngx.conf.parser import parse_string
from pyngx.conf.variables import VariableTable
from pyngx.stream.map import CompiledMap, parse_map_block


def compiled(body: str, source: str = "$sni") -> CompiledMap:
    (node,) = parse_string(f"map {source} $out {{ {body} }}")
    table = VariableTable()
    table.add("sni", lambda s: s["sni"])
    table.add("port", lambda s: s["port"])
    return CompiledMap(parse_map_block(node.args[0], node.args[1], node), table)


def ev(m: CompiledMap, sni: str) -> str:
    return m.evaluate({"sni": sni, "port": "993"})


def test_priority_exact_then_masks_then_regex_then_default() -> None:
    m = compiled(
        """
        hostnames;
        default               d;
        mail.example.com      exact;
        *.example.com         head;
        .example.org          dot;
        mail.*                tail;
        ~^imap\\.(?<rest>.+)$  re-$rest;
        ~*^SMTP               ci;
        """
    )
    assert ev(m, "MAIL.example.com") == "exact"  # strings ignore case
    assert ev(m, "a.b.example.com") == "head"
    assert ev(m, "example.org") == "dot"
    assert ev(m, "x.example.org") == "dot"
    assert ev(m, "mail.other.net") == "tail"
    assert ev(m, "imap.zzz.net") == "re-zzz.net"
    assert ev(m, "smtp.q") == "ci"
    assert ev(m, "nothing") == "d"


def test_values_with_variables_and_positional_captures() -> None:
    m = compiled("~^(\\w+)\\.test$ $1:$port; default 127.0.0.1:$port;")
    assert ev(m, "mx.test") == "mx:993"
    assert ev(m, "other") == "127.0.0.1:993"


def test_without_default_the_value_is_empty() -> None:
    assert ev(compiled("a b;"), "zzz") == ""


def test_pcre_spellings_are_translated() -> None:
    from pyngx.conf.regex import compile_pcre

    assert compile_pcre(r"^(?<a>x)(?'b'y)(?<=y)\k<a>(?<!z)x$").match("xyxx") is not None
