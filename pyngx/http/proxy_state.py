"""Per-try bookkeeping of a proxied request and the $upstream_* variables it feeds.

`TryState` is nginx's ngx_http_upstream_state_t: one per try (peer), kept in order; a request
that is proxied again (error_page, X-Accel-Redirect) continues the list after a None, which
the variables print as " : " (nginx's separator between upstream groups). Times are seconds,
-1 when unknown ("-" in the variables).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyngx.http.proxy_response import set_cookie_value

if TYPE_CHECKING:
    from pyngx.http.proxy_response import Head


class TryState:
    """One try: nginx's ngx_http_upstream_state_t (times in seconds, -1 unknown)."""

    __slots__ = (
        "peer",
        "status",
        "start",
        "connect",
        "header",
        "response",
        "length",
        "received",
        "sent",
    )

    def __init__(self, start: float) -> None:
        self.peer: str | None = None
        self.status = 0
        self.start = start
        self.connect = -1.0
        self.header = -1.0
        self.response = -1.0
        self.length = 0
        self.received = 0
        self.sent = 0


class UpstreamVars:
    """The variable getters pyngx/http/variables.py calls on `r.upstream` (a mixin of the
    exchange: it reads `states`, `target` and `head_in`)."""

    __slots__ = ()
    states: list[TryState | None]
    target: Any
    head_in: Head | None

    def _join(self, fn: Callable[[TryState], str]) -> str:
        parts: list[str] = []
        sep = ""
        for st in self.states:
            if st is None:
                sep = " : "
                continue
            if parts:
                parts.append(sep or ", ")
            sep = ""
            parts.append(fn(st))
        return "".join(parts)

    def var_addr(self) -> str | None:
        return self._join(lambda s: s.peer or "") if self.states else None

    def var_status(self) -> str | None:
        return self._join(lambda s: str(s.status) if s.status else "-") if self.states else None

    @staticmethod
    def _ms(t: float) -> str:
        return "-" if t < 0 else f"{max(t, 0.0):.3f}"

    def var_response_time(self) -> str | None:
        return self._join(lambda s: self._ms(s.response)) if self.states else None

    def var_connect_time(self) -> str | None:
        return self._join(lambda s: self._ms(s.connect)) if self.states else None

    def var_header_time(self) -> str | None:
        return self._join(lambda s: self._ms(s.header)) if self.states else None

    def var_response_length(self) -> str | None:
        return self._join(lambda s: str(s.length)) if self.states else None

    def var_bytes_received(self) -> str | None:
        return self._join(lambda s: str(s.received)) if self.states else None

    def var_bytes_sent(self) -> str | None:
        return self._join(lambda s: str(s.sent)) if self.states else None

    def var_proxy_host(self) -> str:
        return self.target.host_header

    def var_proxy_port(self) -> str:
        return self.target.port_text

    def var_cache_status(self) -> None:
        return None

    def header(self, name: str) -> str | None:
        head = self.head_in
        if head is None:
            return None
        for n, v in head.pairs():
            if n.lower() == name:
                return v
        return None

    def cookie(self, name: str) -> str | None:
        head = self.head_in
        return None if head is None else set_cookie_value(head.pairs(), name)


__all__ = ["TryState", "UpstreamVars"]
