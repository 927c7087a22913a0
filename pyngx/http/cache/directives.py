"""The proxy cache directives (ngx_http_proxy_module's proxy_cache*, ngx_http_file_cache.c's
proxy_cache_path), compiled into one `CacheSettings` per location: `loc.cache`, None when
the location does not cache (no `proxy_cache`, or `proxy_cache off`).

Inheritance is nginx's (ngx_http_proxy_merge_loc_conf): every directive is inherited from
the enclosing level unless set; the list directives (proxy_cache_valid, proxy_cache_bypass,
proxy_no_cache) accumulate within a level and a level's list replaces its parent's;
proxy_cache_methods always includes GET and HEAD; proxy_cache_use_stale `off` wins over the
other values and `error` implies "no live upstreams".

`proxy_cache_path` objects (CachePath) are made when the directive is read; in `finish`, at
the end of the http block, their paths are resolved against the prefix and created (as
nginx's ngx_create_paths, also for `-t`), and each gets its shared KeysZone, allocated here in
the master before the workers fork (and kept across reloads when unchanged).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import ONEMORE, TAKE1, Context, Registry, flag_slot
from pyngx.conf.values import parse_time
from pyngx.conf.variables import VariableTable, compile_complex, has_variables
from pyngx.http.cache.policy import IGNORABLE, STALE_CONDITIONS
from pyngx.http.cache.zone import MIN_ZONE_SIZE, KeysZone, shared_zone

HTTP, SRV, LOC = "http", "http_server", "http_location"
MAIN_SRV_LOC = (HTTP, SRV, LOC)

# Where the http context keeps the caches, by zone name.
ZONES = "proxy_cache_zones"
PATHS = "proxy_cache_paths"
# ngx_shared_memory_add's bookkeeping, shared with the other zone-owning modules.
SHM_ZONES = "shm_zones"
SHM_TAGS = "shm_tags"
TAG = "proxy_cache"

MAX_LEVELS = 3
_SIZE = re.compile(r"(\d+)([kKmM]?)")  # ngx_parse_size
_OFFSET = re.compile(r"(\d+)([kKmMgG]?)")  # ngx_parse_offset
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MAX_OFF_T = (1 << 63) - 1

DEFAULT_KEY = "$scheme$proxy_host$request_uri"


@dataclass(eq=False)
class CachePath:
    """One `proxy_cache_path`: where its files live and how they are managed."""

    name: str
    path: str  # as written (trailing slash removed); resolved in finish()
    levels: tuple[int, ...]
    size: int  # keys_zone size
    inactive: int = 600
    max_size: int | None = None
    min_free: int = 0
    use_temp_path: bool = True
    loader_files: int = 100
    loader_sleep: float = 0.05
    loader_threshold: float = 0.2
    manager_files: int = 100
    manager_sleep: float = 0.05
    manager_threshold: float = 0.2
    where: str = ""
    redis: tuple[str, int, int] | None = None  # the redis:// extension: host, port, db
    temp_dir: str | None = None
    bsize: int = 4096
    index: KeysZone | None = None
    # Per process (each worker gets its own after the fork).
    hot: Any = None
    store: Any = None  # RedisStore for the redis:// extension
    waiters: dict[bytes, Any] = field(default_factory=dict)

    def file_path(self, hexname: str) -> str:
        from pyngx.http.cache.store import hashed_name

        if self.redis is not None:
            return f"{self.path}/{hexname}"
        return hashed_name(self.path, self.levels, hexname)


@dataclass(slots=True, eq=False)
class CacheSettings:
    """A location's cache configuration (`loc.cache`)."""

    zone: CachePath | None  # a static `proxy_cache name`
    zone_value: Callable[[Any], str] | None  # `proxy_cache $variable`
    zones: dict[str, CachePath]
    key: Callable[[Any], str] | None  # None: the proxy's default key (the upstream URL)
    key_text: str | None
    methods: frozenset[str]
    min_uses: int
    bypass: tuple[Callable[[Any], str], ...]
    no_cache: tuple[Callable[[Any], str], ...]
    valid: tuple[tuple[int, int], ...]
    ignore: frozenset[str]
    use_stale: frozenset[str]
    background_update: bool
    lock: bool
    lock_timeout: float
    lock_age: float
    revalidate: bool
    convert_head: bool
    max_range_offset: int | None


# -- values ------------------------------------------------------------------------------


def _parse_size(text: str) -> int | None:
    m = _SIZE.fullmatch(text)
    return None if m is None else int(m.group(1)) * _UNITS[m.group(2).lower()]


def _parse_offset(text: str) -> int | None:
    m = _OFFSET.fullmatch(text)
    if m is None:
        return None
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    return value if value <= MAX_OFF_T else None


def _parse_seconds(text: str) -> int | None:
    """ngx_parse_time(..., 1): seconds; `ms` is not allowed."""
    if "ms" in text:
        return None
    try:
        return int(parse_time(text))
    except DirectiveValueError:
        return None


def _parse_msec(text: str) -> float | None:
    """ngx_parse_time(..., 0): a time, kept here in (float) seconds."""
    try:
        return parse_time(text)
    except DirectiveValueError:
        return None


def _atoi(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _root(ctx: Context) -> Context:
    while ctx.parent is not None:
        ctx = ctx.parent
    return ctx


# -- proxy_cache_path --------------------------------------------------------------------


def _cache_path(ctx: Context, node: Node) -> None:
    args = node.args
    raw = args[0]
    redis = None
    if raw.startswith("redis://"):
        redis = _redis_url(node, raw)
    elif raw.endswith("/") and len(raw) > 1:
        raw = raw[:-1]
    levels: list[int] = []
    name = ""
    size = 0
    params: dict[str, Any] = {}
    for arg in args[1:]:
        if arg.startswith("levels="):
            levels = _levels(node, arg)
            continue
        if arg.startswith("use_temp_path="):
            value = arg[14:]
            if value not in ("on", "off"):
                raise node.error(
                    f'invalid use_temp_path value "{arg}", it must be "on" or "off"'
                )
            params["use_temp_path"] = value == "on"
            continue
        if arg.startswith("keys_zone="):
            zname, colon, ztext = arg[10:].partition(":")
            zsize = _parse_size(ztext) if colon else None
            if zsize is None:
                raise node.error(f'invalid keys zone size "{arg}"')
            if zsize < MIN_ZONE_SIZE:
                raise node.error(f'keys zone "{arg}" is too small')
            name, size = zname, zsize
            continue
        if arg.startswith("inactive="):
            seconds = _parse_seconds(arg[9:])
            if seconds is None:
                raise node.error(f'invalid inactive value "{arg}"')
            params["inactive"] = seconds
            continue
        if arg.startswith(("max_size=", "min_free=")):
            value = _parse_offset(arg[9:])
            if value is None:
                raise node.error(f'invalid {arg[:8]} value "{arg}"')
            params[arg[:8]] = value
            continue
        matched = False
        for prefix in ("loader", "manager"):
            if arg.startswith(f"{prefix}_files="):
                n = _atoi(arg[len(prefix) + 7 :])
                if n is None:
                    raise node.error(f'invalid {prefix}_files value "{arg}"')
                params[f"{prefix}_files"] = n
                matched = True
            elif arg.startswith((f"{prefix}_sleep=", f"{prefix}_threshold=")):
                pname, _, value = arg.partition("=")
                t = _parse_msec(value)
                if t is None:
                    raise node.error(f'invalid {pname} value "{arg}"')
                params[pname] = t
                matched = True
        if matched:
            continue
        raise node.error(f'invalid parameter "{arg}"')
    if not name or not size:
        raise node.error(f'"{node.name}" must have "keys_zone" parameter')
    root = _root(ctx)
    paths: dict[str, Node] = root.slots.setdefault(PATHS, {})
    if redis is None:
        # ngx_add_path: one path, one user.
        prev = paths.get(raw)
        if prev is not None:
            raise node.error(
                f'the same path name "{raw}" used in {prev.file}:{prev.line} and'
            )
        paths[raw] = node
    _add_shm(root, node, name, size)
    zones: dict[str, CachePath] = ctx.slots.setdefault(ZONES, {})
    if name in zones:
        raise node.error(f'duplicate zone "{name}"')
    if "max_size" in params and params["max_size"] == MAX_OFF_T:
        params["max_size"] = None
    zones[name] = CachePath(
        name, raw, tuple(levels), size, where=f"{node.file}:{node.line}", redis=redis, **params
    )


def _levels(node: Node, arg: str) -> list[int]:
    """nginx's levels: 1 to 3 fields of 1 or 2, separated by colons."""
    text = arg[7:]
    if not text:
        return []  # nginx accepts an empty value: no levels
    parts = text.split(":")
    if (
        len(parts) > MAX_LEVELS
        or any(p not in ("1", "2") for p in parts)
    ):
        raise node.error(f'invalid "levels" "{arg}"')
    return [int(p) for p in parts]


def _redis_url(node: Node, text: str) -> tuple[str, int, int]:
    """`redis://host[:port][/db]` (the pyngx extension)."""
    rest = text[8:]
    hostport, _, db_text = rest.partition("/")
    host, colon, port_text = hostport.rpartition(":")
    if not colon:
        host, port_text = hostport, "6379"
    host = host.strip("[]")
    port = _atoi(port_text)
    db = _atoi(db_text) if db_text else 0
    if not host or port is None or not 0 < port < 65536 or db is None:
        raise node.error(f'invalid redis cache path "{text}"')
    return host, port, db


def _add_shm(root: Context, node: Node, name: str, size: int) -> None:
    """ngx_shared_memory_add: one name, one owner, one size."""
    zones: dict[str, int] = root.slots.setdefault(SHM_ZONES, {})
    tags: dict[str, str] = root.slots.setdefault(SHM_TAGS, {})
    if name in zones and tags.get(name, TAG) != TAG:
        raise node.error(f'the shared memory zone "{name}" is already declared for a different use')
    tags[name] = TAG
    known = zones.get(name, 0)
    if known and size != known:
        raise node.error(
            f'the size {size} of shared memory zone "{name}" conflicts with already declared'
            f" size {known}"
        )
    zones[name] = size


# -- per-location directives -------------------------------------------------------------


def _proxy_cache(ctx: Context, node: Node) -> None:
    if "proxy_cache" in ctx.slots:
        raise node.error('"proxy_cache" directive is duplicate')
    value = node.args[0]
    if value == "off":
        ctx.slots["proxy_cache"] = None
    else:
        tags: dict[str, str] = _root(ctx).slots.get(SHM_TAGS, {})
        if not has_variables(value) and tags.get(value, TAG) != TAG:
            raise node.error(
                f'the shared memory zone "{value}" is already declared for a different use'
            )
        ctx.slots["proxy_cache"] = (value, node)
    ctx.locations["proxy_cache"] = node


def _cache_key(ctx: Context, node: Node) -> None:
    if "proxy_cache_key" in ctx.slots:
        raise node.error('"proxy_cache_key" directive is duplicate')
    table: VariableTable = ctx.up(HTTP).slots["variables"]
    ctx.slots["proxy_cache_key"] = (node.args[0], compile_complex(node.args[0], table))
    ctx.locations["proxy_cache_key"] = node


def _cache_valid(ctx: Context, node: Node) -> None:
    args = node.args
    seconds = _parse_seconds(args[-1])
    if seconds is None:
        raise node.error(f'invalid time value "{args[-1]}"')
    entries: list[tuple[int, int]] = _level_list(ctx, "proxy_cache_valid", node)
    if len(args) == 1:
        entries.extend((code, seconds) for code in (200, 301, 302))
        return
    for arg in args[:-1]:
        if arg == "any":
            code = 0
        else:
            n = _atoi(arg)
            if n is None or n < 100 or n > 599:
                raise node.error(f'invalid status "{arg}"')
            code = n
        entries.append((code, seconds))


def _level_list(ctx: Context, slot: str, node: Node) -> list[Any]:
    """A list directive: lines at one level accumulate; the level's list replaces the
    parent's (ngx_conf_merge_ptr_value)."""
    entries = ctx.slots.get(slot)
    if entries is None:
        entries = ctx.slots[slot] = []
        ctx.locations[slot] = node
    return entries


def _predicates(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        table: VariableTable = ctx.up(HTTP).slots["variables"]
        entries = _level_list(ctx, slot, node)
        for arg in node.args:
            entries.append(compile_complex(arg, table))

    return handler


def _bitmask(
    slot: str, allowed: tuple[str, ...], *, lower: bool
) -> Callable[[Context, Node], None]:
    """ngx_conf_set_bitmask_slot: values OR into the level's set (case-insensitive)."""

    def handler(ctx: Context, node: Node) -> None:
        values = ctx.slots.get(slot)
        if values is None:
            values = ctx.slots[slot] = set()
            ctx.locations[slot] = node
        for arg in node.args:
            key = arg.lower() if lower else arg
            match = next((a for a in allowed if a.lower() == arg.lower()), None)
            if match is None:
                raise node.error(f'invalid value "{arg}"')
            values.add(key if lower else match)

    return handler


def _min_uses(ctx: Context, node: Node) -> None:
    n = _atoi(node.args[0])
    if n is None:
        raise DirectiveValueError("invalid number")
    ctx.set_once("proxy_cache_min_uses", n, node)


def _msec_slot(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        t = _parse_msec(node.args[0])
        if t is None:
            raise DirectiveValueError()
        ctx.set_once(slot, t, node)

    return handler


def _max_range_offset(ctx: Context, node: Node) -> None:
    value = _parse_offset(node.args[0])
    if value is None:
        raise DirectiveValueError()
    ctx.set_once("proxy_cache_max_range_offset", value, node)


def register(reg: Registry) -> None:
    add = reg.add
    add("proxy_cache_path", [HTTP], _cache_path, (2, None))
    add("proxy_cache", MAIN_SRV_LOC, _proxy_cache, TAKE1)
    add("proxy_cache_key", MAIN_SRV_LOC, _cache_key, TAKE1)
    add("proxy_cache_valid", MAIN_SRV_LOC, _cache_valid, ONEMORE)
    add(
        "proxy_cache_methods",
        MAIN_SRV_LOC,
        _bitmask("proxy_cache_methods", ("GET", "HEAD", "POST"), lower=False),
        ONEMORE,
    )
    add("proxy_cache_min_uses", MAIN_SRV_LOC, _min_uses, TAKE1)
    add("proxy_cache_bypass", MAIN_SRV_LOC, _predicates("proxy_cache_bypass"), ONEMORE)
    add("proxy_no_cache", MAIN_SRV_LOC, _predicates("proxy_no_cache"), ONEMORE)
    add(
        "proxy_cache_use_stale",
        MAIN_SRV_LOC,
        _bitmask("proxy_cache_use_stale", STALE_CONDITIONS, lower=True),
        ONEMORE,
    )
    add(
        "proxy_cache_background_update",
        MAIN_SRV_LOC,
        flag_slot("proxy_cache_background_update"),
    )
    add("proxy_cache_lock", MAIN_SRV_LOC, flag_slot("proxy_cache_lock"))
    add("proxy_cache_lock_timeout", MAIN_SRV_LOC, _msec_slot("proxy_cache_lock_timeout"))
    add("proxy_cache_lock_age", MAIN_SRV_LOC, _msec_slot("proxy_cache_lock_age"))
    add("proxy_cache_revalidate", MAIN_SRV_LOC, flag_slot("proxy_cache_revalidate"))
    add("proxy_cache_convert_head", MAIN_SRV_LOC, flag_slot("proxy_cache_convert_head"))
    add("proxy_cache_max_range_offset", MAIN_SRV_LOC, _max_range_offset)
    # The one proxy_ignore_headers: the proxy reads the same slot (a set of lower-cased
    # names) for X-Accel-Redirect and X-Accel-Buffering, the cache for the rest.
    add(
        "proxy_ignore_headers",
        MAIN_SRV_LOC,
        _bitmask("proxy_ignore_headers", IGNORABLE, lower=True),
        ONEMORE,
    )


def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
    """$proxy_host for the default-like keys, when no proxy module provides it."""
    if "proxy_host" not in table.getters:
        table.add("proxy_host", _proxy_host)
    return []


def _proxy_host(r: Any) -> str | None:
    up = getattr(r, "upstream", None)
    getter = getattr(up, "var_proxy_host", None)
    return getter() if getter is not None else None


def configure(ctx: Context, loc: Any) -> None:
    """ngx_http_proxy_merge_loc_conf's cache part: `loc.cache` (None: no caching here)."""
    loc.cache = None
    entry = ctx.get("proxy_cache", None)
    if entry is None:
        return
    value, node = entry
    http = ctx.up(HTTP)
    zones: dict[str, CachePath] = http.slots.get(ZONES, {})
    zone = None
    zone_value = None
    if has_variables(value):
        zone_value = compile_complex(value, http.slots["variables"])
    else:
        zone = zones.get(value)
        if zone is None:
            # nginx checks at the end of the http block (merge time), located there.
            assert http.node is not None
            raise ConfigError(
                f'"proxy_cache" zone "{value}" is unknown',
                http.node.file,
                http.node.end_line or http.node.line,
            )
    key_entry = ctx.get("proxy_cache_key", None)
    use_stale = set(ctx.get("proxy_cache_use_stale", set()))
    if "off" in use_stale:
        use_stale = set()
    methods = {m.upper() for m in ctx.get("proxy_cache_methods", set())} | {"GET", "HEAD"}
    max_range = ctx.get("proxy_cache_max_range_offset", MAX_OFF_T)
    loc.cache = CacheSettings(
        zone=zone,
        zone_value=zone_value,
        zones=zones,
        key=key_entry[1] if key_entry else None,
        key_text=key_entry[0] if key_entry else None,
        methods=frozenset(methods),
        min_uses=ctx.get("proxy_cache_min_uses", 1),
        bypass=tuple(ctx.get("proxy_cache_bypass", ())),
        no_cache=tuple(ctx.get("proxy_no_cache", ())),
        valid=tuple(ctx.get("proxy_cache_valid", ())),
        ignore=frozenset(ctx.get("proxy_ignore_headers", ())),
        use_stale=frozenset(use_stale),
        background_update=ctx.get("proxy_cache_background_update", False),
        lock=ctx.get("proxy_cache_lock", False),
        lock_timeout=ctx.get("proxy_cache_lock_timeout", 5.0),
        lock_age=ctx.get("proxy_cache_lock_age", 5.0),
        revalidate=ctx.get("proxy_cache_revalidate", False),
        convert_head=ctx.get("proxy_cache_convert_head", True),
        max_range_offset=None if max_range >= MAX_OFF_T else max_range,
    )


def finish(http: Context, conf: Any) -> None:
    """Resolve and create the cache directories, allocate the shared zones (in the master,
    before the fork), and list the caches for the workers (`conf.caches`)."""
    from pyngx.http.cache.store import HotCache

    zones: dict[str, CachePath] = http.slots.get(ZONES, {})
    prefix: Callable[[str], str] = http.slots.get("__prefix__") or os.path.abspath
    caches = getattr(conf, "caches", None)
    for cp in zones.values():
        if cp.redis is None:
            cp.path = prefix(cp.path) if not cp.path.startswith("/") else cp.path
            _mkdir(cp.path)
            try:
                cp.bsize = os.statvfs(cp.path).f_bsize or 4096
            except OSError:
                cp.bsize = 4096
            if cp.use_temp_path:
                cp.temp_dir = prefix("proxy_temp")
                _mkdir(cp.temp_dir)
        else:
            from pyngx.http.cache.redis_store import RedisStore

            host, port, db = cp.redis
            cp.store = RedisStore(cp.name, host, port, db, cp.inactive)
        cp.index = shared_zone(cp.name, cp.size, cp.path, cp.levels)
        cp.hot = HotCache()
        if caches is not None and cp not in caches:
            caches.append(cp)


def _mkdir(path: str) -> None:
    """ngx_create_paths: the last component only, mode 0700."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(f'mkdir() "{path}" failed ({exc.errno}: {exc.strerror})') from None


__all__ = [
    "CachePath",
    "CacheSettings",
    "configure",
    "declare",
    "finish",
    "register",
]
