"""The http modules, in nginx's order: each registers its directives; those with
`configure(ctx, loc)` fill LocationConf attributes (module.MODULES)."""

from __future__ import annotations

from pyngx.conf.registry import Registry
from pyngx.http import module as core
from pyngx.http import proxy


def register_http(reg: Registry) -> None:
    core.register(reg)
    modules: list[object] = [proxy]
    for m in modules:
        m.register(reg)  # type: ignore[attr-defined]
    core.MODULES[:] = modules
