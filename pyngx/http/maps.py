"""`map`, `geo` and `split_clients` in the http block (ngx_http_map/geo/split_clients_module).

Parsing, matching and hashing are the stream modules' (pyngx/stream/map.py, geo.py,
split_clients.py: they take a variable table and evaluate on whatever object its getters
take); this module declares their variables for http and adds what http has on top:

- nginx resolves variable names once the whole configuration is read, so `declare` names every
  map/geo/split_clients variable before the http block runs, and compiles the blocks after it;
- values are cached per request, as nginx caches indexed variables: the first use computes
  the value, later uses in the same request get the same one (also after the URI changed),
  except for a `map` marked `volatile`;
- the variables are CHANGEABLE: `set` may assign them (the value it gives wins), and a later
  `map`/`geo` of the same name replaces an earlier one, while a built-in name is an error;
- `geo` takes the client address from the connection (after realip), or from a variable, and
  honours `proxy`/`proxy_recursive` (the address from X-Forwarded-For when the client is a
  trusted proxy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE2, TAKE12, Context, Registry
from pyngx.conf.variables import Getter, VariableTable
from pyngx.http.variables import HTTP_VARIABLES
from pyngx.stream.geo import CompiledGeo, GeoHolder, parse_geo_block
from pyngx.stream.map import CompiledMap, MapHolder, parse_map_block
from pyngx.stream.split_clients import CompiledSplit, SplitHolder, parse_split_block

try:  # the rewrite module's class for variables `set` may assign, once it is there
    from pyngx.http.rewrite import Settable as _RewriteSettable  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on which modules are present
    _RewriteSettable = None

HTTP = "http"
_MISSING = object()


class Changeable:
    """A variable `set` may assign: the request's value from `set` (r.variables), else the
    module's (the same contract as the rewrite module's Settable, used when that is absent)."""

    __slots__ = ("name", "fallback")

    def __init__(self, name: str, fallback: Getter) -> None:
        self.name = name
        self.fallback = fallback

    def __call__(self, r: Any) -> str | None:
        value = r.variables.get(self.name)
        if value is not None:
            return value
        return self.fallback(r)


def _changeable(name: str, getter: Getter) -> Getter:
    if _RewriteSettable is not None:
        return _RewriteSettable(name, getter)  # type: ignore[no-any-return]
    return Changeable(name, getter)


def _is_changeable(getter: Getter) -> bool:
    return isinstance(getter, Changeable) or (
        _RewriteSettable is not None and isinstance(getter, _RewriteSettable)
    )


def cached(evaluate: Callable[[Any], str]) -> Getter:
    """Compute once per request (nginx's r->variables cache), keyed by the evaluator."""

    def getter(r: Any) -> str:
        extra = r.extra
        if extra is None:
            extra = r.extra = {}
        value = extra.get(evaluate, _MISSING)  # type: ignore[call-overload]
        if value is _MISSING:
            value = extra[evaluate] = evaluate(r)  # type: ignore[index]
        return value  # type: ignore[no-any-return]

    return getter


def _define(table: VariableTable, name: str, getter: Getter, node: Node) -> None:
    """ngx_http_add_variable(..., CHANGEABLE): names are case-insensitive; a built-in (or any
    variable that may not change) is "duplicate", a changeable one is taken over."""
    for key in dict.fromkeys((name.lower(), name)):
        old = table.getters.get(key)
        if old is not None and (key in HTTP_VARIABLES.getters or not _is_changeable(old)):
            raise node.error(f'the duplicate "{name}" variable')
        table.add(key, _changeable(key.lower(), getter))


def _client(r: Any) -> str | None:
    return r.conn.remote_addr  # "unix:" for a unix-socket client: no address, as nginx's


def _forwarded(r: Any) -> list[str]:
    return [v for n, v in r.header_list if n.lower() == "x-forwarded-for"]


def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Callable[[], None]]:
    """Declare the variables of the http block's map/geo/split_clients; return the compilers
    to run once the block is read."""
    finish: list[Callable[[], None]] = []
    for sub in nodes:
        if sub.block is None:
            continue
        if sub.name == "map" and len(sub.args) == 2:
            conf = parse_map_block(sub.args[0], sub.args[1], sub)
            holder = MapHolder()
            volatile = any(line.name == "volatile" and not line.args for line in sub.block)
            getter = holder.evaluate if volatile else cached(holder.evaluate)
            _define(table, conf.name, getter, sub)

            def compile_map(h: MapHolder = holder, c: Any = conf) -> None:
                h.compiled = CompiledMap(c, table)

            finish.append(compile_map)
        elif sub.name == "geo" and 1 <= len(sub.args) <= 2:
            geo = parse_geo_block(sub, http=True)
            geo_holder = GeoHolder()
            _define(table, geo.name, cached(geo_holder.evaluate), sub)

            def compile_geo(h: GeoHolder = geo_holder, c: Any = geo) -> None:
                h.compiled = CompiledGeo(c, table, client=_client, forwarded=_forwarded)

            finish.append(compile_geo)
        elif sub.name == "split_clients" and len(sub.args) == 2:
            split = parse_split_block(sub)
            split_holder = SplitHolder()
            _define(table, split.name, cached(split_holder.evaluate), sub)

            def compile_split(h: SplitHolder = split_holder, c: Any = split) -> None:
                h.compiled = CompiledSplit(c, table)

            finish.append(compile_split)
    return finish


def _declared(ctx: Context, node: Node) -> None:
    """Parsed by `declare`, compiled after the block; here only checked for its place."""


class MapsModule:
    """The module object for http/modules.py."""

    @staticmethod
    def register(reg: Registry) -> None:
        reg.add("map", [HTTP], _declared, TAKE2, block=True)
        reg.add("geo", [HTTP], _declared, TAKE12, block=True)
        reg.add("split_clients", [HTTP], _declared, TAKE2, block=True)

    declare = staticmethod(declare)


MODULE = MapsModule()

__all__ = ["MODULE", "Changeable", "cached", "declare"]
