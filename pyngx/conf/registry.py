"""The directive registry and the walk that applies a parsed tree to it.

Like nginx's `ngx_command_t` tables, each directive is one declarative row: its name, the
contexts it may appear in, how many arguments it takes, whether it opens a block, and the
handler that stores its value. Handlers store into the `Context` of the level they appear at;
modules later merge levels (a server inherits from its `stream` block) into frozen runtime
objects. Checks run in nginx's order so errors read the same: unknown directive, not allowed
here, block/terminator mismatch, number of arguments, then the handler's own checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.values import parse_flag, parse_number, parse_size, parse_time

Handler = Callable[["Context", Node], None]

# Argument counts, named after nginx's NGX_CONF_TAKE* flags: (min, max); max None = unbounded.
NOARGS = (0, 0)
TAKE1 = (1, 1)
TAKE2 = (2, 2)
TAKE12 = (1, 2)
TAKE123 = (1, 3)
TAKE1234 = (1, 4)
ONEMORE = (1, None)
TWOMORE = (2, None)
ANY = (0, None)


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    contexts: frozenset[str]
    handler: Handler
    nargs: tuple[int, int | None] = TAKE1
    block: bool = False


class Registry:
    """All known directives, by name; a name may have different rows per context."""

    def __init__(self) -> None:
        self._rows: dict[str, list[Directive]] = {}

    def add(
        self,
        name: str,
        contexts: Iterable[str],
        handler: Handler,
        nargs: tuple[int, int | None] = TAKE1,
        *,
        block: bool = False,
    ) -> None:
        row = Directive(name, frozenset(contexts), handler, nargs, block)
        self._rows.setdefault(name, []).append(row)

    def names(self) -> list[str]:
        return sorted(self._rows)

    def find(self, node: Node, context: str) -> Directive:
        rows = self._rows.get(node.name)
        if not rows:
            raise node.error(f'unknown directive "{node.name}"')
        for row in rows:
            if context in row.contexts:
                break
        else:
            raise node.error(f'"{node.name}" directive is not allowed here')
        if row.block and node.block is None:
            raise node.error(f'directive "{node.name}" has no opening "{{"')
        if not row.block and node.block is not None:
            raise node.error(f'directive "{node.name}" is not terminated by ";"')
        lo, hi = row.nargs
        if len(node.args) < lo or (hi is not None and len(node.args) > hi):
            raise node.error(f'invalid number of arguments in "{node.name}" directive')
        return row


UNSET: Any = object()


@dataclass(slots=True)
class Context:
    """One configuration level while compiling: main, events, stream, a stream server, ...

    `slots` holds what was set at this level only; `get` looks up through the parents the way
    nginx's merge functions inherit unset values.
    """

    kind: str
    registry: Registry
    parent: Context | None = None
    node: Node | None = None
    slots: dict[str, Any] = field(default_factory=dict)
    locations: dict[str, Node] = field(default_factory=dict)
    children: list[Context] = field(default_factory=list)

    def child(self, kind: str, node: Node) -> Context:
        ctx = Context(kind, self.registry, self, node)
        self.children.append(ctx)
        return ctx

    def run(self, nodes: list[Node]) -> None:
        for node in nodes:
            row = self.registry.find(node, self.kind)
            try:
                row.handler(self, node)
            except DirectiveValueError as exc:
                if exc.full:
                    raise node.error(exc.text) from None
                raise node.error(f'"{node.name}" directive {exc.text}') from None

    def set_once(self, slot: str, value: Any, node: Node) -> None:
        if slot in self.slots:
            raise node.error(f'"{node.name}" directive is duplicate')
        self.slots[slot] = value
        self.locations[slot] = node

    def append(self, slot: str, value: Any, node: Node) -> None:
        self.slots.setdefault(slot, []).append(value)
        self.locations.setdefault(slot, node)

    def get(self, slot: str, default: Any = UNSET) -> Any:
        ctx: Context | None = self
        while ctx is not None:
            if slot in ctx.slots:
                return ctx.slots[slot]
            ctx = ctx.parent
        if default is UNSET:
            raise KeyError(slot)
        return default

    def local(self, slot: str, default: Any = None) -> Any:
        return self.slots.get(slot, default)

    def where(self, slot: str) -> Node | None:
        ctx: Context | None = self
        while ctx is not None:
            if slot in ctx.locations:
                return ctx.locations[slot]
            ctx = ctx.parent
        return None

    def warn(self, node: Node, message: str) -> None:
        """A `[warn]` that `-t` and start-up print with the location, as nginx's do."""
        root = self
        while root.parent is not None:
            root = root.parent
        root.slots.setdefault("__warnings__", []).append(f"{message} in {node.file}:{node.line}")

    def up(self, kind: str) -> Context:
        ctx: Context | None = self
        while ctx is not None and ctx.kind != kind:
            ctx = ctx.parent
        if ctx is None:
            raise LookupError(kind)
        return ctx


# Reusable setters, as nginx's ngx_conf_set_*_slot: one per value kind, bound to a slot name.


def flag_slot(slot: str) -> Handler:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, parse_flag(node.args[0], node.name), node)

    return handler


def time_slot(slot: str) -> Handler:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, parse_time(node.args[0]), node)

    return handler


def size_slot(slot: str) -> Handler:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, parse_size(node.args[0]), node)

    return handler


def number_slot(slot: str) -> Handler:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, parse_number(node.args[0]), node)

    return handler


def str_slot(slot: str) -> Handler:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, node.args[0], node)

    return handler


def enum_slot(slot: str, values: dict[str, Any]) -> Handler:
    def handler(ctx: Context, node: Node) -> None:
        arg = node.args[0]
        if arg not in values:
            raise node.error(f'invalid value "{arg}" in "{node.name}" directive')
        ctx.set_once(slot, values[arg], node)

    return handler


def ignore(ctx: Context, node: Node) -> None:
    """Accepted for compatibility; nothing to configure in pyngx."""


__all__ = [
    "ANY",
    "NOARGS",
    "ONEMORE",
    "TAKE1",
    "TAKE12",
    "TAKE123",
    "TAKE1234",
    "TAKE2",
    "TWOMORE",
    "UNSET",
    "Context",
    "Directive",
    "Handler",
    "Registry",
    "enum_slot",
    "flag_slot",
    "ignore",
    "number_slot",
    "size_slot",
    "str_slot",
    "time_slot",
]
