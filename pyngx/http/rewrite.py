"""The rewrite module (ngx_http_rewrite_module + ngx_http_script): rewrite, return, set, if, break.

Each directive is compiled when the configuration is read into one op of its level's list
(`ctx.slots["rewrite_ops"]`); `compile_script(ctx)` turns a server's or a location's list into a
`Script` that the server-rewrite or rewrite phase runs per request. As in nginx, an `if` block's
directives belong to the enclosing script: when the condition holds, the request switches to the
block's configuration, the block's ops run, and then the ops after the block run too (only
`break`, `return`, `rewrite ... last|break|redirect|permanent` end a script).

nginx's details this follows on purpose:
- a regex that fails to match forgets the captures ($1...); one without groups that matches keeps
  the older ones; named captures are variables, assigned on every match and kept afterwards;
- captures copied into a redirect, into the args part of a rewritten URI, or into `set`/`if`
  values before the script's first successful rewrite are %-escaped (nginx's NGX_ESCAPE_ARGS)
  when the client's URI had `%` or `+` in its path;
- a redirect's replacement is partly unescaped again (NGX_UNESCAPE_REDIRECT) before the original
  args are added; a rewritten URI is used as is (not decoded);
- variable names are case-insensitive; unknown variables are reported when the script is
  compiled, i.e. after every syntax error of the configuration, as nginx reports them last.

Requests are duck-typed (docs/http.md, "Request"): the script reads and writes `uri`, `args`,
`request_uri`, `variables`, `captures`, `uri_changed`, `internal`, `loc`, `out.location`,
`return_body`, and calls `log_notice(text)` when `rewrite_log` is on.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.regex import compile_pcre
from pyngx.conf.registry import NOARGS, ONEMORE, TAKE2, Context, Registry, flag_slot
from pyngx.conf.values import parse_size
from pyngx.conf.variables import Getter, VariableTable

SLOT = "rewrite_ops"
SERVER, LOCATION, SIF, LIF = "http_server", "http_location", "http_sif", "http_lif"
_SCRIPT_CONTEXTS = (SERVER, LOCATION, SIF, LIF)

MOVED_PERMANENTLY, MOVED_TEMPORARILY, INTERNAL_SERVER_ERROR = 301, 302, 500
BAD_REQUEST = 400
# ngx_http_send_response puts the text of these into Location instead of the body.
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_REDIRECT_PREFIXES = ("http://", "https://", "$scheme")

# An op's result: None goes on with the next op, _STOP ends the script without a status (nginx's
# NGX_DECLINED: the phase engine goes on), any other int ends it with that status.
_STOP = -5

ValueFn = Callable[[Any, bool], str]  # (request, escape captures?) -> text
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]*")
# NGX_ESCAPE_ARGS: " ", "#", "%", "&", "+", ";", "?", controls, DEL and every non-ASCII byte.
_ARGS_UNSAFE = re.compile(r"[\x00-\x20#%&+;?\x7f-\U0010ffff]")
_HEX = frozenset("0123456789abcdefABCDEF")


# -- variables ------------------------------------------------------------------------------


class Settable:
    """A variable `set` may assign (nginx's CHANGEABLE): the value the request was given, else the
    fallback's (a `map`/`geo` value), else nginx's empty value.

    Modules whose variables nginx lets `set` overwrite (map, geo, split_clients) should register
    their getters wrapped in a Settable; `set` on any other known variable is an error.
    """

    __slots__ = ("name", "fallback")

    def __init__(self, name: str, fallback: Getter | None = None) -> None:
        self.name = name
        self.fallback = fallback

    def __call__(self, r: Any) -> str | None:
        value = r.variables.get(self.name)
        if value is not None:
            return value
        fallback = self.fallback
        return fallback(r) if fallback is not None else ""


def _settable(name: str, table: VariableTable) -> Settable:
    """A new `set` variable; one named like a prefix family (`$arg_x`, `$http_x`) reads that
    family until the request sets it, as nginx's weak variables do."""
    try:
        fallback: Getter | None = table.lookup(name)
    except ConfigError:
        fallback = None
    return Settable(name, fallback)


def _not_found(r: Any) -> str | None:
    # A named capture that never matched: "not found" ("" in scripts, "-" in logs), as nginx's.
    return None


def _set_args(r: Any, value: str) -> None:
    r.args = value


def _set_limit_rate(r: Any, value: str) -> None:
    try:
        r.limit_rate = parse_size(value)
    except ValueError:
        # nginx logs `invalid $limit_rate "..."` and leaves the rate alone.
        return


# Built-in variables nginx lets `set` change, with what changing them does.
SETTERS: dict[str, Callable[[Any, str], None]] = {
    "args": _set_args,
    "limit_rate": _set_limit_rate,
}


def _capture_getter(n: int) -> Getter:
    def getter(r: Any) -> str | None:
        m = r.captures
        if m is None:
            return ""
        try:
            return m.group(n) or ""
        except IndexError:
            return ""

    return getter


def capture_getters(table: VariableTable) -> None:
    """`$1`..`$9` for values compiled with conf.variables.compile_complex (nginx has no `$0`)."""
    for n in range(1, 10):
        table.add(str(n), _capture_getter(n))


def set_captures(r: Any, m: re.Match[str]) -> None:
    """Record a successful match as nginx's ngx_http_regex_exec does: named groups become
    variables; the positional captures are replaced only if the regex has groups."""
    pattern = m.re
    if pattern.groups:
        r.captures = m
    if pattern.groupindex:
        variables = r.variables
        for name in pattern.groupindex:
            variables[name.lower()] = m.group(name) or ""


def declare_named_captures(pattern: re.Pattern[str], table: VariableTable, node: Node) -> None:
    """Named groups are variables (ngx_http_regex_compile); a built-in name is an error."""
    for name in pattern.groupindex:
        key = name.lower()
        if key in SETTERS:
            continue
        getter = table.getters.get(key)
        if getter is None:
            table.add(key, Settable(key, _not_found))
        elif not isinstance(getter, Settable):
            raise node.error(f'the duplicate "{name}" variable')


def declare(nodes: list[Node], table: VariableTable) -> None:
    """Make every `set` variable and named capture of an http tree known before it is compiled.

    nginx resolves variable names after the whole configuration is read, so a `set $x` (or a
    `(?<x>...)` in a rewrite or if regex) anywhere makes `$x` usable everywhere. Names already in
    the table are left alone: the directive's handler reports a built-in one in nginx's order.
    """
    for node in nodes:
        if node.name == "set" and node.args and node.args[0].startswith("$"):
            name = node.args[0][1:].lower()
            if name and name not in table.getters and name not in SETTERS:
                table.add(name, _settable(name, table))
        elif node.name in ("rewrite", "if"):
            source = _declared_regex(node)
            if source is not None:
                try:
                    pattern = compile_pcre(source)
                except re.error:
                    continue
                for name in pattern.groupindex:
                    key = name.lower()
                    if key not in table.getters and key not in SETTERS:
                        table.add(key, Settable(key, _not_found))
        if node.block is not None and node.name in ("http", "server", "location", "if"):
            declare(node.block, table)


def _declared_regex(node: Node) -> str | None:
    if node.name == "rewrite":
        return node.args[0] if node.args else None
    try:
        cond = _split_condition(node)
    except ConfigError:
        return None
    return cond[2] if cond[0] == "regex" else None


# -- values: ngx_http_script_compile ----------------------------------------------------------

# A parsed value: literal text, a capture number, or a (lower-case) variable name.
_Part = tuple[str, "str | int"]


def _parse_value(
    text: str, node: Node, *, compile_args: bool = False
) -> tuple[list[_Part], list[_Part] | None, bool]:
    """Split `text` as ngx_http_script_compile does: (parts, args parts, saw a literal "?").

    With compile_args (a rewrite to a URI) the first literal "?" starts the args part.
    """
    parts: list[_Part] = []
    args: list[_Part] | None = None
    saw_question = False
    cur = parts
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "$":
            i += 1
            if i == n:
                raise node.error("invalid variable name")
            ch = text[i]
            if "1" <= ch <= "9":
                # A capture is one digit: "$10" is $1 then "0".
                cur.append(("cap", int(ch)))
                i += 1
                continue
            bracket = ch == "{"
            if bracket:
                i += 1
                if i == n:
                    raise node.error("invalid variable name")
            m = _NAME_CHARS.match(text, i)
            assert m is not None
            name = m.group()
            i = m.end()
            if bracket:
                if i < n and text[i] == "}":
                    i += 1
                else:
                    raise node.error(f'the closing bracket in "{name}" variable is missing')
            if not name:
                raise node.error("invalid variable name")
            cur.append(("var", name.lower()))
            continue
        if ch == "?" and compile_args:
            saw_question = True
            compile_args = False
            args = []
            cur = args
            i += 1
            continue
        j = i
        while j < n:
            c = text[j]
            if c == "$":
                break
            if c == "?":
                saw_question = True
                if compile_args:
                    break
            j += 1
        cur.append(("lit", text[i:j]))
        i = j
    return parts, args, saw_question


def _lookup(table: VariableTable, name: str) -> Getter:
    if name.isdigit():
        # `${1}` names a variable "1", which nginx does not have (captures are `$1`).
        raise ConfigError(f'unknown "{name}" variable')
    return table.lookup(name)


def _bind(parts: list[_Part], table: VariableTable) -> ValueFn:
    """Compile parsed parts into one function of (request, escape captures)."""
    fns: list[ValueFn] = []
    for kind, data in parts:
        if kind == "lit":
            fns.append(_const(str(data)))
        elif kind == "cap":
            fns.append(_capture(int(data)))
        else:
            fns.append(_variable(_lookup(table, str(data))))
    if not fns:
        return _const("")
    if len(fns) == 1:
        return fns[0]
    if all(kind == "lit" for kind, _ in parts):
        return _const("".join(str(d) for _, d in parts))
    return lambda r, esc: "".join([f(r, esc) for f in fns])


def _const(text: str) -> ValueFn:
    return lambda r, esc: text


def _variable(getter: Getter) -> ValueFn:
    def value(r: Any, esc: bool) -> str:
        v = getter(r)
        return "" if v is None else v

    return value


def _capture(n: int) -> ValueFn:
    def value(r: Any, esc: bool) -> str:
        m = r.captures
        if m is None:
            return ""
        try:
            v = m.group(n)
        except IndexError:
            return ""
        if not v:
            return ""
        if esc and _quoted_uri(r):
            return escape_args(v)
        return v

    return value


def _quoted_uri(r: Any) -> bool:
    """nginx's r->quoted_uri || r->plus_in_uri: the client's path had `%` or `+`."""
    target: str = r.request_uri
    path = target.partition("?")[0].partition("#")[0]
    return "%" in path or "+" in path


def escape_args(text: str) -> str:
    """ngx_escape_uri(NGX_ESCAPE_ARGS); non-ASCII characters are escaped as their UTF-8 bytes."""
    return _ARGS_UNSAFE.sub(_escape_match, text)


def _escape_match(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogateescape"))


def unescape_redirect(text: str) -> str:
    """ngx_unescape_uri(NGX_UNESCAPE_REDIRECT), as applied to a redirect's replacement.

    Up to the first "?" (literal or %3F), %XX of a printable character above "%" is decoded and
    any other %XX kept; a "%" not followed by two hex digits is dropped the way nginx's state
    machine drops it. The rest is copied unchanged.
    """
    if "%" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "?":
            out.append(text[i:])
            return "".join(out)
        if ch != "%":
            j = i + 1
            while j < n and text[j] not in "%?":
                j += 1
            out.append(text[i:j])
            i = j
            continue
        # "%" starts an escape; running out of input mid-escape drops what was read.
        if i + 1 >= n:
            break
        first = text[i + 1]
        if first not in _HEX:
            out.append(first)  # the invalid quoted character replaces the "%"
            i += 2
            continue
        if i + 2 >= n:
            break
        second = text[i + 2]
        if second not in _HEX:
            i += 3  # nginx drops "%", the hex digit and the invalid character
            continue
        code = int(text[i + 1 : i + 3], 16)
        if code == 0x3F:
            out.append("?")
            out.append(text[i + 3 :])
            return "".join(out)
        if 0x25 < code < 0x7F:
            out.append(chr(code))
        else:
            out.append(text[i : i + 3])
        i += 3
    return "".join(out)


class _Value:
    """A value parsed at directive time whose variables are looked up at compile time."""

    __slots__ = ("parts", "fn")

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts
        self.fn: ValueFn = _const("")

    def bind(self, table: VariableTable) -> None:
        self.fn = _bind(self.parts, table)


def _value(text: str, node: Node) -> _Value:
    parts, _, _ = _parse_value(text, node)
    return _Value(parts)


# -- the engine -----------------------------------------------------------------------------


class _Engine:
    """Per-run state of a script (nginx's ngx_http_script_engine_t)."""

    __slots__ = ("log", "quote")

    def __init__(self, log: bool) -> None:
        self.log = log
        # Captures in set/if values are escaped until the first rewrite matches (e->quote = 1).
        self.quote = True


class Op:
    """One compiled directive."""

    __slots__ = ()

    def bind(self, table: VariableTable) -> None:
        """Look the op's variables up (after the whole configuration is read)."""

    def run(self, r: Any, e: _Engine) -> int | None:
        raise NotImplementedError


def _match(pattern: re.Pattern[str], source: str, line: str, r: Any, e: _Engine) -> bool:
    """ngx_http_script_regex_start_code's matching half, shared by rewrite and `if (... ~ ...)`."""
    m = pattern.search(line)
    if m is None:
        if e.log:
            r.log_notice(f'"{source}" does not match "{line}"')
        r.captures = None
        return False
    if e.log:
        r.log_notice(f'"{source}" matches "{line}"')
    set_captures(r, m)
    return True


class RewriteOp(Op):
    """`rewrite regex replacement [flag]`."""

    __slots__ = (
        "pattern",
        "source",
        "flag",
        "redirect",
        "status",
        "add_args",
        "has_question",
        "parts",
        "args_parts",
        "uri_fn",
        "args_fn",
    )

    def __init__(
        self,
        pattern: re.Pattern[str],
        source: str,
        replacement: str,
        flag: str | None,
        node: Node,
    ) -> None:
        self.pattern = pattern
        self.source = source
        # A trailing "?" drops the original args (and is not part of the replacement).
        self.add_args = not replacement.endswith("?")
        if not self.add_args:
            replacement = replacement[:-1]
        self.redirect = replacement.startswith(_REDIRECT_PREFIXES)
        self.status = MOVED_TEMPORARILY if self.redirect else 0
        self.flag = flag
        if flag == "redirect":
            self.redirect, self.status = True, MOVED_TEMPORARILY
        elif flag == "permanent":
            self.redirect, self.status = True, MOVED_PERMANENTLY
        self.parts, self.args_parts, self.has_question = _parse_value(
            replacement, node, compile_args=not self.redirect
        )
        self.uri_fn: ValueFn = _const("")
        self.args_fn: ValueFn | None = None

    def bind(self, table: VariableTable) -> None:
        self.uri_fn = _bind(self.parts, table)
        self.args_fn = _bind(self.args_parts, table) if self.args_parts is not None else None

    def run(self, r: Any, e: _Engine) -> int | None:
        if not _match(self.pattern, self.source, r.uri, r, e):
            return None
        e.quote = False
        r.internal = True
        # "break" keeps the request in this location even if an earlier rewrite changed the URI.
        r.uri_changed = self.flag != "break"
        if self.redirect:
            return self._redirect(r, e)
        uri = self.uri_fn(r, False)
        args_fn = self.args_fn
        if args_fn is not None:
            args = args_fn(r, True)
            if self.add_args and r.args:
                args = f"{args}&{r.args}"
            r.args = args
        elif not self.add_args:
            r.args = ""
        if e.log:
            r.log_notice(f'rewritten data: "{uri}", args: "{r.args}"')
        r.uri = uri
        if not uri:
            # nginx logs `the rewritten URI has a zero length` at the error level.
            return INTERNAL_SERVER_ERROR
        return _STOP if self.flag is not None else None

    def _redirect(self, r: Any, e: _Engine) -> int:
        url = unescape_redirect(self.uri_fn(r, True))
        if self.add_args and r.args:
            url = f"{url}{'&' if self.has_question else '?'}{r.args}"
        if e.log:
            r.log_notice(f'rewritten redirect: "{url}"')
        r.out.location = url
        return self.status


class ReturnOp(Op):
    """`return code [text]`, `return URL`."""

    __slots__ = ("status", "text", "mode")

    def __init__(self, status: int, text: _Value | None, has_text: bool) -> None:
        self.status = status
        self.text = text
        # ngx_http_script_return_code: a text (or any code below 400) is sent by
        # ngx_http_send_response: into Location for the redirect codes, else as the body.
        if status in REDIRECT_CODES:
            self.mode = "location"
        elif status < BAD_REQUEST or has_text:
            self.mode = "body"
        else:
            self.mode = "status"

    def bind(self, table: VariableTable) -> None:
        if self.text is not None:
            self.text.bind(table)

    @property
    def constant_body(self) -> bool:
        """A body that is the same for every request (no variables, no captures)."""
        return self.mode == "body" and (
            self.text is None or all(kind == "lit" for kind, _ in self.text.parts)
        )

    def run(self, r: Any, e: _Engine) -> int | None:
        mode = self.mode
        if mode != "status":
            text = self.text.fn(r, False) if self.text is not None else ""
            if mode == "location":
                r.out.location = text
            else:
                r.return_body = text
        return self.status


class BreakOp(Op):
    __slots__ = ()

    def run(self, r: Any, e: _Engine) -> int | None:
        r.uri_changed = False
        return _STOP


class SetOp(Op):
    """`set $name value`."""

    __slots__ = ("name", "value", "setter")

    def __init__(self, name: str, value: _Value) -> None:
        self.name = name
        self.value = value
        self.setter = SETTERS.get(name)

    def bind(self, table: VariableTable) -> None:
        self.value.bind(table)

    def run(self, r: Any, e: _Engine) -> int | None:
        value = self.value.fn(r, e.quote)
        if self.setter is not None:
            self.setter(r, value)
        else:
            r.variables[self.name] = value
        return None


# -- if conditions --------------------------------------------------------------------------


class Condition:
    __slots__ = ()

    def bind(self, table: VariableTable) -> None:
        """Look the condition's variables up."""

    def test(self, r: Any, e: _Engine) -> bool:
        raise NotImplementedError


def _truthy(value: str) -> bool:
    return bool(value) and value != "0"


class VarCondition(Condition):
    """`if ($var)`: true unless empty or "0"."""

    __slots__ = ("name", "getter")

    def __init__(self, name: str) -> None:
        self.name = name
        self.getter: Getter = _not_found

    def bind(self, table: VariableTable) -> None:
        self.getter = _lookup(table, self.name)

    def test(self, r: Any, e: _Engine) -> bool:
        v = self.getter(r)
        return v is not None and _truthy(v)


class CompareCondition(VarCondition):
    """`if ($var = value)` and `!=`."""

    __slots__ = ("value", "negate")

    def __init__(self, name: str, value: _Value, negate: bool) -> None:
        super().__init__(name)
        self.value = value
        self.negate = negate

    def bind(self, table: VariableTable) -> None:
        super().bind(table)
        self.value.bind(table)

    def test(self, r: Any, e: _Engine) -> bool:
        v = self.getter(r)
        return ((v or "") == self.value.fn(r, e.quote)) != self.negate


class RegexCondition(VarCondition):
    """`if ($var ~ re)`, `~*`, `!~`, `!~*`."""

    __slots__ = ("pattern", "source", "negate")

    def __init__(self, name: str, pattern: re.Pattern[str], source: str, negate: bool) -> None:
        super().__init__(name)
        self.pattern = pattern
        self.source = source
        self.negate = negate

    def test(self, r: Any, e: _Engine) -> bool:
        return _match(self.pattern, self.source, self.getter(r) or "", r, e) != self.negate


def _file_test(letter: str) -> Callable[[os.stat_result], bool]:
    if letter == "f":
        return lambda st: stat.S_ISREG(st.st_mode)
    if letter == "d":
        return lambda st: stat.S_ISDIR(st.st_mode)
    if letter == "e":
        # ngx_open_cached_file's is_file || is_dir || is_link: a device or a fifo is not "-e".
        return lambda st: stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
    # ngx_is_exec: the owner's execute bit, not access(2).
    return lambda st: bool(st.st_mode & stat.S_IXUSR)


class FileCondition(Condition):
    """`if (-f path)` and -d, -e, -x, each negated with `!`."""

    __slots__ = ("value", "check", "negate")

    def __init__(self, value: _Value, letter: str, negate: bool) -> None:
        self.value = value
        self.check = _file_test(letter)
        self.negate = negate

    def bind(self, table: VariableTable) -> None:
        self.value.bind(table)

    def test(self, r: Any, e: _Engine) -> bool:
        path = self.value.fn(r, e.quote)
        try:
            st = os.stat(path) if path else None
        except (OSError, ValueError):
            # Missing, not a directory, too long, no permission: nginx treats all as absent.
            st = None
        if st is None:
            return self.negate
        return self.check(st) != self.negate


_REGEX_OPS = {"~": (False, False), "~*": (True, False), "!~": (False, True), "!~*": (True, True)}


def _split_condition(node: Node) -> tuple[str, ...]:
    """Parse `if`'s arguments as ngx_http_rewrite_if_condition does, with its errors.

    Returns ("var", name) | ("cmp", name, op, value) | ("regex", name, pattern, op) |
    ("file", op, path).
    """
    vals = ["if", *node.args]
    last = len(vals) - 1
    first = vals[1]
    if not first or first[0] != "(":
        raise node.error(f'invalid condition "{first}"')
    if len(first) == 1:
        cur = 2
    else:
        cur = 1
        vals[1] = first[1:]
    end = vals[last]
    if not end or end[-1] != ")":
        raise node.error(f'invalid condition "{end}"')
    if len(end) == 1:
        last -= 1
    else:
        vals[last] = end[:-1]
    p = vals[cur]
    if len(p) > 1 and p[0] == "$":
        if cur != last and cur + 2 != last:
            raise node.error(f'invalid condition "{p}"')
        name = p[1:]
        if cur == last:
            return ("var", name)
        op = vals[cur + 1]
        if op in ("=", "!="):
            return ("cmp", name, op, vals[last])
        if op in _REGEX_OPS:
            return ("regex", name, vals[last], op)
        raise node.error(f'unexpected "{op}" in condition')
    if (len(p) == 2 and p[0] == "-") or (len(p) == 3 and p[:2] == "!-"):
        if cur + 1 != last:
            raise node.error(f'invalid condition "{p}"')
        return ("file", p, vals[last])
    raise node.error(f'invalid condition "{p}"')


def _compile_regex(source: str, node: Node, flags: int = 0) -> re.Pattern[str]:
    try:
        return compile_pcre(source, flags)
    except re.error as exc:
        raise node.error(f'pcre2_compile() failed: {exc} in "{source}"') from None


def _condition(node: Node, table: VariableTable) -> Condition:
    cond = _split_condition(node)
    kind = cond[0]
    if kind == "var":
        return VarCondition(cond[1].lower())
    if kind == "cmp":
        _, name, op, text = cond
        return CompareCondition(name.lower(), _value(text, node), op == "!=")
    if kind == "regex":
        _, name, source, op = cond
        caseless, negate = _REGEX_OPS[op]
        pattern = _compile_regex(source, node, re.IGNORECASE if caseless else 0)
        declare_named_captures(pattern, table, node)
        return RegexCondition(name.lower(), pattern, source, negate)
    _, op, path = cond
    value = _value(path, node)  # nginx compiles the path before it looks at the letter
    negate = op[0] == "!"
    letter = op[2] if negate else op[1]
    if letter not in "fdex":
        raise node.error(f'invalid condition "{op}"')
    return FileCondition(value, letter, negate)


class IfOp(Op):
    """`if (condition) { ... }`: the block's ops run inline when the condition holds.

    `ctx` is the block's Context (kind http_sif or http_lif); the core sets `conf` to the block's
    LocationConf for a location's `if` (a server's `if` has none and switches nothing).
    """

    __slots__ = ("condition", "ctx", "conf", "ops")

    def __init__(self, condition: Condition, ctx: Context) -> None:
        self.condition = condition
        self.ctx = ctx
        self.conf: Any = None
        self.ops: list[Op] = []

    def bind(self, table: VariableTable) -> None:
        self.condition.bind(table)
        self.ops = list(self.ctx.local(SLOT) or [])
        for op in self.ops:
            op.bind(table)

    def run(self, r: Any, e: _Engine) -> int | None:
        if not self.condition.test(r, e):
            return None
        if self.conf is not None:
            r.loc = self.conf
        for op in self.ops:
            result = op.run(r, e)
            if result is not None:
                return result
        return None


# -- scripts --------------------------------------------------------------------------------


class Script:
    """A server's or a location's rewrite directives, run by the (server) rewrite phase."""

    __slots__ = ("ops", "log")

    def __init__(self, ops: list[Op], log: bool) -> None:
        self.ops = ops
        self.log = log

    def run(self, r: Any) -> int | None:
        """None: go on with the next phase; an int: finalize the request with that status."""
        e = _Engine(self.log)
        for op in self.ops:
            result = op.run(r, e)
            if result is not None:
                return None if result == _STOP else result
        return None


def compile_script(ctx: Context) -> Script | None:
    """The script of a server or location context; None when it has no rewrite directives.

    An `if` block's context has no script of its own (its ops run inside the enclosing one), so
    this returns None for http_sif/http_lif. Raises ConfigError for unknown variables.
    """
    if ctx.kind in (SIF, LIF):
        return None
    ops: list[Op] | None = ctx.local(SLOT)
    if not ops:
        return None
    table: VariableTable = ctx.up("http").slots["variables"]
    for op in ops:
        op.bind(table)
    # rewrite_log is read once per run from the location the phase started in, as nginx does.
    return Script(list(ops), bool(ctx.get("rewrite_log", False)))


def if_ops(ops: list[Op]) -> list[IfOp]:
    """Every `if` op of a list, nested ones included (for the core to attach `conf`)."""
    found: list[IfOp] = []
    for op in ops:
        if isinstance(op, IfOp):
            found.append(op)
            found.extend(if_ops(op.ctx.local(SLOT) or []))
    return found


# -- directives -----------------------------------------------------------------------------


def _table(ctx: Context) -> VariableTable:
    table: VariableTable = ctx.up("http").slots["variables"]
    return table


def _rewrite(ctx: Context, node: Node) -> None:
    source, replacement = node.args[0], node.args[1]
    if not replacement:
        raise node.error("empty replacement")
    pattern = _compile_regex(source, node)
    declare_named_captures(pattern, _table(ctx), node)
    flag: str | None = None
    if len(node.args) == 3:
        flag = node.args[2]
        if flag not in ("last", "break", "redirect", "permanent"):
            raise node.error(f'invalid parameter "{flag}"')
    ctx.append(SLOT, RewriteOp(pattern, source, replacement, flag, node), node)


def _return(ctx: Context, node: Node) -> None:
    code = node.args[0]
    if code.isdigit() and code.isascii():
        status = int(code)
        if status > 999:
            raise node.error(f'invalid return code "{code}"')
        if len(node.args) == 1:
            ctx.append(SLOT, ReturnOp(status, None, False), node)
            return
        text = node.args[1]
    elif len(node.args) == 1 and code.startswith(_REDIRECT_PREFIXES):
        status, text = MOVED_TEMPORARILY, code
    else:
        raise node.error(f'invalid return code "{code}"')
    # An empty text without variables counts as no text (ngx_http_script_return_code).
    ctx.append(SLOT, ReturnOp(status, _value(text, node), bool(text)), node)


def _break(ctx: Context, node: Node) -> None:
    ctx.append(SLOT, BreakOp(), node)


def _set(ctx: Context, node: Node) -> None:
    target, text = node.args
    if not target.startswith("$"):
        raise node.error(f'invalid variable name "{target}"')
    name = target[1:]
    if not name:
        raise node.error('invalid variable name "$"')
    key = name.lower()
    if key not in SETTERS:
        table = _table(ctx)
        getter = table.getters.get(key)
        if getter is None:
            table.add(key, _settable(key, table))
        elif not isinstance(getter, Settable):
            raise node.error(f'the duplicate "{name}" variable')
    ctx.append(SLOT, SetOp(key, _value(text, node)), node)


def _if(ctx: Context, node: Node) -> None:
    condition = _condition(node, _table(ctx))
    child = ctx.child(SIF if ctx.kind == SERVER else LIF, node)
    # The block's ops stay in the child context; IfOp.bind takes them to run them inline.
    ctx.append(SLOT, IfOp(condition, child), node)
    child.run(node.block or [])


def register(reg: Registry) -> None:
    """rewrite/return/break/set in server, location and both kinds of `if`; `if` in server and
    location; the two flags also at the http level (nginx's contexts)."""
    scripts = _SCRIPT_CONTEXTS
    flags = ("http", *_SCRIPT_CONTEXTS)
    reg.add("rewrite", scripts, _rewrite, (2, 3))
    reg.add("return", scripts, _return, (1, 2))
    reg.add("break", scripts, _break, NOARGS)
    reg.add("if", (SERVER, LOCATION), _if, ONEMORE, block=True)
    reg.add("set", scripts, _set, TAKE2)
    reg.add("rewrite_log", flags, flag_slot("rewrite_log"))
    reg.add("uninitialized_variable_warn", flags, flag_slot("uninitialized_variable_warn"))


__all__ = [
    "REDIRECT_CODES",
    "SETTERS",
    "SLOT",
    "BreakOp",
    "IfOp",
    "Op",
    "ReturnOp",
    "RewriteOp",
    "Script",
    "SetOp",
    "Settable",
    "capture_getters",
    "compile_script",
    "declare",
    "declare_named_captures",
    "escape_args",
    "if_ops",
    "register",
    "set_captures",
    "unescape_redirect",
]
