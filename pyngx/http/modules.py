"""The http modules, in nginx's order: each registers its directives; those with
`configure(ctx, loc)` fill LocationConf attributes (module.MODULES)."""

from __future__ import annotations

from pyngx.conf.registry import Registry
from pyngx.http import autoindex_handler, cache, realip, rewrite, ssl
from pyngx.http import module as core


def register_http(reg: Registry) -> None:
    core.register(reg)
    rewrite.register(reg)
    modules: list[object] = [ssl, realip, autoindex_handler, cache]
    for m in modules:
        m.register(reg)  # type: ignore[attr-defined]
    core.MODULES[:] = modules
