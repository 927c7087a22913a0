"""nginx's configuration lexer (ngx_conf_read_token), as a generator of tokens.

Tokens are words, `;`, `{` and `}`. Words may be quoted with `"` or `'`; inside any word a
backslash escapes the next character, and `\\"`, `\\'`, `\\\\`, `\\t`, `\\r`, `\\n` are
translated while other escapes are kept verbatim, exactly as nginx copies tokens. `#` starts a
comment only at the start of a token. `${name}` inside an unquoted word keeps its braces;
`}` does not end a word.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pyngx.conf.errors import ConfigError

WORD, SEMICOLON, LBRACE, RBRACE = "word", ";", "{", "}"
_SPACE = " \t\r\n"
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    value: str
    line: int
    quoted: bool = False


def _unescape(raw: str) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\\" and i + 1 < n and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str, filename: str) -> Iterator[Token]:
    """Yield tokens; raises ConfigError with nginx's wording on lexical errors."""
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch in _SPACE:
            if ch == "\n":
                line += 1
            i += 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch == ";":
            yield Token(SEMICOLON, ch, line)
            i += 1
            continue
        if ch == "{":
            yield Token(LBRACE, ch, line)
            i += 1
            continue
        if ch == "}":
            yield Token(RBRACE, ch, line)
            i += 1
            continue
        if ch in "\"'":
            quote, start, i = ch, i + 1, i + 1
            while True:
                if i >= n:
                    raise ConfigError(
                        'unexpected end of file, expecting ";" or "}"', filename, line
                    )
                c = text[i]
                if c == "\\" and i + 1 < n:
                    if text[i + 1] == "\n":
                        line += 1
                    i += 2
                    continue
                if c == "\n":
                    line += 1
                if c == quote:
                    break
                i += 1
            value = _unescape(text[start:i])
            i += 1
            # nginx requires a separator right after a closing quote; `)` is let through (it
            # starts the next word) so that `if ($x = "a")` reads as nginx reads it.
            if i < n and text[i] not in _SPACE and text[i] not in ";{})":
                raise ConfigError(f'unexpected "{text[i]}"', filename, line)
            yield Token(WORD, value, line, quoted=True)
            continue
        start = i
        # As ngx_conf_read_token: an unquoted word ends at a space, `;` or `{` (a `{` right
        # after `$` is part of `${name}`); `}` inside a word is an ordinary character.
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n:
                i += 2
                continue
            if c == "$" and i + 1 < n and text[i + 1] == "{":
                i += 2
                continue
            if c in _SPACE or c == ";" or c == "{":
                break
            i += 1
        yield Token(WORD, _unescape(text[start:i]), line)
