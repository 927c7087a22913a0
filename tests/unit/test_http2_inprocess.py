"""HTTP/2 streams end to end in one process (tests/unit/h2_inprocess.py): request bodies
through read_body, flow control both ways, client resets (499), limits, timeouts, GOAWAY."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import h2.events
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PriorityFrame

from pyngx.http.h2 import H2Connection
from pyngx.http.request import DONE

from .h2_inprocess import Session, echo, load, never, pattern, read_logs, set_content, streamer

SERVER = """
server {
    listen 127.0.0.1:8080 http2;
    %s
    location /echo { }
    location /never { }
    location /stream { }
    location /h { }
}
"""


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def setup(tmp_path: Path, extra: str = "", stream_size: int = 300_000) -> Any:
    cycle = load(tmp_path, SERVER % extra)
    set_content(cycle, "/echo", echo)
    set_content(cycle, "/never", never)
    set_content(cycle, "/stream", streamer(stream_size))
    (tmp_path / "html" / "a.txt").write_text("hello\n")
    return cycle


def test_request_bodies_reach_read_body(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        assert isinstance(s.server, H2Connection)
        r = await s.get("/echo", method="POST", body=b"abc")
        assert (r.status, bytes(r.body)) == (200, b"abc")
        # Larger than the 64k preread window: windows are handed back as the body is read.
        big = pattern(1_000_000)
        r = await s.get("/echo", method="POST", body=big, headers=[("content-length", "1000000")])
        assert r.status == 200 and bytes(r.body) == big
        # No Content-Length: a body of unknown length ("chunked" to nginx).
        r = await s.get("/echo", method="POST", body=b"x" * 70_000)
        assert r.status == 200 and len(r.body) == 70_000
        r = await s.get("/echo", method="POST")
        assert (r.status, bytes(r.body)) == (200, b"")

    run(main())
    access, _ = read_logs(tmp_path)
    assert '"POST /echo HTTP/2.0" 200 1000000' in access


def test_too_large_bodies_are_413(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "client_max_body_size 1k;")

    async def main() -> None:
        s = Session(cycle)
        r = await s.get("/echo", method="POST", body=b"x" * 5000)
        assert r.status == 413
        # Declared too large: answered at the location, the unread body reset NO_ERROR.
        sid = s.request("/echo", method="POST", headers=[("content-length", "5000")], end=False)
        rr = s.responses[sid]
        await s.run(lambda: rr.ended)
        assert rr.status == 413
        await s.run(lambda: rr.reset is not None)
        assert rr.reset == ErrorCodes.NO_ERROR
        # The connection goes on.
        r = await s.get("/a.txt")
        assert (r.status, bytes(r.body)) == (200, b"hello\n")

    run(main())
    access, error = read_logs(tmp_path)
    assert "client intended to send too large chunked body: 5000 bytes" in error
    assert "client intended to send too large body: 5000 bytes" in error
    assert access.count('"POST /echo HTTP/2.0" 413') == 2


def test_client_cancel_is_499(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        sid = s.request("/never")
        await asyncio.sleep(0.02)
        s.client.reset_stream(sid, ErrorCodes.CANCEL)
        s.send()
        await asyncio.sleep(0.02)
        assert s.server.processing == 0
        r = await s.get("/a.txt")
        assert r.status == 200

    run(main())
    access, error = read_logs(tmp_path)
    assert '"GET /never HTTP/2.0" 499 0' in access
    assert "client canceled stream 1, client: 127.0.0.1" in error


def test_connection_lost_mid_request_is_499(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        s.request("/never")
        await asyncio.sleep(0.02)
        s.server.connection_lost(None)
        assert s.worker.http_connections == set()

    run(main())
    access, error = read_logs(tmp_path)
    assert '"GET /never HTTP/2.0" 499' in access
    assert "client prematurely closed connection while processing HTTP/2 connection" in error


def test_concurrent_stream_limit_refuses_streams(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "http2_max_concurrent_streams 2;")

    async def main() -> None:
        s = Session(cycle)
        sids = [s.request("/never") for _ in range(3)]
        await s.run(lambda: s.responses[sids[2]].reset is not None)
        assert s.responses[sids[2]].reset == ErrorCodes.REFUSED_STREAM
        assert s.responses[sids[0]].reset is None
        assert s.server.processing == 2

    run(main())
    _, error = read_logs(tmp_path)
    assert "concurrent streams exceeded 2 while processing HTTP/2 connection" in error


def test_settings_announce_nginx_values(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "http2_max_concurrent_streams 7; http2_body_preread_size 128k;")

    async def main() -> None:
        s = Session(cycle)
        s.receive()
        changed = [e for e in s.events if isinstance(e, h2.events.RemoteSettingsChanged)]
        values = {int(k): v.new_value for k, v in changed[0].changed_settings.items()}
        assert values[3] == 7 and values[4] == 131072
        windows = [e for e in s.events if isinstance(e, h2.events.WindowUpdated)]
        assert windows[0].stream_id == 0 and windows[0].delta == 2**31 - 1 - 65535

    run(main())


def test_flow_control_small_window_and_stalled_reader(tmp_path: Path) -> None:
    cycle = setup(tmp_path, stream_size=300_000)

    async def main() -> None:
        s = Session(cycle, window=1000)
        r = await s.get("/stream")
        assert r.status == 200 and bytes(r.body) == pattern(300_000)
        # A reader that hands no window back: the handler waits in drain(), nothing is lost.
        s2 = Session(cycle, window=100, auto_ack=False)
        sid = s2.request("/stream")
        await s2.run(lambda: len(s2.responses[sid].body) >= 100)
        await asyncio.sleep(0.05)
        st = s2.server.streams[sid]
        assert st.writing_paused and len(s2.responses[sid].body) == 100
        assert st.pending_size <= 64 * 1024  # one chunk of the handler, not the whole body
        s2.auto_ack = True
        s2.client.acknowledge_received_data(100, sid)
        s2.client.increment_flow_control_window(1_000_000, sid)
        s2.send()
        rr = s2.responses[sid]
        await s2.run(lambda: rr.ended)
        assert bytes(rr.body) == pattern(300_000)

    run(main())


def test_send_timeout_resets_a_blocked_stream(tmp_path: Path) -> None:
    cycle = load(tmp_path, SERVER % "send_timeout 100ms;")

    def slow_stream(r: Any) -> Any:
        async def go() -> int:
            r.status = 200
            r.out.content_length = 100_000
            r.send_head()
            r.send_body(b"x" * 100_000)
            r.conn.set_timer("send", r.loc.send_timeout)
            await r.conn.drain()
            if not r.done:
                r.finish()
            return DONE

        return go()

    set_content(cycle, "/stream", slow_stream)

    async def main() -> None:
        s = Session(cycle, window=10, auto_ack=False)
        sid = s.request("/stream")
        rr = s.responses[sid]
        await s.run(lambda: rr.reset is not None)
        assert rr.reset == ErrorCodes.PROTOCOL_ERROR

    run(main())
    access, error = read_logs(tmp_path)
    assert "client timed out (110: Connection timed out) while sending response to client" in error
    assert '"GET /stream HTTP/2.0" 200 10 ' in access


def test_body_timeout_is_408_and_reset(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "client_body_timeout 100ms;")

    async def main() -> None:
        s = Session(cycle)
        sid = s.request("/echo", method="POST", headers=[("content-length", "10")], end=False)
        s.client.send_data(sid, b"12345")
        s.send()
        rr = s.responses[sid]
        await s.run(lambda: rr.reset is not None)
        assert rr.reset == ErrorCodes.PROTOCOL_ERROR and rr.status == 0

    run(main())
    access, error = read_logs(tmp_path)
    assert "client timed out (110: Connection timed out) while reading client request body" in error
    assert '"POST /echo HTTP/2.0" 408 0' in access


def test_graceful_shutdown_sends_goaway_and_finishes_streams(tmp_path: Path) -> None:
    cycle = setup(tmp_path, stream_size=200_000)

    async def main() -> None:
        s = Session(cycle, window=1000, auto_ack=False)
        sid = s.request("/stream")
        await s.run(lambda: len(s.responses[sid].body) >= 1000)
        s.worker.draining = True
        s.server.close_if_idle()
        await s.run(lambda: s.goaway is not None)
        assert s.goaway is not None
        assert s.goaway.error_code == ErrorCodes.NO_ERROR
        assert s.goaway.last_stream_id == sid
        assert not s.transport.closed
        s.auto_ack = True
        s.client.acknowledge_received_data(1000, sid)
        s.client.increment_flow_control_window(1_000_000, sid)
        s.send()
        rr = s.responses[sid]
        await s.run(lambda: rr.ended)
        assert bytes(rr.body) == pattern(200_000)
        await s.run(lambda: s.transport.closed)

    run(main())


def test_goaway_on_idle_graceful_shutdown(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        await s.get("/a.txt")
        s.worker.draining = True
        s.server.close_if_idle()
        await s.run(lambda: s.goaway is not None and s.transport.closed)
        assert s.goaway is not None and s.goaway.last_stream_id == 1

    run(main())


def test_keepalive_requests_and_timeout(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "keepalive_requests 2; keepalive_timeout 100ms;")

    async def main() -> None:
        s = Session(cycle)
        assert (await s.get("/a.txt")).status == 200
        assert s.goaway is None
        assert (await s.get("/a.txt")).status == 200
        # The second request was the last one: GOAWAY NO_ERROR, then the connection closes.
        await s.run(lambda: s.goaway is not None and s.transport.closed)
        assert s.goaway is not None
        assert (s.goaway.error_code, s.goaway.last_stream_id) == (ErrorCodes.NO_ERROR, 3)
        # Idle: keepalive_timeout closes with GOAWAY NO_ERROR.
        s2 = Session(cycle)
        assert (await s2.get("/a.txt")).status == 200
        await asyncio.sleep(0.2)
        await s2.run(lambda: s2.goaway is not None and s2.transport.closed)
        assert s2.goaway is not None and s2.goaway.error_code == ErrorCodes.NO_ERROR

    run(main())


def test_header_timeout_before_the_first_stream(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "client_header_timeout 100ms;")

    async def main() -> None:
        s = Session(cycle)
        await asyncio.sleep(0.2)
        await s.run(lambda: s.goaway is not None and s.transport.closed)
        assert s.goaway is not None and s.goaway.error_code == ErrorCodes.PROTOCOL_ERROR

    run(main())
    _, error = read_logs(tmp_path)
    assert (
        "client timed out (110: Connection timed out) while processing HTTP/2 connection" in error
    )


def test_response_fields_are_lower_case_without_hop_by_hop(tmp_path: Path) -> None:
    cycle = setup(tmp_path, "add_header X-Added yes;")

    def handler(r: Any) -> int:
        r.out.headers.append(("X-Custom", "1"))
        r.out.headers.append(("Connection", "close"))
        r.out.headers.append(("Transfer-Encoding", "chunked"))
        r.out.content_type = "text/plain"
        r.send_response(200, b"ok")
        return DONE

    set_content(cycle, "/h", handler)

    async def main() -> None:
        s = Session(cycle)
        r = await s.get("/h")
        names = [n for n, _ in r.headers]
        assert names == [
            b":status",
            b"server",
            b"date",
            b"content-type",
            b"content-length",
            b"x-custom",
            b"x-added",
        ]
        assert bytes(r.body) == b"ok"
        r = await s.get("/a.txt", method="HEAD")
        assert r.status == 200 and r.header(b"content-length") == b"6" and r.body == b""
        # HEAD: the HEADERS frame ends the stream, no DATA frame follows.
        data_events = [
            e for e in s.events if isinstance(e, h2.events.DataReceived) and e.stream_id == 3
        ]
        assert data_events == []

    run(main())


def test_variables_and_log_lines(tmp_path: Path) -> None:
    cycle = load(
        tmp_path,
        """
        log_format h2 '$http2|$server_protocol|$request|$http_cookie|$host';
        server {
            listen 127.0.0.1:8080 http2;
            access_log TMP/logs/h2.log h2;
        }
        """.replace("TMP", str(tmp_path)),
    )
    (tmp_path / "html" / "a.txt").write_text("hello\n")

    async def main() -> None:
        s = Session(cycle)
        r = await s.get("/a.txt?x=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        assert r.status == 200

    run(main())
    line = (tmp_path / "logs" / "h2.log").read_text().strip()
    assert line == "h2c|HTTP/2.0|GET /a.txt?x=1 HTTP/2.0|a=1; b=2|localhost"


def test_virtual_server_by_authority(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.txt").write_text("from b\n")
    cycle = load(
        tmp_path,
        f"""
        server {{ listen 127.0.0.1:8080 http2; server_name a; }}
        server {{ listen 127.0.0.1:8080; server_name b; root {tmp_path}/b; }}
        """,
    )
    (tmp_path / "html" / "a.txt").write_text("from a\n")

    async def main() -> None:
        s = Session(cycle)
        r = await s.get("/a.txt")  # :authority localhost: the default server
        assert bytes(r.body) == b"from a\n"
        r = await s.get("/a.txt", authority="B:8080")
        assert bytes(r.body) == b"from b\n"

    run(main())


def test_bad_head_is_400_and_444_resets(tmp_path: Path) -> None:
    cycle = setup(tmp_path)
    set_content(cycle, "/h", lambda r: 444)

    async def main() -> None:
        s = Session(cycle)
        r = await s.get("/a.txt", headers=[("Bad", "1")])
        assert r.status == 400 and b"400 Bad Request" in r.body
        r = await s.get("/h")
        assert r.reset == ErrorCodes.INTERNAL_ERROR
        assert (await s.get("/a.txt")).status == 200

    run(main())
    access, error = read_logs(tmp_path)
    assert 'client sent invalid header name: "Bad" while reading client request headers, ' in error
    assert '"GET /h HTTP/2.0" 444 0' in access


def test_trailers_and_priority_flood_end_the_connection(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        sid = s.request("/echo", method="POST", body=b"abc", end=False)
        s.client.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
        s.send()
        await s.run(lambda: s.goaway is not None)
        assert s.goaway is not None and s.goaway.error_code == ErrorCodes.PROTOCOL_ERROR

        s2 = Session(cycle)
        frames = b""
        for i in range(200):
            f = PriorityFrame(2 * i + 1)
            f.depends_on = 0
            f.stream_weight = 15
            frames += f.serialize()
        s2.server.data_received(frames)
        await s2.run(lambda: s2.goaway is not None)
        assert s2.goaway is not None and s2.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM

    run(main())
    _, error = read_logs(tmp_path)
    assert "client sent HEADERS frame with incorrect identifier 1, the last was 1" in error
    assert "client sent too many PRIORITY frames while processing HTTP/2 connection" in error


def test_rapid_reset_is_bounded(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        s.receive()
        for _ in range(300):
            sid = s.client.get_next_available_stream_id()
            s.client.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/never"),
                    (b":authority", b"a"),
                ],
                end_stream=True,
            )
            s.client.reset_stream(sid, ErrorCodes.CANCEL)
        s.send()  # one read: 300 new streams
        assert s.server.processing == 0
        assert (await s.get("/a.txt")).status == 200

    run(main())
    _, error = read_logs(tmp_path)
    assert "client sent too many streams at once" in error


def test_output_the_client_does_not_read_stops_reading(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    async def main() -> None:
        s = Session(cycle)
        s.transport.buffered = 2 * 1024 * 1024
        s.client.ping(b"12345678")
        s.send()
        assert not s.transport.reading
        s.transport.buffered = 0
        s.server.pause_writing()
        assert s.server.writing_paused
        s.server.resume_writing()
        assert s.transport.reading

    run(main())


@pytest.mark.parametrize("preread", ["0", "1k"])
def test_small_preread_refuses_early_bodies(tmp_path: Path, preread: str) -> None:
    cycle = setup(tmp_path, f"http2_body_preread_size {preread};")

    async def main() -> None:
        s = Session(cycle)
        sid = s.request("/echo", method="POST", body=b"x" * 100, end=False)
        rr = s.responses[sid]
        await s.run(lambda: rr.reset is not None)
        assert rr.reset == ErrorCodes.REFUSED_STREAM
        # After our SETTINGS are acknowledged, bodies are fine (windows as announced).
        r = await s.get("/echo", method="POST", body=b"y" * 3000)
        assert r.status == 200 and len(r.body) == 3000

    run(main())
    _, error = read_logs(tmp_path)
    assert "client sent stream with data before settings were acknowledged" in error


def test_client_goaway_is_ignored_as_nginx_does(tmp_path: Path) -> None:
    cycle = setup(tmp_path, stream_size=200_000)

    async def main() -> None:
        s = Session(cycle, window=1000, auto_ack=False)
        sid = s.request("/stream")
        await s.run(lambda: len(s.responses[sid].body) >= 1000)
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 0
        s.server.data_received(goaway.serialize())  # h2 never sees it: the stream goes on
        s.auto_ack = True
        s.client.acknowledge_received_data(1000, sid)
        s.client.increment_flow_control_window(1_000_000, sid)
        s.send()
        rr = s.responses[sid]
        await s.run(lambda: rr.ended)
        assert bytes(rr.body) == pattern(200_000)
        assert not s.transport.closed and s.goaway is None

    run(main())


def test_bytes_one_at_a_time(tmp_path: Path) -> None:
    cycle = setup(tmp_path)

    class Trickle(Session):
        def send(self) -> None:
            data = self.client.data_to_send()
            for i in range(len(data)):
                if self.transport.closed:
                    return
                self.transport.protocol.data_received(data[i : i + 1])

    async def main() -> None:
        s = Trickle(cycle)
        r = await s.get("/a.txt", headers=[("cookie", "a=1")])
        assert (r.status, bytes(r.body)) == (200, b"hello\n")
        goaway = GoAwayFrame(0)
        s.client._data_to_send += goaway.serialize()  # a client GOAWAY split byte by byte
        r = await s.get("/echo", method="POST", body=b"z" * 5000)
        assert (r.status, len(r.body)) == (200, 5000)
        assert s.server.state == 0

    run(main())


def test_reset_in_the_same_read_as_the_request(tmp_path: Path) -> None:
    """h2 takes in the RST_STREAM before we see the request: the response goes nowhere, the
    request is logged as cancelled, and the file it opened is closed."""
    cycle = setup(tmp_path)
    (tmp_path / "html" / "big.bin").write_bytes(b"x" * 1_000_000)

    async def main() -> None:
        s = Session(cycle)
        s.receive()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            sid = s.client.get_next_available_stream_id()
            s.client.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/big.bin"),
                    (b":authority", b"a"),
                ],
                end_stream=True,
            )
            s.client.reset_stream(sid, ErrorCodes.CANCEL)
        s.send()  # one read
        await asyncio.sleep(0.05)
        assert s.server.processing == 0
        assert len(os.listdir("/proc/self/fd")) == fds

    run(main())
    access, error = read_logs(tmp_path)
    assert access.count('"GET /big.bin HTTP/2.0" 200 0 ') == 50
    assert error.count("client canceled stream") == 50


def test_on_drain_resumes_a_paused_producer(tmp_path: Path) -> None:
    """The proxy's way: stop while writing_paused, go on when on_drain is called."""
    cycle = setup(tmp_path)
    total = 300_000
    body = pattern(total)
    calls = []

    def producer(r: Any) -> Any:
        sent = [0]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def go() -> None:
            calls.append(sent[0])
            while sent[0] < total and not r.conn.writing_paused and not r.done:
                n = min(20_000, total - sent[0])
                r.send_body(body[sent[0] : sent[0] + n])
                sent[0] += n
            if sent[0] >= total and not r.done:
                r.finish()
                if not done.done():
                    done.set_result(None)

        r.conn.on_drain = go
        r.status = 200
        r.out.content_length = total
        r.send_head()
        go()

        async def wait() -> int:
            await done
            return DONE

        return wait()

    set_content(cycle, "/stream", producer)

    async def main() -> None:
        s = Session(cycle, window=5000)
        r = await s.get("/stream")
        assert r.status == 200 and bytes(r.body) == body

    run(main())
    assert len(calls) > 10  # resumed again and again by window updates
