"""nginx's `location` blocks: parsing their arguments and choosing one for a URI.

nginx (ngx_http_core_location, ngx_http_init_locations, ngx_http_core_find_location) keeps, for
every level of nesting, a binary tree of the prefix and exact locations and a list of the regex
locations in configuration order. We keep the same levels but replace the tree by dictionaries,
which give the same answers:

* an exact location whose name equals the URI wins at once;
* otherwise the longest prefix location (`^~` or plain) that the URI starts with is chosen; if
  its name equals the URI, or no location named URI + '/' asks for nginx's auto-redirect, the
  search goes on in its nested locations;
* a location named URI + '/' with `auto_redirect` (proxy_pass and friends) answers 301 instead;
* then, unless the chosen prefix is `^~`, the level's regexes are tried in order, and the first
  that matches is chosen and its nested locations searched.

The prefix lookup walks the distinct name lengths from the longest (`uri[:n] in dict`), which
is a handful of dictionary probes for a realistic configuration.

Quirks kept on purpose because nginx has them:
* `^~` only stops the regexes of its own level: a nested `^~` inside a plain prefix still lets
  the enclosing level's regexes run (ngx_http_core_find_location returns DECLINED upwards);
* prefix and exact locations nested in a regex location are never reachable (nginx never
  builds their tree), and their duplicates are not reported; regexes nested in regexes work;
* when nothing matches at a nested level, the request keeps the deepest prefix that matched.

`named` locations (`@name`) are looked up by name only; the first of duplicates wins.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.regex import compile_pcre

MODIFIERS = ("=", "^~", "~", "~*")


class _RedirectSlash:
    """What `LocationTree.find` returns as the conf for nginx's auto-redirect."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REDIRECT_SLASH"


# nginx answers 301 with `Location: <escaped uri + '/'>[?args]` (ngx_http_core_find_config_phase
# uses the location's escaped name, which equals the URI plus the slash).
REDIRECT_SLASH: Any = _RedirectSlash()

_UNSET: Any = object()

# Search results, named after nginx's return codes.
_OK, _DONE, _AGAIN, _DECLINED = range(4)

# ngx_filename_cmp sorts '/' below every other byte (NUL aside): duplicates are reported in that
# order, so sort keys map '/' to \x01 and shift \x01..\x2e up by one to keep the rest in order.
_SORT_KEY = str.maketrans({"/": "\x01", **{chr(c): chr(c + 1) for c in range(1, 0x2F)}})


@dataclass(slots=True)
class LocationSpec:
    """One `location` directive as written, with the locations nested in it."""

    modifier: str  # '', '=', '^~', '~', '~*', '@'
    name: str  # the pattern/prefix/name as written ('@x' keeps the '@')
    conf: Any  # opaque here: whatever the caller attaches (the LocationConf)
    node: Node  # the `location` directive, for errors
    children: list[LocationSpec] = field(default_factory=list)
    regex: re.Pattern[str] | None = None
    auto_redirect: bool = False  # nginx's clcf->auto_redirect: set by proxy_pass and friends

    @property
    def is_exact(self) -> bool:
        return self.modifier == "="

    @property
    def is_named(self) -> bool:
        return self.modifier == "@"


def parse_location(node: Node, parent: LocationSpec | None, conf: Any) -> LocationSpec:
    """The arguments of `location [=|~|~*|^~] uri { }` / `location @name { }`, checked as nginx
    checks them when it reads the directive. `parent` is the enclosing location (None at server
    level); the caller appends the result to `parent.children` (or to the server's list)."""
    args = node.args
    if len(args) == 2:
        mod, name = args
        if mod not in MODIFIERS:
            raise node.error(f'invalid location modifier "{mod}"')
    elif len(args) == 1:
        mod, name = _split_glued(args[0])
    else:
        raise node.error('invalid number of arguments in "location" directive')

    regex = None
    if mod in ("~", "~*"):
        regex = compile_regex(name, node, caseless=mod == "~*")
    elif mod == "" and name.startswith("@"):
        mod = "@"
    spec = LocationSpec(mod, name, conf, node, regex=regex)

    if parent is not None:
        _check_nesting(spec, parent, node)
    return spec


def _split_glued(arg: str) -> tuple[str, str]:
    """One argument: nginx also accepts the modifier glued to the name (`=/x`, `~*\\.gif$`)."""
    if arg.startswith("="):
        return "=", arg[1:]
    if arg.startswith("^~"):
        return "^~", arg[2:]
    if arg.startswith("~*"):
        return "~*", arg[2:]
    if arg.startswith("~"):
        return "~", arg[1:]
    return "", arg


def _check_nesting(spec: LocationSpec, parent: LocationSpec, node: Node) -> None:
    if parent.is_exact:
        raise node.error(
            f'location "{spec.name}" cannot be inside the exact location "{parent.name}"'
        )
    if parent.is_named:
        raise node.error(
            f'location "{spec.name}" cannot be inside the named location "{parent.name}"'
        )
    if spec.is_named:
        raise node.error(f'named location "{spec.name}" can be on the server level only')
    # A regex parent's "name" is its pattern: nginx compares with it all the same.
    if spec.regex is None and not spec.name.startswith(parent.name):
        raise node.error(f'location "{spec.name}" is outside location "{parent.name}"')


def compile_regex(pattern: str, node: Node, *, caseless: bool = False) -> re.Pattern[str]:
    """compile_pcre, with errors worded like nginx's `pcre2_compile() failed: ...`."""
    try:
        return compile_pcre(pattern, re.IGNORECASE if caseless else 0)
    except re.error as exc:
        raise node.error(pcre_error_text(pattern, exc)) from None


def pcre_error_text(pattern: str, exc: re.error) -> str:
    text = f'pcre2_compile() failed: {exc.msg} in "{pattern}"'
    # Python's position is in the translated pattern; it is exact when nothing was translated.
    pos = exc.pos
    if pos is not None and pos < len(pattern) and exc.pattern == pattern:
        text += f' at "{pattern[pos:]}"'
    return text


# --------------------------------------------------------------------------------------------
# the tree


class _Loc:
    """A location as the search needs it."""

    __slots__ = ("conf", "noregex", "regex", "children")

    def __init__(self, spec: LocationSpec, children: _Level | None) -> None:
        self.conf = spec.conf
        self.noregex = spec.modifier == "^~"
        self.regex = spec.regex
        self.children = children


class _Level:
    """The locations directly inside one parent (the server, or one location)."""

    __slots__ = ("exact", "prefix", "lengths", "redirect", "regexes")

    def __init__(self) -> None:
        self.exact: dict[str, _Loc] = {}
        self.prefix: dict[str, _Loc] = {}
        self.lengths: list[int] = []  # distinct lengths of `prefix` names, ascending
        self.redirect: dict[str, _Loc] = {}  # name without its '/' -> the auto-redirect location
        self.regexes: tuple[_Loc, ...] = ()

    def empty(self) -> bool:
        return not (self.exact or self.prefix or self.regexes)

    def static(self, uri: str) -> tuple[int, _Loc | None]:
        """ngx_http_core_find_static_location."""
        loc = self.exact.get(uri)
        if loc is not None:
            return _OK, loc
        prefix = self.prefix
        if prefix:
            lengths = self.lengths
            i = bisect_right(lengths, len(uri))
            while i:
                i -= 1
                loc = prefix.get(uri[: lengths[i]])
                if loc is not None:
                    if lengths[i] == len(uri):
                        return _AGAIN, loc
                    break
        if self.redirect:
            target = self.redirect.get(uri)
            if target is not None:
                return _DONE, target
        if loc is not None:
            return _AGAIN, loc
        return _DECLINED, None


class LocationTree:
    """The locations of one server, ready for the per-request search."""

    __slots__ = ("_root", "_named")

    def __init__(self, root: _Level, named: dict[str, Any]) -> None:
        self._root = root
        self._named = named

    @classmethod
    def build(cls, specs: list[LocationSpec]) -> LocationTree:
        """`specs`: the server's locations in configuration order, each with its children.

        Raises `duplicate location "/x"` located at the later of the two, as nginx does
        (checked innermost first, and in nginx's name order within a level).
        """
        named: dict[str, Any] = {}
        for spec in specs:
            if spec.is_named:
                named.setdefault(spec.name, spec.conf)
        return cls(_build_level([s for s in specs if not s.is_named], static=True), named)

    def find(self, uri: str) -> tuple[Any, re.Match[str] | None] | None:
        """(conf, the match of the last regex location used, or None); None when no location
        matches (the server's own conf applies); (REDIRECT_SLASH, None) for nginx's 301 to
        uri + '/'."""
        state: list[Any] = [_UNSET, None]
        rc = _find(self._root, uri, state)
        if rc == _DONE:
            return REDIRECT_SLASH, None
        if state[0] is _UNSET:
            return None
        return state[0], state[1]

    def named(self, name: str) -> Any | None:
        """The conf of `location @name` (name with its '@'), or None."""
        return self._named.get(name)


def _find(level: _Level, uri: str, state: list[Any]) -> int:
    """ngx_http_core_find_location; `state` is [conf, match], nginx's r->loc_conf/captures."""
    rc, loc = level.static(uri)
    noregex = False
    if loc is not None:
        state[0] = loc.conf
        if rc == _AGAIN:
            noregex = loc.noregex
            rc = _find(loc.children, uri, state) if loc.children is not None else _DECLINED
    if rc in (_OK, _DONE):
        return rc
    if not noregex:
        for loc in level.regexes:
            match = loc.regex.search(uri)  # type: ignore[union-attr]
            if match is not None:
                state[0] = loc.conf
                state[1] = match
                if loc.children is not None:
                    # A redirect found in there is not honoured: nginx turns it into OK.
                    _find(loc.children, uri, state)
                return _OK
    return rc


def _build_level(specs: list[LocationSpec], *, static: bool) -> _Level:
    """One level. With `static` False (inside a regex location) only regexes are kept."""
    level = _Level()
    statics = [s for s in specs if s.regex is None and not s.is_named] if static else []
    # nginx sorts by name ('/' lowest), exact before prefix of the same name, stable otherwise;
    # it builds the nested trees in that order, then reports the first duplicate it meets.
    order = sorted(
        range(len(statics)),
        key=lambda i: (statics[i].name.translate(_SORT_KEY), not statics[i].is_exact, i),
    )
    built: dict[int, _Loc] = {}
    for i in order:
        spec = statics[i]
        children = _build_children(spec.children, static=True)
        built[i] = _Loc(spec, children)
    _check_duplicates([statics[i] for i in order])

    auto: dict[str, bool] = {}
    for i, spec in enumerate(statics):
        table = level.exact if spec.is_exact else level.prefix
        table[spec.name] = built[i]
        if spec.auto_redirect and spec.name.endswith("/"):
            auto[spec.name] = True
    for name in auto:
        # When `= /x/` and `/x/` share the name, nginx's node uses the exact one's conf.
        level.redirect[name[:-1]] = level.exact.get(name) or level.prefix[name]
    level.lengths = sorted({len(name) for name in level.prefix})
    level.regexes = tuple(
        _Loc(s, _build_children(s.children, static=False)) for s in specs if s.regex is not None
    )
    return level


def _build_children(children: list[LocationSpec], *, static: bool) -> _Level | None:
    if not children:
        return None
    level = _build_level(children, static=static)
    return None if level.empty() else level


def _check_duplicates(ordered: list[LocationSpec]) -> None:
    """ngx_http_join_exact_locations: one exact and one prefix location may share a name."""
    prev: LocationSpec | None = None
    has_exact = has_prefix = False
    for spec in ordered:
        if prev is None or spec.name != prev.name:
            has_exact = has_prefix = False
        if (spec.is_exact and has_exact) or (not spec.is_exact and has_prefix):
            raise spec.node.error(f'duplicate location "{spec.name}"')
        if spec.is_exact:
            has_exact = True
        else:
            has_prefix = True
        prev = spec
