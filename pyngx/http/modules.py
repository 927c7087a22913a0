"""The http modules, in nginx's order: each registers its directives; those with
`configure(ctx, loc)` fill LocationConf attributes (module.MODULES)."""

from __future__ import annotations

from pyngx.conf.registry import Registry
from pyngx.http import (
    access,
    autoindex_handler,
    cache,
    h2_module,
    limit_conn,
    limit_req,
    maps,
    proxy,
    realip,
    rewrite,
    ssl,
    stub_status,
)
from pyngx.http import module as core


def register_http(reg: Registry) -> None:
    core.register(reg)
    rewrite.register(reg)
    modules: list[object] = [
        ssl,
        h2_module,
        realip,
        # Preaccess handlers run in this order (limit_req before limit_conn, as nginx's).
        limit_req.MODULE,
        limit_conn.MODULE,
        access.MODULE,
        stub_status.MODULE,
        autoindex_handler,
        proxy,
        cache,
        # Last: its variables may not take the name of another module's built-in one.
        maps.MODULE,
    ]
    for m in modules:
        m.register(reg)  # type: ignore[attr-defined]
    core.MODULES[:] = modules
