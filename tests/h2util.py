"""An HTTP/2 client for tests, on the `h2` library: requests, responses per stream, flow
control (acknowledge as read, or hold the window), GOAWAY kept aside.

`H2Client` speaks over a real socket (integration and differential tests); `ClientState` is
the transport-free part, also used by the in-process tests (tests/unit/h2_inprocess.py).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import GoAwayFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class ClientState:
    def __init__(self, *, window: int | None = None, auto_ack: bool = True) -> None:
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.auto_ack = auto_ack
        self.responses: dict[int, Response] = {}
        self.events: list[Any] = []
        self.goaway: GoAwayFrame | None = None
        self._unsent: tuple[int, bytes, bool] | None = None
        self._partial = b""
        self.observe_only = False

    # -- what a subclass provides ----------------------------------------------------------

    def send(self) -> None:
        raise NotImplementedError

    # -- requests ---------------------------------------------------------------------------

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
        authority: str = "localhost",
    ) -> int:
        sid = self.client.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":path", path)]
        fields.append((":authority", authority))
        fields.extend(headers or [])
        raw = [(n.encode(), v.encode()) for n, v in fields]
        self.responses[sid] = Response()
        self.client.send_headers(sid, raw, end_stream=body is None and end)
        if body is not None:
            self.send_body(sid, body, end=end)
        self.send()
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        pos = 0
        while pos < len(body):
            n = min(16384, len(body) - pos, self.client.local_flow_control_window(sid))
            if n <= 0:
                break
            self.client.send_data(sid, body[pos : pos + n])
            pos += n
        if end and pos == len(body):
            self.client.end_stream(sid)
        self.send()
        self._unsent = (sid, body[pos:], end) if pos < len(body) else None

    # -- responses --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        data = self._strip_goaway(data)
        if not data or self.observe_only:
            return
        for ev in self.client.receive_data(data):
            self.events.append(ev)
            if isinstance(ev, h2.events.ResponseReceived):
                r = self.responses.setdefault(ev.stream_id, Response())
                r.headers = list(ev.headers or [])
                r.status = int(dict(r.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.responses.setdefault(ev.stream_id, Response()).body += ev.data or b""
                flow = ev.flow_controlled_length or 0
                if self.auto_ack and flow:
                    self.client.acknowledge_received_data(flow, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.responses.setdefault(ev.stream_id, Response()).ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.responses.setdefault(ev.stream_id, Response()).reset = ev.error_code
            elif isinstance(ev, h2.events.WindowUpdated) and self._unsent is not None:
                sid, rest, end = self._unsent
                self.send_body(sid, rest, end=end)
        self.send()

    def _strip_goaway(self, data: bytes) -> bytes:
        """GOAWAY frames are taken out before h2 sees them: h2 would close its state machine,
        and the streams in flight are still answered after a graceful GOAWAY."""
        data = self._partial + data
        out = bytearray()
        pos = 0
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos : pos + 3], "big")
            end = pos + 9 + length
            if end > len(data):
                break
            if data[pos + 3] == 7:  # GOAWAY
                frame = GoAwayFrame(0)
                frame.parse_body(memoryview(data[pos + 9 : end]))
                self.goaway = frame
            else:
                out += data[pos:end]
            pos = end
        self._partial = data[pos:]
        return bytes(out)


class H2Client(ClientState):
    """HTTP/2 over a loopback socket: prior knowledge (h2c), or TLS with `ssl_context`
    (whose ALPN protocols the caller sets)."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        window: int | None = None,
        auto_ack: bool = True,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        super().__init__(window=window, auto_ack=auto_ack)
        self.timeout = timeout
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.eof = False
        self.send()

    def send(self) -> None:
        data = self.client.data_to_send()
        if data and not self.eof:
            try:
                self.sock.sendall(data)
            except OSError:
                self.eof = True

    def raw(self, data: bytes, *, observe: bool = False) -> None:
        """Bytes straight onto the socket (hostile frames). `observe`: from now on the
        server's frames are only looked at (GOAWAY kept), not given to h2, whose state
        knows nothing of what was sent raw."""
        if observe:
            self.observe_only = True
        self.sock.sendall(data)

    def read_once(self, wait: float) -> bool:
        """One read (up to `wait` seconds); False at EOF."""
        if self.eof:
            return False
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending:
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                return True
        try:
            data = self.sock.recv(256 * 1024)
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.feed(data)
        return True

    def pump(self, until: Callable[[], bool], timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not reached")
            if not self.read_once(min(left, 0.2)) and not until():
                raise ConnectionError("connection closed before the condition")

    def get(self, path: str, **kw: Any) -> Response:
        sid = self.request(path, **kw)
        r = self.responses[sid]
        self.pump(lambda: r.done)
        return r

    def wait_closed(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while self.read_once(max(0.0, min(0.2, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError("connection still open")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
