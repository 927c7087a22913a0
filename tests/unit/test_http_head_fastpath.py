"""Request._plain_head (the HTTP/1 head written directly) equals head_fields, formatted."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyngx.http.request import Request, _status_text

statuses = st.sampled_from([101, 200, 201, 204, 206, 301, 304, 400, 404, 494, 500, 502])
_DATE = re.compile(rb"Date: [^\r]*")
maybe_text = st.one_of(st.none(), st.sampled_from(["text/html", "a/b", "x"]))


def _request(data: Any) -> Request:
    loc = SimpleNamespace(
        server_tokens=data["tokens"],
        keepalive_header=data["ka_header"],
        add_headers=(),
        expires=None,
        absolute_redirect=True,
    )
    srv = SimpleNamespace(conf=loc)
    r = Request(SimpleNamespace(), srv)  # type: ignore[arg-type]
    r.version = data["version"]
    r.status = data["status"]
    r.err_status = data["err_status"]
    r.keepalive = data["keepalive"]
    r.chunked = data["chunked"]
    out = r.out
    out.status_line = data["status_line"]
    out.content_type = data["ct"]
    out.charset = data["charset"]
    out.content_length = data["cl"]
    out.last_modified = data["lm"]
    out.etag = data["etag"]
    out.accept_ranges = data["ranges"]
    out.no_server = data["no_server"]
    out.no_date = data["no_date"]
    out.headers = list(data["headers"])
    return r


def _general(r: Request) -> bytes:
    fields = r.head_fields()
    if r.out.status_line is not None:
        first = f"HTTP/1.1 {r.out.status_line}\r\n"
    else:
        first = _status_text(r.status)
    lines = "".join(f"{n}: {v}\r\n" for n, v in fields)
    return f"{first}{lines}\r\n".encode("latin-1", "replace")


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "tokens": st.sampled_from(["on", "off", "build"]),
            "ka_header": st.sampled_from([0, 0.0, 5, 7.5]),
            "version": st.sampled_from([(1, 0), (1, 1)]),
            "status": statuses,
            "err_status": st.sampled_from([0, 0, 413]),
            "keepalive": st.booleans(),
            "chunked": st.booleans(),
            "status_line": st.one_of(st.none(), st.just("299 Whatever")),
            "ct": maybe_text,
            "charset": st.one_of(st.none(), st.just(""), st.just("utf-8")),
            "cl": st.one_of(st.none(), st.integers(0, 10**9)),
            "lm": st.one_of(st.none(), st.just(1.0e9)),
            "etag": st.one_of(st.none(), st.just('"abc"')),
            "ranges": st.booleans(),
            "no_server": st.booleans(),
            "no_date": st.booleans(),
            "headers": st.lists(
                st.tuples(st.sampled_from(["X-A", "Set-Cookie"]), st.sampled_from(["1", "é"])),
                max_size=3,
            ),
        }
    )
)
def test_plain_head_equals_head_fields(data: dict[str, Any]) -> None:
    a = _request(data)
    b = _request(data)
    # Date may tick between the two: compared without its value.
    assert _DATE.sub(b"Date: -", a.build_head()) == _DATE.sub(b"Date: -", _general(b))
    assert (a.status, a.out.content_type, a.header_sent) == (b.status, b.out.content_type, True)


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 1)}.get(key, default)

    def close(self) -> None: ...

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def test_header_timer_only_for_incomplete_heads(tmp_path: Any) -> None:
    import asyncio

    from pyngx.core.cycle import load_cycle
    from pyngx.core.paths import Paths
    from pyngx.http.connection import HttpConnection

    conf = tmp_path / "c.conf"
    conf.write_text(
        "error_log stderr;\nevents {}\nhttp { access_log off; server { listen 127.0.0.1:1;"
        ' location / { return 200 "ok"; } } }\n'
    )
    cycle = load_cycle(Paths(str(tmp_path) + "/", str(conf)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = SimpleNamespace(
            loop=loop,
            draining=False,
            http_connections=set(),
            next_connection_id=lambda: 1,
            over_connection_limit=lambda: False,
            http_connection_closed=lambda c: None,
        )
        c = HttpConnection(worker, cycle.http.ports[0])
        t = _Transport()
        c.connection_made(t)  # type: ignore[arg-type]
        assert c.timer_kind == "header"
        req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        c.data_received(req)
        # The response is written at the end of the loop's iteration (HttpConnection.write).
        assert c.timer_kind == "keepalive" and not t.out
        await asyncio.sleep(0)
        assert len(t.out) == 1
        c.data_received(req[:10])  # a keepalive connection gets part of a head
        assert c.timer_kind == "header"
        deadline = c.deadline
        c.data_received(req[10:20])  # still incomplete: the deadline stays from the start
        assert c.timer_kind == "header" and c.deadline == deadline
        c.data_received(req[20:])
        await asyncio.sleep(0)
        assert c.timer_kind == "keepalive" and len(t.out) == 2
        c.data_received(req + req[:5])  # a pipelined partial head after a complete one
        await asyncio.sleep(0)
        assert len(t.out) == 3 and c.timer_kind == "header"
        c.connection_lost(None)

    try:
        asyncio.run(main())
    finally:
        cycle.files.close()
