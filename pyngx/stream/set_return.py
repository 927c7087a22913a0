"""`set` (ngx_stream_set_module), `return` (ngx_stream_return_module), and the declaration of
the variables that `geo`, `split_clients` and `set` create.

nginx resolves variable names after the whole `stream` block is read, so any directive may use
a variable defined further down: `declare` names every such variable before the block runs
(as module._stream does for `map`) and returns the compilers to run once it has.

`set` values live in a dict on the session created by the first `set` of the session, so a
configuration without `set` costs nothing per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import Context
from pyngx.conf.variables import Getter, VariableTable, compile_complex
from pyngx.stream.geo import CompiledGeo, GeoHolder, parse_geo_block
from pyngx.stream.split_clients import CompiledSplit, SplitHolder, parse_split_block
from pyngx.stream.variables import STREAM_VARIABLES

STATUS_OK = 200


def _settable(name: str, fallback: Getter | None) -> Getter:
    """A variable `set` may assign: the session's value once set, else what it was before
    (a map/geo/split_clients value, or nginx's empty value for a name only `set` creates)."""

    def getter(s: Any) -> str | None:
        values = s.vars
        if values is not None:
            value = values.get(name)
            if value is not None:
                return value
        return fallback(s) if fallback is not None else ""

    return getter


def declare(block: list[Node], table: VariableTable) -> list[Callable[[], None]]:
    """Declare the `geo`, `split_clients` and `set` variables of a `stream` block."""
    finish: list[Callable[[], None]] = []
    for sub in block:
        if sub.name == "geo" and sub.block is not None and 1 <= len(sub.args) <= 2:
            geo = parse_geo_block(sub)
            _check_builtin(geo.name, sub)
            geo_holder = GeoHolder()
            table.add(geo.name, geo_holder.evaluate)
            finish.append(lambda h=geo_holder, c=geo: setattr(h, "compiled", CompiledGeo(c, table)))
        elif sub.name == "split_clients" and sub.block is not None and len(sub.args) == 2:
            split = parse_split_block(sub)
            _check_builtin(split.name, sub)
            split_holder = SplitHolder()
            table.add(split.name, split_holder.evaluate)
            finish.append(
                lambda h=split_holder, c=split: setattr(h, "compiled", CompiledSplit(c, table))
            )
    # After the other variables: a `set` of a map/geo variable overrides it per session.
    for server in block:
        if server.name != "server" or server.block is None:
            continue
        for sub in server.block:
            if sub.name == "set" and len(sub.args) == 2 and sub.args[0].startswith("$"):
                name = sub.args[0][1:]
                if name and name not in STREAM_VARIABLES.getters:
                    table.add(name, _settable(name, table.getters.get(name)))
    return finish


def _check_builtin(name: str, node: Node) -> None:
    # Built-in variables are not "changeable" in nginx: a block may not redefine them.
    if name in STREAM_VARIABLES.getters:
        raise node.error(f'the duplicate "{name}" variable')


# -- directives ---------------------------------------------------------------------------


def _declared(ctx: Context, node: Node) -> None:
    """`geo` and `split_clients`: parsed and compiled by `declare`; here only placed."""


def _set(ctx: Context, node: Node) -> None:
    target, value = node.args
    if not target.startswith("$"):
        raise node.error(f'invalid variable name "{target}"')
    name = target[1:]
    if name in STREAM_VARIABLES.getters:
        raise node.error(f'the duplicate "{name}" variable')
    table: VariableTable = ctx.up("stream").slots["variables"]
    compiled = compile_complex(value, table)
    ctx.slots.setdefault("set", []).append((name, compiled))


def _return(ctx: Context, node: Node) -> None:
    if "return" in ctx.slots:
        raise node.error('"return" directive is duplicate')
    table: VariableTable = ctx.up("stream").slots["variables"]
    ctx.slots["return"] = compile_complex(node.args[0], table)
    ctx.locations["return"] = node


def register(reg: Any, stream: str, server: str) -> None:
    from pyngx.conf.registry import TAKE1, TAKE2, TAKE12

    reg.add("geo", [stream], _declared, TAKE12, block=True)
    reg.add("split_clients", [stream], _declared, TAKE2, block=True)
    reg.add("set", [server], _set, TAKE2)
    reg.add("return", [server], _return, TAKE1)


# -- per session --------------------------------------------------------------------------


def preaccess(srv: Context) -> tuple[Callable[[Any], int | None], ...]:
    """The server's preaccess handlers: one that runs its `set`s in order, if it has any."""
    sets: list[tuple[str, Callable[[Any], str]]] | None = srv.local("set")
    if not sets:
        return ()
    steps = tuple(sets)

    def run_sets(session: Any) -> None:
        values = session.vars
        if values is None:
            values = session.vars = {}
        for name, compiled in steps:
            # In order: a later `set` sees what an earlier one assigned.
            values[name] = compiled(session)
        return None

    return (run_sets,)


def return_value(srv: Context) -> Callable[[Any], str] | None:
    """The `return` value if it, not an earlier `proxy_pass`, is the server's content handler
    (nginx keeps whichever of the two comes last)."""
    value: Callable[[Any], str] | None = srv.local("return")
    if value is None:
        return None
    proxy = srv.locations.get("proxy_pass")
    if proxy is not None and proxy.line > srv.locations["return"].line:
        return None
    return value


def respond(session: Any) -> None:
    """ngx_stream_return_handler: send the value (if any), close, $status 200."""
    data = session.server.return_value(session).encode("utf-8", "surrogateescape")
    if data:
        session.bytes_sent += len(data)
        session.transport.write(data)
    session.finalize(STATUS_OK)
