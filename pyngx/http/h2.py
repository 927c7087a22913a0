"""HTTP/2 towards clients (ngx_http_v2_module): an asyncio Protocol over the `h2` library's
sans-I/O state machine; each stream becomes a Request running the same phases as HTTP/1.

How a connection gets here: `upgrade(conn)` takes an HttpConnection's transport over
(`transport.set_protocol`) — after TLS chose ALPN "h2" (http/ssl.py calls it), or when the
first bytes on an address with `listen ... http2` / `http2 on` are the cleartext connection
preface (`try_prior_knowledge`, called by HttpConnection: "h2c" with prior knowledge).

Who does what:
- h2 parses frames and keeps HPACK, stream states and flow-control windows; it answers PING
  and SETTINGS. When it raises a protocol error we send GOAWAY with nginx's error code and log
  nginx's text (info), as ngx_http_v2_connection_error does.
- This module does nginx's part: request checks (h2_request.py), the stream limit
  (RST_STREAM REFUSED_STREAM where h2 would end the connection), the header size limits of
  large_client_header_buffers, GOAWAY for graceful shutdown, keepalive_timeout /
  keepalive_requests / keepalive_time, and the flood guards (too many streams at once, too
  many PRIORITY frames, bytes without payload, output the client does not read).
- Our SETTINGS frame is written here: h2 is told the initial window (local settings) but not
  the stream limit, which it would enforce as a connection error.
- A graceful GOAWAY is written here too: h2 closes its state machine when it sends one, and
  the streams in flight must still be answered. For the same reason the client's GOAWAY
  frames are taken out before h2 sees them (nginx ignores them).
- Frame headers are scanned ahead of h2 (`_scan`) for the flood checks and to refuse a frame
  over MAX_FRAME_SIZE at once (h2 would first buffer all of it); reads are processed in
  slices so that one busy connection does not hold the worker.

Deliberate differences from nginx: MAX_FRAME_SIZE is announced as 16384 (nginx: 2^24-1) so
that h2, which buffers whole frames, never holds more than that per frame; a Content-Length
that does not match the DATA received, or is not a number, is a connection error in h2
(nginx: 400 for the stream); request trailers end the connection as in nginx.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
from h2.connection import H2Connection as _H2State
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameDataMissingError,
    FrameTooLargeError,
    InvalidSettingsValueError,
    NoSuchStreamError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, SettingsFrame

from pyngx.core.log import ALERT, INFO
from pyngx.http.h2_module import (
    DEFAULT_CONCURRENT_STREAMS,
    DEFAULT_PREREAD,
    MAX_WINDOW,
)
from pyngx.http.h2_request import parse_head, validate_host
from pyngx.http.h2_stream import H2Stream
from pyngx.http.request import Request
from pyngx.protocols.http1 import HttpParseError, split_target

if TYPE_CHECKING:
    from pyngx.http.connection import HttpConnection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
FRAME_SIZE = 16384
# Output queued for a client that does not read (PING/SETTINGS acks, resets) stops our reading.
OUTPUT_LIMIT = 1024 * 1024
# nginx's flood check: more than this much beyond 8x the payload is a flood.
FLOOD_SLACK = 1024 * 1024
# Frames without payload (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, empty DATA,
# unknown types) cost h2 tens of microseconds each: a connection gets this many, plus some
# per stream it opens and per response byte it acknowledges, before "http2 flood detected".
CTRL_BUDGET = 10000
CTRL_PER_STREAM = 32
CTRL_PER_SENT = 16384
# At most this much of a read is processed per turn of the event loop, so that one busy
# connection cannot hold the worker for long.
SLICE = 64 * 1024

_ETIMEDOUT = "110: Connection timed out"
_OPEN, _CLOSED = 0, 1


class H2Framing:
    """What Request and the proxy read from `r.framing` (BodyFraming's fields) for HTTP/2."""

    __slots__ = ("content_length", "chunked", "keepalive", "expect_continue", "upgrade", "host")

    def __init__(self, content_length: int | None, chunked: bool, host: str) -> None:
        self.content_length = content_length
        # nginx marks a body of unknown length "chunked" (no Content-Length, stream open).
        self.chunked = chunked
        self.keepalive = True
        self.expect_continue = False
        self.upgrade = False
        self.host = host


def _new_state(preread: int, header_limit: int) -> _H2State:
    config = H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
        validate_inbound_headers=False,  # nginx's own checks (h2_request.py) answer 400
        normalize_inbound_headers=False,  # cookies are joined in h2_request.py
    )
    state = _H2State(config)
    # No MAX_CONCURRENT_STREAMS here: h2 would enforce it as a connection error. The initial
    # window is a pending change: streams opened before the client acknowledges our SETTINGS
    # get the default window the client still assumes (h2 applies the change at the ACK).
    local = Settings(client=False)
    if preread != local.initial_window_size:
        local.initial_window_size = preread
    state.local_settings = local
    # A safety net only: the limits of large_client_header_buffers are checked after
    # decoding, on names and values (hpack counts 32 more bytes per field).
    state.decoder.max_header_list_size = header_limit * 2 + 65536
    return state


class H2Connection(asyncio.Protocol):
    __slots__ = (
        "worker",
        "port",
        "default",
        "transport",
        "loop",
        "conn_id",
        "remote_addr",
        "remote_port",
        "server_addr",
        "server_port",
        "family",
        "is_ssl",
        "pp",
        "h2",
        "streams",
        "processing",
        "requests",
        "state",
        "goaway",
        "settings_acked",
        "writing_paused",
        "reading_paused",
        "timer",
        "timer_kind",
        "deadline",
        "max_streams",
        "preread",
        "field_limit",
        "header_limit",
        "new_streams",
        "priority_budget",
        "total_bytes",
        "payload_bytes",
        "start_time",
        "ctrl_frames",
        "sent_data",
        "scan_skip",
        "scan_hold",
        "in_block",
        "backlog",
        "batching",
        "wbuf",
    )

    def __init__(self, conn: HttpConnection) -> None:
        self.worker = conn.worker
        self.port = conn.port
        self.default = conn.default
        self.transport: Any = conn.transport
        self.loop = conn.worker.loop
        self.conn_id = conn.conn_id
        self.remote_addr = conn.remote_addr
        self.remote_port = conn.remote_port
        self.server_addr = conn.server_addr
        self.server_port = conn.server_port
        self.family = getattr(conn, "family", socket.AF_INET)
        self.is_ssl = conn.is_ssl
        self.pp = conn.pp
        conf = self.default.conf
        self.max_streams = getattr(conf, "http2_max_concurrent_streams", DEFAULT_CONCURRENT_STREAMS)
        self.preread = getattr(conf, "http2_body_preread_size", DEFAULT_PREREAD)
        nbuf, size = self.default.large_header_buffers
        self.field_limit = size
        self.header_limit = nbuf * size
        self.h2 = _new_state(self.preread, self.header_limit)
        self.streams: dict[int, H2Stream] = {}
        self.processing = 0
        self.requests = 0
        self.state = _OPEN
        self.goaway = False  # GOAWAY sent: no new streams, close when the last one ends
        self.settings_acked = False
        self.writing_paused = bool(getattr(conn, "writing_paused", False))
        self.reading_paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""
        self.deadline = 0.0
        self.new_streams = 0
        self.priority_budget = max(self.max_streams, 100)
        self.total_bytes = 0
        self.payload_bytes = 0
        self.start_time = time.monotonic()
        self.ctrl_frames = 0
        self.sent_data = 0
        self.scan_skip = len(PREFACE)  # the preface is not a frame
        self.scan_hold = b""  # a frame header split across reads (see _scan)
        self.in_block = False  # inside a header block (HEADERS without END_HEADERS)
        self.backlog = b""  # read but not yet processed (see data_received)
        self.batching = False  # output is collected in wbuf, written once (end_batch)
        self.wbuf = bytearray()

    # -- start ------------------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        """Our SETTINGS and the connection window, as ngx_http_v2_init; then `data`."""
        h2 = self.h2
        h2.initiate_connection()
        h2.data_to_send()  # h2's own SETTINGS frame: ours (below) adds the stream limit
        settings = SettingsFrame(0)
        settings.settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: self.preread,
            SettingCodes.MAX_FRAME_SIZE: FRAME_SIZE,
        }
        h2.increment_flow_control_window(MAX_WINDOW - DEFAULT_WINDOW)
        self.transport.write(settings.serialize() + h2.data_to_send())
        self._arm("header", self.default.header_timeout)
        if data:
            self.data_received(data)

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # set_protocol does not call this; kept for a transport handed over some other way.
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        if self.backlog:
            self.backlog += data
            return
        if len(data) > SLICE:
            self.backlog = data[SLICE:]
            data = data[:SLICE]
            self.transport.pause_reading()
            self.loop.call_soon(self._next_slice)
        self._process(data)

    def _next_slice(self) -> None:
        if self.state == _CLOSED:
            self.backlog = b""
            return
        data = self.backlog[:SLICE]
        self.backlog = self.backlog[SLICE:]
        if self.backlog:
            self.loop.call_soon(self._next_slice)
        elif not self.reading_paused:
            self.transport.resume_reading()
        self._process(data)

    def _process(self, data: bytes) -> None:
        self.total_bytes += len(data)
        self.new_streams = 0
        feed = self._scan(data)
        if feed is None:
            self.conn_log(INFO, "client sent too large frame")
            self._finalize(ErrorCodes.FRAME_SIZE_ERROR)
            return
        allowance = CTRL_BUDGET + CTRL_PER_STREAM * self.requests + self.sent_data // CTRL_PER_SENT
        if self.ctrl_frames > allowance or self.total_bytes // 8 > self.payload_bytes + FLOOD_SLACK:
            self.conn_log(INFO, "http2 flood detected")
            self._finalize(ErrorCodes.NO_ERROR)
            return
        if not feed:
            return
        try:
            events = self.h2.receive_data(feed)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        # The answers to one read (acks, responses of many streams) leave in one write.
        self.batching = True
        try:
            for event in events:
                handler = _DISPATCH.get(type(event))
                if handler is not None:
                    handler(self, event)
                if self.state == _CLOSED:
                    return
        except Exception as exc:  # a bug costs this connection, never the worker
            self.worker_log(ALERT, f"http2 connection failed: {type(exc).__name__}: {exc}")
            self._finalize(ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            self.end_batch()
        if (
            not self.reading_paused
            and self.state == _OPEN
            and self.transport.get_write_buffer_size() > OUTPUT_LIMIT
        ):
            self.reading_paused = True
            self.transport.pause_reading()

    def _scan(self, data: bytes) -> bytes | None:
        """Frame headers only, ahead of h2, for three things: the flood checks (payload or
        not); frames over our MAX_FRAME_SIZE (None: h2 would buffer up to 16 MB of one before
        refusing it); the client's GOAWAY frames, taken out — h2 would close its state machine
        on one, while nginx ignores it and answers the streams in flight. Returns what h2
        gets now: a frame header split across reads waits for the rest."""
        if self.scan_hold:
            data = self.scan_hold + data
            self.scan_hold = b""
        pos = 0
        end = feed_end = len(data)
        skip = self.scan_skip
        ctrl = payload = 0
        cuts: list[tuple[int, int]] | None = None
        while pos < end:
            if skip:
                take = min(skip, end - pos)
                pos += take
                skip -= take
                continue
            if end - pos < 9:
                self.scan_hold = data[pos:]
                feed_end = pos
                break
            length = int.from_bytes(data[pos : pos + 3], "big")
            if length > FRAME_SIZE:
                return None
            kind = data[pos + 3]
            if kind in (1, 5, 9):  # HEADERS, PUSH_PROMISE, CONTINUATION
                self.in_block = not data[pos + 4] & 0x4
            elif (
                kind == 7
                and length >= 8
                and not self.in_block
                and not int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            ):
                if pos + 9 + length > end:
                    self.scan_hold = data[pos:]
                    feed_end = pos
                    break
                if cuts is None:
                    cuts = []
                cuts.append((pos, pos + 9 + length))
                ctrl += 1
                pos += 9 + length
                continue
            if kind in (0, 1, 9) and length:
                payload += length
            else:
                ctrl += 1
            skip = length
            pos += 9
        self.scan_skip = skip
        self.ctrl_frames += ctrl
        self.payload_bytes += payload
        if cuts is None:
            return data if feed_end == end else data[:feed_end]
        out = bytearray()
        last = 0
        for a, b in cuts:
            out += data[last:a]
            last = b
        out += data[last:feed_end]
        return bytes(out)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.state == _OPEN
        self.state = _CLOSED
        self._cancel_timer()
        self.worker.http_connections.discard(self)
        self.worker.http_connection_closed(self)
        if self.streams and was_open:
            self.conn_log(INFO, "client prematurely closed connection")
        self._terminate_streams(499)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.reading_paused and self.state == _OPEN:
            self.reading_paused = False
            if not self.backlog:
                self.transport.resume_reading()
        for st in list(self.streams.values()):
            if st.pending:
                self.pump(st)
            st.wake()

    # -- events -----------------------------------------------------------------------------

    def _on_request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        fields = ev.headers or []
        ended = ev.stream_ended is not None
        # PRIORITY frames are limited per stream (ngx_http_v2_create_stream adds to it).
        self.priority_budget += self.max_streams + (1 if ev.priority_updated else 0)
        size = 0
        for name, value in fields:
            n = len(name) + len(value)
            if len(name) > self.field_limit or len(value) > self.field_limit:
                self.conn_log(INFO, "client sent too large header field")
                self._finalize(ErrorCodes.ENHANCE_YOUR_CALM)
                return
            size += n
        if size > self.header_limit:
            self.conn_log(INFO, "client sent too large header")
            self._finalize(ErrorCodes.ENHANCE_YOUR_CALM)
            return
        if self.goaway:
            self._refuse(sid)
            return
        if self.processing >= self.max_streams:
            self.conn_log(INFO, f"concurrent streams exceeded {self.processing}")
            self._refuse(sid)
            return
        self.new_streams += 1
        if self.new_streams > 2 * self.max_streams:
            self.conn_log(INFO, "client sent too many streams at once")
            self._refuse(sid)
            return
        if not self.settings_acked and not ended and self.preread < DEFAULT_WINDOW:
            self.conn_log(INFO, "client sent stream with data before settings were acknowledged")
            self._refuse(sid)
            return
        st = H2Stream(self, sid, ended)
        self.streams[sid] = st
        self.processing += 1
        self.requests += 1
        if self.timer_kind:
            self._cancel_timer()
        conf = self.default.conf
        if (
            conf.keepalive_timeout <= 0
            or self.requests >= conf.keepalive_requests
            or time.monotonic() - self.start_time > conf.keepalive_time
        ):
            self._send_goaway(ErrorCodes.NO_ERROR)
        self._start_request(st, fields, ended, size)

    def _start_request(
        self, st: H2Stream, fields: list[tuple[bytes, bytes]], ended: bool, size: int
    ) -> None:
        srv = self.default
        head = parse_head(
            fields,
            underscores=srv.underscores_in_headers,
            ignore_invalid=srv.ignore_invalid_headers,
            ended=ended,
        )
        req = Request(st, srv)  # type: ignore[arg-type]
        st.request = req
        req.version = (2, 0)
        req.method = head.method
        req.request_uri = head.path
        req.request_line = head.request_line
        req.header_list = head.headers
        headers: dict[str, str] = {}
        for name, value in head.headers:
            if name not in headers:
                headers[name] = value
        req.headers = headers
        req.request_length = size
        req.uri = req.args = req.host = ""
        req.keepalive = True
        host = validate_host(head.host) if head.host is not None else None
        req.framing = H2Framing(
            head.content_length, head.content_length is None and not ended, host or ""
        )
        for note in head.notes:
            req.log(INFO, note)
        if head.status:
            req.log(INFO, head.error)
            st.skip_body = True
            self._run(req, head.status)
            return
        try:
            req.uri, req.args, _ = split_target(head.path, merge_slashes=srv.merge_slashes)
        except HttpParseError as exc:
            req.log(INFO, exc.reason)
            self._run(req, exc.status)
            return
        req.host = host or ""
        if req.host and len(self.port.servers) > 1:
            server, match = self.port.names.find(req.host)
            if server is not srv:
                req.srv = server
                req.loc = server.conf
            if match is not None:
                req.captures = match
        self._run(req, 0)

    def _run(self, req: Request, status: int) -> None:
        try:
            if status:
                req.finalize(status)
            else:
                req.run()
        except Exception as exc:  # Request.run guards its phases; finalize is guarded here
            self.worker_log(ALERT, f"request failed: {type(exc).__name__}: {exc}")
            if not req.done:
                req.conn.close_request(req, abort=True)

    def _on_data(self, ev: DataReceived) -> None:
        data = ev.data or b""
        flow = ev.flow_controlled_length or 0
        st = self.streams.get(ev.stream_id)  # type: ignore[arg-type]
        if st is None:
            # A stream we already ended: keep the connection window open.
            if flow:
                self.h2.acknowledge_received_data(flow, ev.stream_id)  # type: ignore[arg-type]
            return
        st.data_received(data, flow)
        if ev.stream_ended is not None:
            st.end_of_body()

    def _on_stream_ended(self, ev: StreamEnded) -> None:
        st = self.streams.get(ev.stream_id)  # type: ignore[arg-type]
        if st is not None:
            st.end_of_body()

    def _on_reset(self, ev: StreamReset) -> None:
        sid = ev.stream_id
        st = self.streams.get(sid)  # type: ignore[arg-type]
        if st is None:
            return
        code = ev.error_code
        if code == ErrorCodes.CANCEL:
            text = f"client canceled stream {sid}"
        elif code == ErrorCodes.REFUSED_STREAM:
            text = f"client refused stream {sid}"
        elif code == ErrorCodes.INTERNAL_ERROR:
            text = f"client terminated stream {sid} due to internal error"
        else:
            text = f"client terminated stream {sid} with status {int(code or 0)}"
        req = st.request
        if req is not None and not req.done:
            sending = req.header_sent
            suffix = " while sending response to client" if sending else ""
            req.log(INFO, text + suffix)
            if sending:
                req.log(INFO, "client prematurely closed connection" + suffix)
        st.closed = True
        st.drop_pending()
        st.terminate(499)
        st.wake()
        self._stream_closed(st)

    def _on_window(self, ev: WindowUpdated) -> None:
        sid = ev.stream_id
        if sid:
            st = self.streams.get(sid)
            if st is not None and st.pending:
                self.pump(st)
            return
        for st in list(self.streams.values()):
            if st.pending:
                self.pump(st)
                if self.h2.outbound_flow_control_window <= 0:
                    break

    def _on_settings(self, ev: RemoteSettingsChanged) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
            for st in list(self.streams.values()):
                if st.pending:
                    self.pump(st)

    def _on_settings_ack(self, ev: SettingsAcknowledged) -> None:
        self.settings_acked = True

    def _on_priority(self, ev: PriorityUpdated) -> None:
        self.priority_budget -= 1
        if self.priority_budget <= 0:
            self.conn_log(INFO, "client sent too many PRIORITY frames")
            self._finalize(ErrorCodes.ENHANCE_YOUR_CALM)

    def _on_unknown(self, ev: UnknownFrameReceived) -> None:
        frame = ev.frame
        self.conn_log(INFO, f"client sent frame with unknown type {getattr(frame, 'type', '?')}")

    def _on_trailers(self, ev: TrailersReceived) -> None:
        # nginx takes a second HEADERS frame on a stream for a stream id going backwards.
        sid = ev.stream_id
        self.conn_log(
            INFO,
            f"client sent HEADERS frame with incorrect identifier {sid}, "
            f"the last was {self.h2.highest_inbound_stream_id}",
        )
        self._finalize(ErrorCodes.PROTOCOL_ERROR)

    def _on_goaway(self, ev: ConnectionTerminated) -> None:
        # Only a GOAWAY that _scan let through (malformed ones make h2 raise first). h2 has
        # closed its state machine: nothing more can be sent on any stream.
        self._terminate_streams(499)
        self._close()

    # -- sending ----------------------------------------------------------------------------

    def send_headers(self, st: H2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> int:
        if self.state == _CLOSED:
            return 0
        h2 = self.h2
        self._flush()
        try:
            h2.send_headers(st.sid, headers, end_stream=end)
        except ProtocolError:
            self._gone(st)
            return 0
        data = h2.data_to_send()
        self._out(data)
        return len(data)

    def pump(self, st: H2Stream) -> None:
        """Send as much of the stream's queued body as both windows allow; END_STREAM after
        the last byte once the response is complete."""
        if self.state == _CLOSED or st.closed:
            return
        h2 = self.h2
        pending = st.pending
        sid = st.sid
        try:
            while pending:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                size = min(window, st.frame_limit, h2.max_outbound_frame_size)
                chunk = pending[0]
                n = len(chunk)
                if n <= size:
                    pending.popleft()
                    st.pending_size -= n
                    self.sent_data += n
                    last = st.end_queued and not pending
                    h2.send_data(sid, chunk, end_stream=last)
                    if last:
                        st.ended = True
                else:
                    h2.send_data(sid, chunk[:size])
                    pending[0] = chunk[size:]
                    st.pending_size -= size
                    self.sent_data += size
            if not pending and st.end_queued and not st.ended:
                h2.end_stream(sid)
                st.ended = True
        except ProtocolError:
            self._gone(st)
            return
        self._flush()
        if st.ended:
            self.stream_output_done(st)
        elif pending:
            st.blocked = True
        elif st.blocked:  # the window opened: the handler may go on (drain, on_drain)
            st.blocked = False
            st.wake()

    def stream_output_done(self, st: H2Stream) -> None:
        """END_STREAM went out: the stream is over, unless the client still sends a body
        nobody reads — then RST_STREAM NO_ERROR, as nginx's close_stream."""
        if st.closed:
            return
        if not st.in_ended:
            self.reset_stream(st, ErrorCodes.NO_ERROR)
            return
        st.closed = True
        st.wake()
        self._stream_closed(st)

    def reset_stream(self, st: H2Stream, code: int) -> None:
        if st.closed:
            return
        st.closed = True
        if self.state == _OPEN:
            try:
                self.h2.reset_stream(st.sid, code)
            except ProtocolError:
                pass
            self._flush()
        st.wake()
        self._stream_closed(st)

    def ack(self, st: H2Stream, n: int) -> None:
        """Body bytes were consumed (or dropped): hand their window back."""
        if n <= 0 or self.state == _CLOSED:
            return
        try:
            self.h2.acknowledge_received_data(n, st.sid)
        except (ProtocolError, ValueError):
            return
        self._flush()

    def open_window(self, st: H2Stream, size: int) -> None:
        """A consumer reads the body: the stream's window grows to `size` (nginx opens it to
        the body buffer when the body is read, whatever http2_body_preread_size was)."""
        if self.state == _CLOSED:
            return
        stream = self.h2.streams.get(st.sid)
        if stream is None:
            return
        current = stream.inbound_flow_control_window
        if current < size:
            try:
                self.h2.increment_flow_control_window(size - current, st.sid)
            except ProtocolError:
                return
            self._flush()

    def _gone(self, st: H2Stream) -> None:
        """h2 refused to send on the stream: the client reset it in the same read (h2 takes
        in all frames before we see the events). Nothing more goes out on it; the
        StreamReset event, still to come, ends the request and logs it."""
        st.drop_pending()
        st.closed = True
        st.wake()

    def _refuse(self, sid: int) -> None:
        try:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        except ProtocolError:
            pass

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self._out(data)

    def _out(self, data: bytes) -> None:
        if self.state != _OPEN:
            return
        if self.batching:
            self.wbuf += data
        else:
            self.transport.write(data)

    def begin_batch(self) -> bool:
        """Collect output until end_batch (False: a batch was already open)."""
        if self.batching:
            return False
        self.batching = True
        return True

    def end_batch(self) -> None:
        self.batching = False
        pending = self.h2.data_to_send()
        if pending:
            self.wbuf += pending
        if self.wbuf:
            data = bytes(self.wbuf)
            self.wbuf.clear()
            if self.state == _OPEN:
                self.transport.write(data)

    def _stream_closed(self, st: H2Stream) -> None:
        if self.streams.pop(st.sid, None) is None:
            return
        self.processing -= 1
        st._cancel_timer()
        if self.processing == 0 and self.state == _OPEN:
            self._idle()

    def _idle(self) -> None:
        if self.goaway or self.worker.draining:
            if not self.goaway:
                self._send_goaway(ErrorCodes.NO_ERROR)
            self._close()
            return
        self._arm("keepalive", self.default.conf.keepalive_timeout)

    # -- ending the connection ----------------------------------------------------------------

    def _send_goaway(self, code: int) -> None:
        """GOAWAY written by hand: h2 would close its state machine, and the streams in
        flight still get their responses."""
        if self.goaway or self.state == _CLOSED:
            return
        self.goaway = True
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = code
        self._out(frame.serialize())

    def _finalize(self, code: int) -> None:
        """ngx_http_v2_finalize_connection: GOAWAY with `code`, the streams end, close."""
        if self.state == _CLOSED:
            return
        self.h2.data_to_send()  # h2's own GOAWAY, if any: ours carries nginx's code
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = code
        self._out(frame.serialize())
        self.goaway = True
        self._terminate_streams(499)
        self._close()

    def _protocol_error(self, exc: ProtocolError) -> None:
        code, text = describe_error(exc)
        self.conn_log(INFO, text)
        self._finalize(code)

    def _terminate_streams(self, status: int) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.processing = 0
        for st in streams:
            st.closed = True
            st.drop_pending()
            st.terminate(status)
            st.wake()

    def _close(self) -> None:
        if self.state == _CLOSED:
            return
        self.end_batch()
        self.state = _CLOSED
        self._cancel_timer()
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError, AttributeError):
            pass
        self.transport.close()

    def close_if_idle(self) -> None:
        """Graceful shutdown (worker.draining): GOAWAY now; closed when the last stream ends."""
        if self.state == _CLOSED:
            return
        if self.processing == 0:
            self._send_goaway(ErrorCodes.NO_ERROR)
            self._close()
        else:
            self._send_goaway(ErrorCodes.NO_ERROR)

    def abort(self) -> None:
        self.state = _CLOSED
        self._cancel_timer()
        self.transport.abort()

    def abort_quietly(self) -> None:
        self._close()

    # -- the timer: client_header_timeout until the first stream, then keepalive_timeout -----

    def _arm(self, kind: str, timeout: float) -> None:
        self.timer_kind = kind
        self.deadline = self.loop.time() + timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        self.timer_kind = ""
        t = self.timer
        if t is not None:
            t.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        kind = self.timer_kind
        if not kind or self.state == _CLOSED:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)
            return
        if self.processing:
            return
        if kind == "header":
            self.conn_log(INFO, f"client timed out ({_ETIMEDOUT})")
            self._finalize(ErrorCodes.PROTOCOL_ERROR)
        else:
            self._finalize(ErrorCodes.NO_ERROR)

    # -- logging ----------------------------------------------------------------------------

    def conn_log(self, level: int, message: str) -> None:
        """A line in the connection's context, as nginx's "while processing HTTP/2
        connection, client: ..., server: addr:port"."""
        self.worker_log(level, message + " while processing HTTP/2 connection")

    def worker_log(self, level: int, message: str) -> None:
        log = self.default.conf.error_log
        if log.enabled(level):
            log.log(
                level,
                message,
                self.conn_id,
                f", client: {self.remote_addr}, server: {self.server_addr}:{self.server_port}",
            )


_DISPATCH: dict[type, Any] = {
    RequestReceived: H2Connection._on_request,
    DataReceived: H2Connection._on_data,
    StreamEnded: H2Connection._on_stream_ended,
    StreamReset: H2Connection._on_reset,
    WindowUpdated: H2Connection._on_window,
    RemoteSettingsChanged: H2Connection._on_settings,
    SettingsAcknowledged: H2Connection._on_settings_ack,
    PriorityUpdated: H2Connection._on_priority,
    UnknownFrameReceived: H2Connection._on_unknown,
    TrailersReceived: H2Connection._on_trailers,
    ConnectionTerminated: H2Connection._on_goaway,
}


_FRAME_NAMES = {
    "DataFrame": "DATA",
    "HeadersFrame": "HEADERS",
    "PriorityFrame": "PRIORITY",
    "RstStreamFrame": "RST_STREAM",
    "SettingsFrame": "SETTINGS",
    "PushPromiseFrame": "PUSH_PROMISE",
    "PingFrame": "PING",
    "GoAwayFrame": "GOAWAY",
    "WindowUpdateFrame": "WINDOW_UPDATE",
    "ContinuationFrame": "CONTINUATION",
}
_STREAM_ID_RE = re.compile(r"Stream ID must be (?:non-)?zero for (\w+)")


def describe_error(exc: ProtocolError) -> tuple[int, str]:
    """The GOAWAY error code and nginx's log text for a protocol error h2 raised."""
    text = str(exc)
    low = text.lower()
    if "preamble" in low:
        return ErrorCodes.PROTOCOL_ERROR, "invalid connection preface"
    if isinstance(exc, FlowControlError):
        if "exceed" in low or "past" in low:
            return (
                ErrorCodes.FLOW_CONTROL_ERROR,
                "client violated connection flow control: "
                "received WINDOW_UPDATE frame with window increment not allowed",
            )
        return ErrorCodes.FLOW_CONTROL_ERROR, "client violated connection flow control"
    if isinstance(exc, DenialOfServiceError) or "too many continuation" in low:
        return ErrorCodes.ENHANCE_YOUR_CALM, "client sent too large header"
    if isinstance(exc, InvalidSettingsValueError):
        return int(exc.error_code), "client sent SETTINGS frame with incorrect value"
    if isinstance(exc, FrameTooLargeError):
        return ErrorCodes.FRAME_SIZE_ERROR, "client sent too large frame"
    if isinstance(exc, FrameDataMissingError):
        return ErrorCodes.FRAME_SIZE_ERROR, "client sent frame with incorrect length"
    m = _STREAM_ID_RE.search(text)
    if m is not None:
        name = _FRAME_NAMES.get(m.group(1), m.group(1))
        return ErrorCodes.PROTOCOL_ERROR, f"client sent {name} frame with incorrect identifier"
    if "decoding header block" in low or "hpack" in low:
        return ErrorCodes.COMPRESSION_ERROR, "client sent invalid encoded header field"
    if "during header block" in low:
        return (
            ErrorCodes.PROTOCOL_ERROR,
            "client sent inappropriate frame while CONTINUATION was expected",
        )
    if "continuation" in low:
        return ErrorCodes.PROTOCOL_ERROR, "client sent unexpected CONTINUATION frame"
    if "push" in low:
        return ErrorCodes.PROTOCOL_ERROR, "client sent PUSH_PROMISE frame"
    if isinstance(exc, StreamIDTooLowError):
        return (
            ErrorCodes.PROTOCOL_ERROR,
            f"client sent HEADERS frame with incorrect identifier {exc.stream_id}, "
            f"the last was {exc.max_stream_id}",
        )
    if isinstance(exc, NoSuchStreamError):
        return ErrorCodes.PROTOCOL_ERROR, f"client sent frame for idle stream {exc.stream_id}"
    if isinstance(exc, StreamClosedError):
        return ErrorCodes.STREAM_CLOSED, f"client sent frame for closed stream {exc.stream_id}"
    code = int(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
    return code, f"client sent invalid HTTP/2 frames ({text})"


# -- entry points ------------------------------------------------------------------------------


def upgrade(conn: HttpConnection, data: bytes = b"") -> H2Connection:
    """Hand `conn`'s transport to a new H2Connection (ALPN "h2", or the h2c preface in
    `data`). Call once the connection's addresses are known (in or after connection_made);
    `conn` gets no more callbacks and leaves worker.http_connections."""
    cancel = getattr(conn, "_cancel_timer", None)
    if cancel is not None:
        cancel()
    from pyngx.http import connection as http1

    h2c = H2Connection(conn)
    conn.state = http1._CLOSED  # nothing more happens on the HTTP/1 side
    conn.buf = b""
    worker = conn.worker
    worker.http_connections.discard(conn)
    worker.http_connections.add(h2c)
    conn.transport.set_protocol(h2c)
    h2c.start(data)
    return h2c


def try_prior_knowledge(conn: HttpConnection, data: bytes) -> bool:
    """HttpConnection's first bytes: on an HTTP/2 address, the cleartext preface switches the
    connection to HTTP/2 (True: taken over, or waiting for the rest of the preface)."""
    if not (conn.port.http2 or getattr(conn.default.conf, "http2", False)):
        return False
    n = min(len(data), len(PREFACE))
    if data[:n] != PREFACE[:n]:
        return False
    if n < len(PREFACE):
        conn.buf = data  # a prefix of the preface: wait for the rest
        return True
    upgrade(conn, data)
    return True


__all__ = ["H2Connection", "PREFACE", "describe_error", "try_prior_knowledge", "upgrade"]
