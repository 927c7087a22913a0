"""Turns configuration text into a tree of directive nodes, expanding `include` as nginx does.

The tree is syntax only: which directives exist and where they may appear is checked by the
registry when the tree is compiled. `include` is expanded here (nginx also expands it while
reading) so every node keeps the file and line it came from.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from pyngx.conf.errors import COMMAND_LINE, ConfigError
from pyngx.conf.lexer import LBRACE, RBRACE, SEMICOLON, Token, tokenize

MAX_INCLUDE_DEPTH = 32
_GLOB_CHARS = frozenset("*?[")


@dataclass(slots=True)
class Node:
    """One directive: `name args... ;` or `name args... { block }`."""

    name: str
    args: list[str]
    file: str
    line: int
    block: list[Node] | None = None
    # The line of a block's closing brace: nginx locates some end-of-block checks there.
    end_line: int = 0

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, self.file, self.line)


@dataclass(slots=True)
class ParsedConfig:
    """The main file's tree plus every file read, in reading order (for `-T`)."""

    nodes: list[Node]
    files: list[tuple[str, str]] = field(default_factory=list)


def os_error_text(exc: OSError) -> str:
    """nginx's `(2: No such file or directory)` suffix."""
    code = exc.errno or 0
    return f"({code}: {os.strerror(code) if code else exc})"


class _Reader:
    def __init__(self, conf_prefix: str) -> None:
        self.conf_prefix = conf_prefix
        self.files: list[tuple[str, str]] = []

    def read_file(self, path: str, at: Node | None, depth: int) -> list[Node]:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as exc:
            where = (at.file, at.line) if at else (None, None)
            raise ConfigError(f'open() "{path}" failed {os_error_text(exc)}', *where) from None
        self.files.append((path, text))
        return self.parse_text(text, path, depth)

    def parse_text(self, text: str, filename: str, depth: int) -> list[Node]:
        tokens = tokenize(text, filename)
        nodes, closed_by = self._block(tokens, filename, depth, top=True)
        return nodes

    def _block(
        self, tokens: object, filename: str, depth: int, top: bool
    ) -> tuple[list[Node], Token | None]:
        nodes: list[Node] = []
        words: list[Token] = []
        it = tokens  # an iterator of Token
        for tok in it:  # type: ignore[attr-defined]
            if tok.kind == "word":
                words.append(tok)
                continue
            if tok.kind == SEMICOLON:
                if not words:
                    raise ConfigError('unexpected ";"', filename, tok.line)
                node = Node(words[0].value, [w.value for w in words[1:]], filename, tok.line)
                words = []
                if node.name == "include":
                    nodes.extend(self._include(node, depth))
                else:
                    nodes.append(node)
                continue
            if tok.kind == LBRACE:
                if not words:
                    raise ConfigError('unexpected "{"', filename, tok.line)
                node = Node(words[0].value, [w.value for w in words[1:]], filename, tok.line)
                words = []
                if node.name == "include":
                    raise node.error('directive "include" is not terminated by ";"')
                node.block, closing = self._block(it, filename, depth, top=False)
                node.end_line = closing.line if closing is not None else node.line
                nodes.append(node)
                continue
            if tok.kind == RBRACE:
                if words or top:
                    raise ConfigError('unexpected "}"', filename, tok.line)
                return nodes, tok
        if words:
            if filename == COMMAND_LINE:
                raise ConfigError('unexpected end of parameter, expecting ";"', filename, 1)
            raise ConfigError(
                'unexpected end of file, expecting ";" or "}"', filename, _eof_line(filename, self)
            )
        if not top:
            raise ConfigError(
                'unexpected end of file, expecting "}"', filename, _eof_line(filename, self)
            )
        return nodes, None

    def _include(self, node: Node, depth: int) -> list[Node]:
        if len(node.args) != 1:
            raise node.error('invalid number of arguments in "include" directive')
        if depth >= MAX_INCLUDE_DEPTH:
            raise node.error(f'too deep "include" nesting of "{node.args[0]}"')
        pattern = node.args[0]
        path = pattern if os.path.isabs(pattern) else os.path.join(self.conf_prefix, pattern)
        if not _GLOB_CHARS.intersection(pattern):
            return self.read_file(path, node, depth + 1)
        out: list[Node] = []
        for match in sorted(glob.glob(path)):
            if os.path.isdir(match):
                continue
            out.extend(self.read_file(match, node, depth + 1))
        return out


def _eof_line(filename: str, reader: _Reader) -> int:
    for path, text in reversed(reader.files):
        if path == filename:
            return text.count("\n") + 1
    return 1


def parse_config(path: str, *, conf_prefix: str | None = None) -> ParsedConfig:
    """Read the main configuration file and everything it includes."""
    reader = _Reader(conf_prefix if conf_prefix is not None else os.path.dirname(path) or ".")
    nodes = reader.read_file(path, None, 0)
    return ParsedConfig(nodes, reader.files)


def parse_string(text: str, filename: str = "<string>", *, conf_prefix: str = ".") -> list[Node]:
    """Parse configuration text (for `-g` and tests); `include` is relative to conf_prefix."""
    reader = _Reader(conf_prefix)
    if filename != COMMAND_LINE:
        reader.files.append((filename, text))
    return reader.parse_text(text, filename, 0)


__all__ = ["Node", "ParsedConfig", "parse_config", "parse_string", "os_error_text"]
