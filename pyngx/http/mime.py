"""The bundled mime.types (pyngx/data/mime.types, nginx's format): the default `types` of
every location when the configuration has none, and `include mime.types;` resolves to it
when the configuration directory has no such file."""

from __future__ import annotations

import functools
import os

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
MIME_TYPES_PATH = os.path.join(DATA_DIR, "mime.types")

# nginx's built-in types when no `types` block is configured (ngx_http_core_default_types).
BUILTIN_TYPES = {"html": "text/html", "gif": "image/gif", "jpg": "image/jpeg"}


@functools.cache
def bundled_types() -> dict[str, str]:
    """Extension → type from the bundled file."""
    types: dict[str, str] = {}
    try:
        with open(MIME_TYPES_PATH, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return dict(BUILTIN_TYPES)
    body = text[text.find("{") + 1 : text.rfind("}")]
    for stmt in body.split(";"):
        words = stmt.split()
        if len(words) >= 2 and not words[0].startswith("#"):
            for ext in words[1:]:
                types.setdefault(ext.lower(), words[0])
    return types


def default_types() -> dict[str, str]:
    return dict(BUILTIN_TYPES)
