"""The autoindex module: its directives and the directory listing response."""

from __future__ import annotations

from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import Context, Registry, enum_slot, flag_slot
from pyngx.http.autoindex import jsonp_callback_ok, render, scan
from pyngx.http.module import MAIN_SRV_LOC
from pyngx.http.request import DONE

FORMATS = {"html": "html", "xml": "xml", "json": "json", "jsonp": "jsonp"}


def register(reg: Registry) -> None:
    reg.add("autoindex", MAIN_SRV_LOC, flag_slot("autoindex"))
    reg.add("autoindex_format", MAIN_SRV_LOC, enum_slot("autoindex_format", FORMATS))
    reg.add("autoindex_exact_size", MAIN_SRV_LOC, flag_slot("autoindex_exact_size"))
    reg.add("autoindex_localtime", MAIN_SRV_LOC, flag_slot("autoindex_localtime"))


def configure(ctx: Context, loc: Any) -> None:
    loc.autoindex = ctx.get("autoindex", False)
    loc.autoindex_format = ctx.get("autoindex_format", "html")
    loc.autoindex_exact_size = ctx.get("autoindex_exact_size", True)
    loc.autoindex_localtime = ctx.get("autoindex_localtime", False)


def autoindex(r: Any, dir_path: str) -> int:
    loc = r.loc
    try:
        entries = scan(dir_path)
    except OSError as exc:
        code = exc.errno or 0
        from pyngx.core.log import ERROR

        r.log(ERROR, f'opendir() "{dir_path}" failed ({code})')
        return 403 if code == 13 else 500
    fmt = loc.autoindex_format
    callback = None
    if fmt == "jsonp":
        from pyngx.http.variables import _arg

        callback = _arg("callback")(r)
        if callback is not None and not jsonp_callback_ok(callback):
            from pyngx.core.log import ERROR

            r.log(ERROR, f'client sent invalid callback "{callback}"')
            return 400
    body, ctype = render(
        r.uri, entries, fmt, loc.autoindex_exact_size, loc.autoindex_localtime, callback
    )
    r.out.content_type = ctype
    r.status = 200
    r.send_response(200, body)
    return DONE


_unused = (Node,)
