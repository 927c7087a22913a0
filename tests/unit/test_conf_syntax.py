"""Lexer, parser and value parsers: nginx's syntax rules on pure inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import parse_config, parse_string
from pyngx.conf.values import parse_size, parse_time, parse_url
from pyngx.conf.variables import VariableTable, compile_complex, escape_default, escape_json


def names(nodes):  # type: ignore[no-untyped-def]
    return [(n.name, n.args, n.line) for n in nodes]


def test_words_quotes_and_comments() -> None:
    nodes = parse_string('a 1 \'2 3\' "4\\"5";  # comment ; {\nb x#y;\n', "t.conf")
    assert names(nodes) == [("a", ["1", "2 3", '4"5'], 1), ("b", ["x#y"], 2)]


def test_escapes_follow_nginx() -> None:
    (node,) = parse_string(r"""a "t\tn\nq\"s\\o\x" b\;c;""")
    assert node.args == ['t\tn\nq"s\\o\\x', "b\\;c"]


def test_variable_braces_stay_in_word() -> None:
    (node,) = parse_string("log_format f ${remote_addr}x;")
    assert node.args == ["f", "${remote_addr}x"]


def test_blocks_nest_and_keep_lines() -> None:
    (events, stream) = parse_string("events {\n}\nstream {\n server {\n  listen 1;\n }\n}\n")
    assert events.block == []
    assert stream.block is not None
    server = stream.block[0]
    assert server.block is not None
    assert (server.block[0].name, server.block[0].line) == ("listen", 5)


def test_directive_line_is_its_terminator_line() -> None:
    (node,) = parse_string("proxy_pass\n  127.0.0.1:1\n  ;")
    assert node.line == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("}", 'unexpected "}"'),
        ("a {", 'unexpected end of file, expecting "}"'),
        ("a b", 'unexpected end of file, expecting ";" or "}"'),
        (";", 'unexpected ";"'),
        ("{}", 'unexpected "{"'),
        ('a "b"c;', 'unexpected "c"'),
        ("a 'b;", 'unexpected end of file, expecting ";" or "}"'),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string(text, "x.conf")
    assert info.value.message == message


def test_include_glob_is_sorted_and_relative_to_conf_dir(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "b.conf").write_text("b;\n")
    (tmp_path / "conf.d" / "a.conf").write_text("a;\n")
    (tmp_path / "main.conf").write_text("first;\ninclude conf.d/*.conf;\ninclude nomatch/*.x;\n")
    parsed = parse_config(str(tmp_path / "main.conf"))
    assert [n.name for n in parsed.nodes] == ["first", "a", "b"]
    assert parsed.nodes[1].file.endswith("conf.d/a.conf")
    assert [Path(p).name for p, _ in parsed.files] == ["main.conf", "a.conf", "b.conf"]


def test_include_missing_file_names_the_including_line(tmp_path: Path) -> None:
    (tmp_path / "main.conf").write_text("\ninclude missing.conf;\n")
    with pytest.raises(ConfigError) as info:
        parse_config(str(tmp_path / "main.conf"))
    assert str(info.value) == (
        f'open() "{tmp_path}/missing.conf" failed (2: No such file or directory)'
        f" in {tmp_path}/main.conf:2"
    )


def test_include_loop_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "main.conf").write_text("include main.conf;\n")
    with pytest.raises(ConfigError, match="too deep"):
        parse_config(str(tmp_path / "main.conf"))


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("512", 512), ("16k", 16384), ("16K", 16384), ("1m", 1 << 20), ("2g", 2 << 30)],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("30", 30.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1M", 2592000.0),
        ("1y", 31536000.0),
    ],
)
def test_times(text: str, value: float) -> None:
    assert parse_time(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "x", "10x", "1m1h", "5s5s", "-1s", "1.5s"])
def test_bad_times(text: str) -> None:
    with pytest.raises(DirectiveValueError):
        parse_time(text)


def test_urls() -> None:
    assert parse_url("25", listen=True).addrs[0].text == "0.0.0.0:25"
    assert parse_url("*:25", listen=True).wildcard
    assert parse_url("[::1]:993").addrs[0].text == "[::1]:993"
    assert parse_url("unix:/run/x.sock").addrs[0].text == "unix:/run/x.sock"
    assert parse_url("localhost:25").addrs[0].port == 25


def test_complex_values_compile_once() -> None:
    table = VariableTable()
    table.add("a", lambda s: s["a"])
    table.add("none", lambda s: None)
    fn = compile_complex("x=$a ${a}y $none.", table, missing="-")
    assert fn({"a": "1"}) == "x=1 1y -."
    with pytest.raises(ConfigError, match='unknown "b" variable'):
        compile_complex("$b", table)


def test_log_escaping() -> None:
    assert escape_default('a"b\\c\x01\xe9') == "a\\x22b\\x5Cc\\x01\\xC3\\xA9"
    assert escape_json('a"b\\c\n\x01') == 'a\\"b\\\\c\\n\\u0001'
