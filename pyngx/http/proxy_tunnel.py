"""An upgraded connection (WebSocket and the like): bytes both ways until either side ends.

After the upstream answered 101 to a request that asked to upgrade, nginx stops speaking HTTP
on both connections (ngx_http_upstream_upgrade): whatever one side sends goes to the other.
The client connection leaves its HttpConnection (`detach`, which hands over bytes the client
already sent) for a small Protocol of ours; the upstream connection's owner becomes the tunnel.

Flow control is by pausing: a side whose transport is above its high-water mark pauses
reading on the other side. The tunnel ends when either side sends EOF or goes away (nginx
finalizes then), or after `proxy_read_timeout` without traffic in either direction (nginx
re-arms the upstream read timer on every pass through ngx_http_upstream_process_upgraded):
504 in the log, "upstream timed out ... while proxying upgraded connection".
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import TYPE_CHECKING, Any

from pyngx.http.upstream_pool import UpstreamConn

if TYPE_CHECKING:
    from pyngx.http.proxy_run import Exchange

_ETIMEDOUT = f"({errno.ETIMEDOUT}: {os.strerror(errno.ETIMEDOUT)})"


class _ClientSide(asyncio.Protocol):
    __slots__ = ("tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_client(data)

    def eof_received(self) -> bool | None:
        self.tunnel.end(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        t = self.tunnel
        t.end(None)
        t.http.connection_lost(exc)

    def pause_writing(self) -> None:
        up = self.tunnel.up
        if not up.closed:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.tunnel.up
        if not up.closed:
            up.transport.resume_reading()


class Tunnel:
    __slots__ = ("ex", "up", "http", "client", "done", "timeout")

    def __init__(self, ex: Exchange, up: UpstreamConn, upstream_rest: bytes) -> None:
        self.ex = ex
        self.up = up
        r = ex.r
        self.http: Any = r.conn
        self.done = False
        self.timeout = ex.conf.read_timeout
        up.owner = self  # type: ignore[assignment]
        held = self.http.detach()
        self.client: asyncio.Transport = self.http.transport
        self.client.set_protocol(_ClientSide(self))
        up.arm("read", self.timeout)
        if upstream_rest:
            self.up_data(upstream_rest, counted=True)
        if held and not self.done:
            self.from_client(held)

    # -- client -> upstream -------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        up = self.up
        if self.done or up.closed:
            return
        up.write(data)
        up.deadline = up.loop.time() + self.timeout
        if up.paused:
            self.client.pause_reading()

    # -- upstream -> client (the UpstreamConn owner protocol) -----------------------------------

    def up_data(self, data: bytes, counted: bool = False) -> None:
        if self.done:
            return
        st = self.ex.state
        if st is not None and not counted:
            st.received += len(data)
        r = self.ex.r
        r.bytes_sent += len(data)
        r.body_sent += len(data)
        self.client.write(data)
        up = self.up
        up.deadline = up.loop.time() + self.timeout

    def up_eof(self) -> None:
        self.end(None)

    def up_lost(self, exc: Exception | None) -> None:
        self.end(None)

    def up_paused(self, paused: bool) -> None:
        if self.done:
            return
        if paused:
            self.client.pause_reading()
        else:
            self.client.resume_reading()

    def up_timeout(self, kind: str) -> None:
        self.end(f"upstream timed out {_ETIMEDOUT}", 504)

    # -- the end ---------------------------------------------------------------------------------

    def end(self, message: str | None, status: int = 0) -> None:
        if self.done:
            return
        self.done = True
        up = self.up
        st = self.ex.state
        if st is not None:
            st.sent += up.sent
            up.sent = 0
        up.owner = None
        up.close()
        self.ex.tunnel = None
        self.ex.tunnel_closed(status, message)

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.up.close()
            self.client.close()


__all__ = ["Tunnel"]
