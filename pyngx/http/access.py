"""`allow`, `deny` (ngx_http_access_module) and `satisfy` for http.

The rules are the stream module's (`pyngx.stream.access.Rules`: checked in order, the first
one matching the client wins, one list per address family with `all` in each). A level with
rules of its own replaces its parent's list, as nginx's merge does. A denied request ends with
403 and `access forbidden by rule` at error level. The address checked is the connection's
(`r.conn.remote_addr`, which realip replaces as nginx replaces the connection's sockaddr).

`satisfy any` only differs from `all` when another access module (auth_basic, auth_request)
may let the request through; with allow/deny alone nginx answers the same way: 403, and the
same error line (logged by its post-access phase instead of the access handler).
"""

from __future__ import annotations

import socket
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, Context, Registry
from pyngx.core.log import ERROR
from pyngx.stream.access import ALL, UNIX, Rule, Rules, parse_cidr

HTTP, SRV, LOC = "http", "http_server", "http_location"
FORBIDDEN = 403
_RULES = "http_access_rules"


class HttpAccess:
    """The access-phase handler of one location."""

    __slots__ = ("rules",)

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def __call__(self, r: Any) -> int | None:
        conn = r.conn
        if self.rules.check(conn.remote_addr, conn.family == socket.AF_UNIX):
            r.log(ERROR, "access forbidden by rule")
            return FORBIDDEN
        return None


def _rule(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    deny = node.name == "deny"
    if arg == "all":
        rule = Rule(ALL, None, deny)
    elif arg == "unix:":
        rule = Rule(UNIX, None, deny)
    else:
        rule = Rule("ip", parse_cidr(ctx, node, arg), deny)
    ctx.append(_RULES, rule, node)


def _satisfy(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in ("all", "any"):
        raise node.error(f'invalid value "{arg}"')  # ngx_conf_set_enum_slot's words
    ctx.set_once("satisfy", arg, node)


class AccessModule:
    """The module object for http/modules.py."""

    @staticmethod
    def register(reg: Registry) -> None:
        reg.add("allow", [HTTP, SRV, LOC], _rule, TAKE1)
        reg.add("deny", [HTTP, SRV, LOC], _rule, TAKE1)
        reg.add("satisfy", [HTTP, SRV, LOC], _satisfy, TAKE1)

    @staticmethod
    def configure(ctx: Context, loc: Any) -> None:
        loc.satisfy = ctx.get("satisfy", "all")
        rules: list[Rule] = ctx.get(_RULES, [])
        if not rules:
            return
        # One handler per rule list: locations that inherit it share it.
        owner = ctx
        while _RULES not in owner.slots:
            owner = owner.parent  # type: ignore[assignment]
        handler = owner.slots.get("__http_access__")
        if handler is None:
            handler = owner.slots["__http_access__"] = HttpAccess(Rules(rules))
        loc.phase_access.append(handler)


MODULE = AccessModule()

__all__ = ["MODULE", "HttpAccess"]
