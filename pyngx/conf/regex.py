"""nginx's regular expressions are PCRE; Python's `re` spells a few constructs differently.

`compile_pcre` rewrites the PCRE-only spellings nginx configurations commonly use into Python's
(named groups `(?<name>...)` and `(?'name'...)`, back-references `\\k<name>`, `\\k'name'` and
`\\k{name}`) and compiles once at configuration time. Lookbehinds `(?<=`/`(?<!` are left alone.
"""

from __future__ import annotations

import re

_NAMED_GROUP = re.compile(r"(?<!\\)\(\?(?:<(?![=!])(\w+)>|'(\w+)')")
_BACKREF = re.compile(r"\\k(?:<(\w+)>|'(\w+)'|\{(\w+)\})")


def pcre_to_python(pattern: str) -> str:
    pattern = _NAMED_GROUP.sub(lambda m: f"(?P<{m.group(1) or m.group(2)}>", pattern)
    return _BACKREF.sub(lambda m: f"(?P={m.group(1) or m.group(2) or m.group(3)})", pattern)


def compile_pcre(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """Raises re.error (with Python's message) when the pattern is invalid."""
    return re.compile(pcre_to_python(pattern), flags)
