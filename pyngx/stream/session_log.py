"""What TCP and UDP stream sessions share: nginx's error-log context and a few variables."""

from __future__ import annotations

import socket
from typing import Any


def peer_text(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SessionLog:
    """Mixed into ClientSide and UdpSession, which provide the attributes used here."""

    __slots__ = ()
    # nginx writes "udp client:" for datagram sessions.
    CLIENT_LABEL = "client"

    server: Any
    conn_id: int
    remote_addr: str
    remote_port: int | None
    server_addr: str
    server_port: int | None
    family: int
    tried: list[str]
    bytes_received: int
    bytes_sent: int
    up_received: int
    up_sent: int
    start: float
    loop: Any

    def log(self, level: int, message: str) -> None:
        log = self.server.error_log
        if log.enabled(level):
            log.log(level, message, self.conn_id, self.log_context())

    def log_context(self) -> str:
        text = f", {self.CLIENT_LABEL}: {self.remote_addr}, server: {self.server_text()}"
        if self.tried:
            text += (
                f', upstream: "{self.tried[-1]}", bytes from/to client:'
                f"{self.bytes_received}/{self.bytes_sent}, bytes from/to upstream:"
                f"{self.up_received}/{self.up_sent}"
            )
        return text

    def peer_text(self) -> str:
        return peer_text(self.remote_addr, self.remote_port)

    def server_text(self) -> str:
        if self.family == socket.AF_UNIX:
            return self.server_addr
        if self.family == socket.AF_INET6:
            return f"[{self.server_addr}]:{self.server_port}"
        return f"{self.server_addr}:{self.server_port}"

    def session_time(self) -> float:
        return float(self.loop.time() - self.start)

    def upstream_addr_text(self) -> str | None:
        return ", ".join(self.tried) if self.tried else None
