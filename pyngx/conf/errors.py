"""Configuration errors, worded and located as nginx words and locates them.

nginx prints `[emerg] <message> in <file>:<line>`; directives given with `-g` are located
`in command line`. The message text is part of our interface: tests and operators grep it.
"""

from __future__ import annotations

COMMAND_LINE = "command line"


class ConfigError(Exception):
    """A configuration that cannot be used; `str()` gives nginx's wording with the location."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file == COMMAND_LINE:
            return f"{self.message} in command line"
        if self.file is not None:
            return f"{self.message} in {self.file}:{self.line}"
        return self.message


class DirectiveValueError(ValueError):
    """Raised by value parsers; the directive handler adds name and location.

    `text` is the tail nginx prints after `"name" directive `, e.g. `invalid value`.
    """

    def __init__(self, text: str = "invalid value", *, full: bool = False) -> None:
        super().__init__(text)
        self.text = text
        # A full message replaces nginx's `"name" directive <text>` shape.
        self.full = full
