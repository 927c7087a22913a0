"""proxy_redirect and proxy_cookie_path/proxy_cookie_domain, compiled per location.

nginx's rules: a plain pattern (variables allowed) matches a prefix, case-sensitively, and only
that prefix is replaced; `~` / `~*` patterns are regexes (case-insensitive with `*`) whose
match replaces the whole value and whose captures ($1, named) the replacement may use. The
first rule that matches wins. Without any proxy_redirect, a static proxy_pass gets nginx's
default rule (its URL back to the location); `off` disables them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pyngx.conf.regex import compile_pcre
from pyngx.conf.registry import Context
from pyngx.conf.variables import VariableTable, compile_complex, split_complex
from pyngx.http.proxy_conf import Target
from pyngx.http.proxy_response import RedirectRule


def redirect_rules(
    ctx: Context, table: VariableTable, target: Target | None, location: str
) -> list[RedirectRule] | None:
    """The location's proxy_redirect rules (None: off, or no rule at all)."""
    entries = ctx.get("proxy_redirect", None)
    if entries == "off":
        return None
    if not entries:
        if target is None:
            return None  # proxy_pass with variables has no default rule
        if target.uri:
            return [_rule(target.url, location, table)]
        return [_rule(target.url + "/", "/", table)]
    return [_rule(value[0], value[1], table) for _kind, value, _node in entries]


def _rule(pattern: str, replacement: str, table: VariableTable) -> RedirectRule:
    if pattern.startswith("~"):
        flags = 0
        text = pattern[1:]
        if text.startswith("*"):
            flags = re.IGNORECASE
            text = text[1:]
        rx = compile_pcre(text, flags)
        return RedirectRule(None, rx, _with_captures(replacement, table, rx))
    plain = compile_complex(replacement, table)
    return RedirectRule(compile_complex(pattern, table), None, lambda r, m: plain(r))


def _with_captures(
    text: str, table: VariableTable, rx: re.Pattern[str]
) -> Callable[[Any, re.Match[str] | None], str]:
    pieces: list[Callable[[Any, re.Match[str] | None], str]] = []
    for part in split_complex(text):
        if isinstance(part, str):
            pieces.append(lambda r, m, s=part: s)
            continue
        name = part[0]
        if name.isdigit():
            idx = int(name)
            pieces.append(lambda r, m, i=idx: (m.group(i) or "") if m and i <= m.re.groups else "")
        elif name in rx.groupindex:
            pieces.append(lambda r, m, n=name: (m.group(n) or "") if m else "")
        else:
            getter = table.lookup(name)
            pieces.append(lambda r, m, g=getter: g(r) or "")
    return lambda r, m: "".join(p(r, m) for p in pieces)


def cookie_rewriter(ctx: Context, table: VariableTable) -> Callable[[Any, str], str] | None:
    """proxy_cookie_domain and proxy_cookie_path of the location, as one Set-Cookie rewriter."""
    domains = ctx.get("proxy_cookie_domain", None)
    paths = ctx.get("proxy_cookie_path", None)
    domains = None if domains == "off" else domains
    paths = None if paths == "off" else paths
    if not domains and not paths:
        return None
    d_rules = [_cookie_rule_compile(a, b, table, True) for a, b in domains or []]
    p_rules = [_cookie_rule_compile(a, b, table, False) for a, b in paths or []]

    def rewrite(r: Any, value: str) -> str:
        """ngx_http_proxy_rewrite_cookie: the Domain and Path attributes; a rewritten cookie
        is rebuilt from its trimmed parts, joined with "; " as nginx does."""
        attrs = []
        for part in value.split(";"):
            key, eq, val = part.partition("=")
            attrs.append([key.strip(" "), val.strip(" ") if eq else None])
        changed = False
        for attr in attrs[1:]:
            k = attr[0].lower()
            rules = d_rules if k == "domain" else p_rules if k == "path" else None
            if not rules or attr[1] is None:
                continue
            for rule in rules:
                new = rule(r, attr[1])
                if new is not None:
                    attr[1] = new
                    changed = True
                    break
        if not changed:
            return value
        return "; ".join(k if v is None else f"{k}={v}" for k, v in attrs)

    return rewrite


def _cookie_rule_compile(
    pattern: str, replacement: str, table: VariableTable, domain: bool
) -> Callable[[Any, str], str | None]:
    if pattern.startswith("~"):
        flags = 0
        text = pattern[1:]
        if text.startswith("*"):
            flags = re.IGNORECASE
            text = text[1:]
        rx = compile_pcre(text, flags)
        repl = _with_captures(replacement, table, rx)

        def regex_rule(r: Any, v: str) -> str | None:
            m = rx.match(v)
            return None if m is None else repl(r, m)

        return regex_rule
    pat = compile_complex(pattern, table)
    rep = compile_complex(replacement, table)
    if domain:

        def domain_rule(r: Any, v: str) -> str | None:
            p = pat(r).lstrip(".")
            vv = v[1:] if v.startswith(".") else v
            if vv.lower() != p.lower():
                return None
            return (v[:1] if v.startswith(".") else "") + rep(r)

        return domain_rule

    def path_rule(r: Any, v: str) -> str | None:
        p = pat(r)
        if not v.startswith(p):
            return None
        return rep(r) + v[len(p) :]

    return path_rule


__all__ = ["cookie_rewriter", "redirect_rules"]
