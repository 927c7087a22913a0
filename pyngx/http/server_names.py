"""Choosing the virtual server for a Host among the servers of one listen address, as nginx.

nginx (ngx_http_core_server_name, ngx_http_server_names, ngx_hash_add_key,
ngx_hash_find_combined, ngx_http_find_virtual_server) sorts the names of the servers sharing an
address into an exact hash, a "head" wildcard hash (`*.example.com`, `.example.com`), a "tail"
wildcard hash (`www.example.*`) and a list of regexes, and looks a host up in that order:

* exact name;
* the longest matching `*.suffix` / `.suffix` (`.example.com` also matches `example.com`);
* the longest matching `prefix.*` (the host must go on with a '.' after the prefix);
* the first regex (configuration order) that matches anywhere in the host (re.search);
* otherwise the default server.

The wildcard tries of nginx are replaced by dictionaries keyed by the part without the
asterisk, probed for each dot of the host from the longest candidate down: the same answers.

Details kept from nginx:
* an empty host (no Host header) only matches the name "" (regexes and wildcards are skipped);
* with a single server on the address nothing is looked up at all, unless the default server
  has a regex name with captures (then names are checked and matched as usual); as in nginx,
  "captures" is decided by the server's *last* regex name;
* a name already taken is ignored with `conflicting server name "x" on addr:port, ignored`; a
  `.example.com` that loses to `*.example.com` still claims `example.com` for the exact names;
* non-regex names are lower-cased (ASCII) and `$hostname` is the machine's name; a regex is
  case-insensitive when it contains an upper-case letter;
* nginx refuses names whose parts do not fit in a server_names_hash bucket.

The host given to `find` must already be what ngx_http_validate_host leaves: lower-cased,
without the port and without one trailing dot.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.regex import compile_pcre
from pyngx.http.locations import pcre_error_text

# ngx_cacheline_size on x86-64: server_names_hash_bucket_size defaults to it and is rounded up
# to a multiple of it.
CACHELINE = 64
_POINTER = 8

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = re.compile("[A-Z]")
_MISSING: Any = object()


def ascii_lower(text: str) -> str:
    """ngx_strlow: only A-Z change."""
    return text.translate(_ASCII_LOWER)


def check_server_name(arg: str, node: Node, warn: Callable[[Node, str], None]) -> None:
    """The checks nginx makes when it reads one `server_name` argument.

    `warn(node, message)` receives the `has suspicious symbols` warning (nginx prints it with
    the directive's file:line, so a registry Context.warn fits); errors are raised.
    """
    first = arg[:1]
    if (first == "*" and (len(arg) < 3 or arg[1] != ".")) or (first == "." and len(arg) < 2):
        raise node.error(f'server name "{arg}" is invalid')
    if "/" in arg:
        warn(node, f'server name "{arg}" has suspicious symbols')
    if first == "~":
        _compile(arg, node)


def _compile(arg: str, node: Node) -> re.Pattern[str]:
    if len(arg) == 1:
        raise node.error(f'empty regex in server name "{arg}"')
    pattern = arg[1:]
    flags = re.IGNORECASE if _UPPER.search(pattern) else 0
    try:
        return compile_pcre(pattern, flags)
    except re.error as exc:
        raise node.error(pcre_error_text(pattern, exc)) from None


def _bucket_fits(key: str, bucket_size: int) -> bool:
    """ngx_hash_init: NGX_HASH_ELT_SIZE(key) plus the terminating pointer must fit a bucket."""
    size = _POINTER + len(key.encode("utf-8", "surrogateescape")) + 2
    size = (size + _POINTER - 1) // _POINTER * _POINTER
    return size + _POINTER <= bucket_size


class ServerNames:
    """The virtual servers sharing one listen address:port."""

    __slots__ = (
        "default",
        "where",
        "warnings",
        "_active",
        "_exact",
        "_head",
        "_tail",
        "_regexes",
    )

    def __init__(
        self,
        entries: list[tuple[str, Any, Node]],
        default: Any,
        where: str = "",
        *,
        bucket_size: int = CACHELINE,
        warn: Callable[[str, Node], None] | None = None,
        hostname: str | None = None,
    ) -> None:
        """`entries`: every (server_name argument, server conf, directive node) of the servers
        on this address, server by server in configuration order; a server without server_name
        is given as ("", conf, node), nginx's implicit name. `default`: the default_server (or
        the first server). `where`: nginx's "addr:port" text for messages. `bucket_size`:
        server_names_hash_bucket_size as configured.

        Warnings (conflicting names) go to `warn(message, node)` as they arise and to
        `self.warnings`; nginx prints them without a file:line. Raises ConfigError (also
        without a location, as nginx) for invalid wildcards and names too long for a bucket.
        """
        self.default = default
        self.where = where
        self.warnings: list[tuple[str, Node]] = []
        self._exact: dict[str, Any] = {}
        self._head: dict[str, tuple[Any, bool]] = {}  # suffix -> (conf, also the bare name)
        self._tail: dict[str, Any] = {}  # prefix -> conf
        self._regexes: list[tuple[re.Pattern[str], Any]] = []

        servers = {id(default)} | {id(conf) for _, conf, _ in entries}
        default_regexes = [(a, n) for a, conf, n in entries if conf is default and a[:1] == "~"]
        captures = bool(default_regexes) and _compile(*default_regexes[-1]).groups > 0
        # ngx_http_optimize_servers builds the names only in these cases.
        self._active = len(servers) > 1 or captures
        if not self._active:
            return

        exact_taken: set[str] = set()
        head_taken: set[str] = set()
        for arg, conf, node in entries:
            if arg[:1] == "~":
                self._regexes.append((_compile(arg, node), conf))
                continue
            if ascii_lower(arg) == "$hostname":
                name = ascii_lower(hostname if hostname is not None else socket.gethostname())
            else:
                name = ascii_lower(arg)
            if not self._add(name, conf, exact_taken, head_taken):
                message = f'conflicting server name "{name}" on {where}, ignored'
                self.warnings.append((message, node))
                if warn is not None:
                    warn(message, node)

        bucket = (bucket_size + CACHELINE - 1) // CACHELINE * CACHELINE
        keys = list(self._exact)
        for body in (*self._head, *self._tail):
            keys.extend(body.split("."))
        if not all(_bucket_fits(key, bucket) for key in keys):
            raise ConfigError(
                "could not build server_names_hash, you should increase "
                f"server_names_hash_bucket_size: {bucket}"
            )

    def _add(self, name: str, conf: Any, exact_taken: set[str], head_taken: set[str]) -> bool:
        """ngx_hash_add_key with NGX_HASH_WILDCARD_KEY; False when the name is taken."""
        stars = name.count("*")
        if stars > 1 or ".." in name:
            raise self._invalid(name)
        if len(name) > 1 and name[0] == ".":
            body = name[1:]
            # `.example.com` also claims the exact name, before its own wildcard is checked.
            if body in exact_taken:
                return False
            exact_taken.add(body)
            return self._add_head(body, conf, True, head_taken)
        if len(name) > 2 and name.startswith("*."):
            return self._add_head(name[2:], conf, False, head_taken)
        if len(name) > 2 and name.endswith(".*"):
            body = name[:-2]
            if body in self._tail:
                return False
            self._tail[body] = conf
            return True
        if stars:
            raise self._invalid(name)
        if name in exact_taken:
            return False
        exact_taken.add(name)
        self._exact[name] = conf
        return True

    def _add_head(self, body: str, conf: Any, bare: bool, head_taken: set[str]) -> bool:
        if body in head_taken:
            return False
        head_taken.add(body)
        self._head[body] = (conf, bare)
        return True

    def _invalid(self, name: str) -> ConfigError:
        return ConfigError(f'invalid server name or wildcard "{name}" on {self.where}')

    def find(self, host: str) -> tuple[Any, re.Match[str] | None]:
        """(server conf, the server_name regex match or None) for a validated host."""
        if not self._active:
            return self.default, None
        conf = self._exact.get(host, _MISSING)
        if conf is not _MISSING:
            return conf, None
        if not host:
            return self.default, None
        head = self._head
        if head:
            hit = head.get(host)
            if hit is not None and hit[1]:
                return hit[0], None
            i = host.find(".")
            while i >= 0:
                hit = head.get(host[i + 1 :])
                if hit is not None:
                    return hit[0], None
                i = host.find(".", i + 1)
        tail = self._tail
        if tail:
            i = host.rfind(".")
            while i > 0:
                conf = tail.get(host[:i], _MISSING)
                if conf is not _MISSING:
                    return conf, None
                i = host.rfind(".", 0, i)
        for regex, conf in self._regexes:
            match = regex.search(host)
            if match is not None:
                return conf, match
        return self.default, None
