"""`split_clients` (ngx_stream_split_clients_module): A/B splits by a hash of a string.

nginx hashes the evaluated string with MurmurHash2 (ngx_murmur_hash2: 32 bits, seed 0) and
picks the first part whose cumulative share, scaled to 0..0xffffffff, is above the hash; so
the same key lands in the same part as under nginx, which the tests check key by key.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.variables import VariableTable, compile_complex

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur_hash2(data: bytes) -> int:
    """ngx_murmur_hash2, byte for byte (little-endian words, the length as the seed mix)."""
    length = len(data)
    h = length & _MASK
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - n4
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def _percent(text: str) -> int | None:
    """ngx_atofp(text, 2): a decimal with at most two fractional digits, in hundredths."""
    whole, dot, frac = text.partition(".")
    if not (whole or frac) or (dot and not frac and not whole):
        return None
    if not (whole.isdigit() or whole == "") or not (frac.isdigit() or frac == ""):
        return None
    if len(frac) > 2 or not (whole + frac).isascii():
        return None
    return int(whole or "0") * 100 + int((frac + "00")[:2])


class SplitConf:
    __slots__ = ("source", "name", "parts")

    def __init__(self, source: str, name: str) -> None:
        self.source = source
        self.name = name
        self.parts: list[tuple[int, str]] = []  # (hundredths of a percent, 0 for "*"), value


def parse_split_block(node: Node) -> SplitConf:
    source, name = node.args
    if not name.startswith("$"):
        raise node.error(f'invalid variable name "{name}"')
    conf = SplitConf(source, name[1:])
    for line in node.block or []:
        words = [line.name, *line.args]
        if len(words) != 2 or line.block is not None:
            # nginx reads a second word without checking; a lone word is no valid part.
            raise line.error(f'invalid percent value "{words[0]}"')
        key, value = words
        if key == "*":
            conf.parts.append((0, value))
            continue
        n = _percent(key[:-1]) if key.endswith("%") else None
        if not n:
            raise line.error(f'invalid percent value "{key}"')
        conf.parts.append((n, value))
    total = 0
    for n, _ in conf.parts:
        total = total + n if n else 10000
        if total > 10000:
            # Checked after the block is read: nginx reports the closing brace's line.
            raise ConfigError(
                "percent total is greater than 100%", node.file, node.end_line or node.line
            )
    return conf


class CompiledSplit:
    __slots__ = ("source", "bounds", "values", "star")

    def __init__(self, conf: SplitConf, table: VariableTable) -> None:
        self.source = compile_complex(conf.source, table)
        bounds: list[int] = []
        values: list[str] = []
        self.star: str | None = None
        last = 0
        for n, value in conf.parts:
            if not n:
                # "*" takes every hash not taken before it; parts after it are never reached.
                self.star = value
                break
            # nginx's uint32_t arithmetic: last += percent * 0xffffffff / 10000.
            last = (last + n * 0xFFFFFFFF // 10000) & _MASK
            bounds.append(last)
            values.append(value)
        self.bounds = bounds
        self.values = values

    def evaluate(self, session: Any) -> str:
        h = murmur_hash2(self.source(session).encode("utf-8", "surrogateescape"))
        # The first part with hash < its bound; bounds only grow (the total is <= 100%).
        i = bisect_right(self.bounds, h)
        if i < len(self.values):
            return self.values[i]
        return self.star if self.star is not None else ""


class SplitHolder:
    __slots__ = ("compiled",)

    def __init__(self) -> None:
        self.compiled: CompiledSplit | None = None

    def evaluate(self, session: Any) -> str:
        compiled = self.compiled
        return compiled.evaluate(session) if compiled is not None else ""
