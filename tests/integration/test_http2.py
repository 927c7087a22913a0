"""HTTP/2 with prior knowledge (h2c) against a real pyngx: curl and an `h2` client over raw
sockets. Many streams at once, large downloads through small windows, request bodies
refused or discarded, HEAD and error pages, keepalive idle close, graceful GOAWAY, client
resets, and hostile frames — each on its own connection while a healthy one goes on."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conftest import ServerFactory
from tests.h2util import PREFACE, H2Client
from tests.harness import ServerProcess, free_port

BIG = 2_000_000


def _curl_http2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    out = subprocess.run([curl, "-V"], capture_output=True, text=True, timeout=10).stdout
    return "HTTP2" in out


requires_curl_h2 = pytest.mark.skipif(not _curl_http2(), reason="curl without HTTP/2")


def _site(tmp_path: Path) -> Path:
    html = tmp_path / "html"
    (html / "dir").mkdir(parents=True, exist_ok=True)
    (html / "index.html").write_text("<h1>index</h1>\n")
    (html / "a.txt").write_text("hello\n")
    (html / "dir" / "index.html").write_text("dir index\n")
    (html / "404.html").write_text("custom not found\n")
    rng = random.Random(7)
    (html / "big.bin").write_bytes(rng.randbytes(BIG))
    for i in range(20):
        (html / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    return html


def _start(
    pyngx: ServerFactory, tmp_path: Path, server_extra: str = "", http_extra: str = ""
) -> tuple[ServerProcess, int]:
    html = _site(tmp_path)
    port = free_port()
    srv = pyngx(
        f"""
http {{
    access_log logs/access.log;
    {http_extra}
    server {{
        listen 127.0.0.1:{port} http2;
        root {html};
        {server_extra}
        location /limited {{ client_max_body_size 1k; }}
        location /missing {{ error_page 404 /404.html; }}
    }}
}}
"""
    )
    return srv, port


def _curl(port: int, path: str, *args: str) -> tuple[int, dict[str, str], bytes, str]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "-",
            "--max-time",
            "10",
            *args,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        timeout=20,
    )
    raw = out.stdout
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    status = int(status_line.split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name] = value
    return status, headers, body, status_line


def _healthy(port: int) -> None:
    with H2Client(port) as c:
        r = c.get("/a.txt")
        assert (r.status, bytes(r.body)) == (200, b"hello\n")


def _no_alerts(srv: ServerProcess) -> None:
    text = srv.error_log_text()
    assert not re.search(r"\[(alert|crit|emerg)\]", text), text
    assert srv.running()


@requires_curl_h2
def test_curl_prior_knowledge(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    status, headers, body, line = _curl(port, "/")
    assert line.startswith("HTTP/2 200")
    assert body == b"<h1>index</h1>\n"
    assert headers["content-type"] == "text/html"
    assert headers["content-length"] == "15"
    assert "connection" not in headers and "keep-alive" not in headers
    assert all(name == name.lower() for name in headers)
    status, headers, body, _ = _curl(port, "/a.txt", "-I")
    assert (status, headers["content-length"], body.strip()) == (200, "6", b"")
    status, headers, body, _ = _curl(port, "/dir")
    assert status == 301
    assert headers["location"] == f"http://127.0.0.1:{port}/dir/"
    status, _, body, _ = _curl(port, "/dir/")
    assert (status, body) == (200, b"dir index\n")
    status, _, body, _ = _curl(port, "/nothing")
    assert status == 404 and b"<title>404 Not Found</title>" in body
    status, _, body, _ = _curl(port, "/missing")
    assert (status, body) == (404, b"custom not found\n")
    # HTTP/1.1 still works on the same address (nginx >= 1.25.1 looks for the preface).
    out = subprocess.run(
        ["curl", "-sS", "--http1.1", f"http://127.0.0.1:{port}/a.txt"],
        capture_output=True,
        timeout=10,
    )
    assert out.stdout == b"hello\n"
    access = (srv.prefix / "logs" / "access.log").read_text()
    assert '"GET / HTTP/2.0" 200 15 "-" "curl/' in access
    assert '"HEAD /a.txt HTTP/2.0" 200 0' in access
    assert '"GET /a.txt HTTP/1.1" 200 6' in access
    assert "deprecated" in srv.error_log_text() or "deprecated" in srv.stderr_text()
    _no_alerts(srv)


@requires_curl_h2
def test_http2_directive_and_plain_ports(pyngx: ServerFactory, tmp_path: Path) -> None:
    html = _site(tmp_path)
    on, off = free_port(), free_port()
    srv = pyngx(
        f"""
http {{
    access_log off;
    server {{ listen 127.0.0.1:{on}; http2 on; root {html}; }}
    server {{ listen 127.0.0.1:{off}; root {html}; }}
}}
"""
    )
    status, _, body, line = _curl(on, "/a.txt")
    assert line.startswith("HTTP/2 200") and body == b"hello\n"
    # Without http2 the preface is only an odd HTTP/1 request: no SETTINGS frame comes back.
    with socket.create_connection(("127.0.0.1", off), timeout=5) as s:
        s.sendall(PREFACE)
        data = s.recv(100)
        assert data.startswith(b"HTTP/1.1 ")
    _no_alerts(srv)


def test_many_concurrent_streams(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    html = tmp_path / "html"
    with H2Client(port) as c:
        sids = {c.request(f"/f{i % 20}.txt"): i % 20 for i in range(100)}
        c.pump(lambda: all(c.responses[s].done for s in sids))
        for sid, i in sids.items():
            r = c.responses[sid]
            assert r.status == 200 and bytes(r.body) == (html / f"f{i}.txt").read_bytes()
    access = (srv.prefix / "logs" / "access.log").read_text()
    assert access.count('HTTP/2.0" 200') == 100
    _no_alerts(srv)


def test_large_downloads_through_small_windows(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    want = hashlib.sha256((tmp_path / "html" / "big.bin").read_bytes()).hexdigest()
    with H2Client(port, window=4096, timeout=30) as c:
        sids = [c.request("/big.bin") for _ in range(3)]
        c.pump(lambda: all(c.responses[s].done for s in sids))
        for sid in sids:
            assert hashlib.sha256(c.responses[sid].body).hexdigest() == want
    _no_alerts(srv)


def test_stalled_stream_does_not_hold_others(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    with H2Client(port, window=1000, auto_ack=False) as c:
        stalled = c.request("/big.bin")
        c.pump(lambda: len(c.responses[stalled].body) >= 1000)
        # Same connection: other streams still get their (small) responses.
        for i in range(5):
            sid = c.request(f"/f{i}.txt")
            r = c.responses[sid]
            c.pump(lambda r=r: r.done)  # type: ignore[misc]
            assert r.status == 200
        assert len(c.responses[stalled].body) == 1000
        _healthy(port)
        # The reader goes away mid-response: nginx's "client canceled stream".
        c.client.reset_stream(stalled, ErrorCodes.CANCEL)
        c.send()
    deadline = time.monotonic() + 5
    while "client canceled stream 1" not in srv.error_log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client canceled stream 1 while sending response to client" in srv.error_log_text()
    _no_alerts(srv)


def test_request_bodies_refused_and_discarded(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    with H2Client(port) as c:
        r = c.get(
            "/limited/x", method="POST", body=b"x" * 5000, headers=[("content-length", "5000")]
        )
        assert r.status == 413
        # A body nobody reads (static files take no POST): answered, the rest reset NO_ERROR,
        # the connection window handed back; many of them in a row.
        for _ in range(30):
            sid = c.request("/a.txt", method="POST", body=b"y" * 200_000)
            r = c.responses[sid]
            c.pump(lambda r=r: r.ended and (r.reset is not None or c._unsent is None))  # type: ignore[misc]
            assert r.status == 405
        r = c.get("/a.txt")
        assert (r.status, bytes(r.body)) == (200, b"hello\n")
    access = (srv.prefix / "logs" / "access.log").read_text()
    assert '"POST /limited/x HTTP/2.0" 413' in access
    assert "client intended to send too large body: 5000 bytes" in srv.error_log_text()
    _no_alerts(srv)


def test_keepalive_timeout_closes_idle_connections(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path, server_extra="keepalive_timeout 1s;")
    with H2Client(port) as c:
        assert c.get("/a.txt").status == 200
        start = time.monotonic()
        c.wait_closed(timeout=5)
        assert 0.8 < time.monotonic() - start < 3
        assert c.goaway is not None and c.goaway.error_code == ErrorCodes.NO_ERROR
        assert c.goaway.last_stream_id == 1
    _no_alerts(srv)


def test_stream_limit(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path, server_extra="http2_max_concurrent_streams 4;")
    with H2Client(port, window=1, auto_ack=False) as c:
        # A client that does not wait for the announced limit: the extra streams are refused.
        sids = [c.request("/big.bin") for _ in range(10)]
        c.pump(lambda: sum(c.responses[s].reset is not None for s in sids) == 6)
        assert [c.responses[s].reset for s in sids[4:]] == [ErrorCodes.REFUSED_STREAM] * 6
        assert all(c.responses[s].reset is None for s in sids[:4])
    assert "concurrent streams exceeded 4" in srv.error_log_text()
    _no_alerts(srv)


def test_graceful_shutdown_goaway(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    want = (tmp_path / "html" / "big.bin").read_bytes()
    with H2Client(port, window=1000, auto_ack=False, timeout=15) as c:
        sid = c.request("/big.bin")
        r = c.responses[sid]
        c.pump(lambda: len(r.body) >= 1000)
        srv.signal(signal.SIGQUIT)
        c.pump(lambda: c.goaway is not None)
        assert c.goaway is not None
        assert (c.goaway.error_code, c.goaway.last_stream_id) == (ErrorCodes.NO_ERROR, sid)
        c.auto_ack = True
        c.client.acknowledge_received_data(1000, sid)
        c.client.increment_flow_control_window(10_000_000, sid)
        c.send()
        c.pump(lambda: r.done)
        assert bytes(r.body) == want
        c.wait_closed(timeout=5)
    deadline = time.monotonic() + 5
    while srv.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.running()


# -- hostile frames ------------------------------------------------------------------------------


def _frames(*frames: object) -> bytes:
    return b"".join(f.serialize() for f in frames)  # type: ignore[attr-defined]


def _headers_frame(
    sid: int, block: bytes, flags: tuple[str, ...] = ("END_HEADERS", "END_STREAM")
) -> HeadersFrame:
    f = HeadersFrame(sid)
    f.data = block
    f.flags = set(flags)
    return f


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal without indexing, raw strings (lengths < 2**21)."""

    def integer(n: int, prefix: int, first: int) -> bytes:
        limit = (1 << prefix) - 1
        if n < limit:
            return bytes([first | n])
        out = [first | limit]
        n -= limit
        while n >= 128:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    return b"\x00" + integer(len(name), 7, 0) + name + integer(len(value), 7, 0) + value


_REQUEST = (
    _literal(b":method", b"GET")
    + _literal(b":scheme", b"http")
    + _literal(b":path", b"/a.txt")
    + _literal(b":authority", b"a")
)


def _window(sid: int, n: int) -> WindowUpdateFrame:
    f = WindowUpdateFrame(sid)
    f.window_increment = n
    return f


def _continuation_flood() -> bytes:
    first = _headers_frame(1, _REQUEST, ("END_STREAM",))
    rest = []
    for _ in range(200):
        f = ContinuationFrame(1)
        f.data = _literal(b"x-a", b"b" * 50)
        rest.append(f)
    return _frames(first, *rest)


def _ping_frames(n: int) -> bytes:
    one = PingFrame(0)
    one.opaque_data = b"12345678"
    return one.serialize() * n


HOSTILE: list[tuple[str, bytes, int | None]] = [
    ("unknown frame type", bytes.fromhex("000003fa0000000000616263"), None),
    ("window overflow", _frames(_window(0, 2**31 - 1)), ErrorCodes.FLOW_CONTROL_ERROR),
    ("data on stream 0", bytes.fromhex("000003000000000000616263"), ErrorCodes.PROTOCOL_ERROR),
    ("bad hpack", _frames(_headers_frame(1, b"\x7f\x7f")), ErrorCodes.COMPRESSION_ERROR),
    (
        "too large header field",
        _frames(_headers_frame(1, _REQUEST + _literal(b"x-big", b"v" * 9000))),
        ErrorCodes.ENHANCE_YOUR_CALM,
    ),
    ("continuation flood", _continuation_flood(), ErrorCodes.ENHANCE_YOUR_CALM),
    ("frame too large", bytes.fromhex("0040010000000000010000"), ErrorCodes.FRAME_SIZE_ERROR),
    (
        "settings bad length",
        bytes.fromhex("000005040000000000000000000000"),
        ErrorCodes.FRAME_SIZE_ERROR,
    ),
    (
        "unexpected continuation",
        bytes.fromhex("000003090400000001616263"),
        ErrorCodes.PROTOCOL_ERROR,
    ),
    ("even stream id", _frames(_headers_frame(2, _REQUEST)), ErrorCodes.PROTOCOL_ERROR),
]


@pytest.mark.parametrize(("name", "payload", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_frames(
    pyngx: ServerFactory, tmp_path: Path, name: str, payload: bytes, code: int | None
) -> None:
    srv, port = _start(pyngx, tmp_path)
    with H2Client(port) as healthy:
        assert healthy.get("/a.txt").status == 200
        with H2Client(port) as bad:
            bad.raw(payload, observe=code is not None)
            if code is None:
                # Ignored: the same connection serves a request afterwards.
                assert bad.get("/a.txt").status == 200
            else:
                bad.wait_closed(timeout=5)
                assert bad.goaway is not None, name
                assert bad.goaway.error_code == code, name
        assert healthy.get("/f1.txt").status == 200
    _healthy(port)
    _no_alerts(srv)


def test_too_large_header_block(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    block = _REQUEST + b"".join(_literal(b"x-%d" % i, b"v" * 4000) for i in range(10))
    headers = _headers_frame(1, block[:16000], ("END_STREAM",))
    rest = [block[i : i + 16000] for i in range(16000, len(block), 16000)]
    frames = [headers]
    for i, piece in enumerate(rest):
        f = ContinuationFrame(1)
        f.data = piece
        if i == len(rest) - 1:
            f.flags.add("END_HEADERS")
        frames.append(f)
    with H2Client(port) as bad:
        bad.raw(_frames(*frames), observe=True)
        bad.wait_closed(timeout=5)
        assert bad.goaway is not None and bad.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert "client sent too large header while processing HTTP/2 connection" in srv.error_log_text()
    _healthy(port)
    _no_alerts(srv)


def test_random_frames_never_crash(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    rng = random.Random(20240601)
    for _ in range(60):
        kind = rng.randrange(4)
        if kind == 0:
            payload = rng.randbytes(rng.randrange(1, 400))
        elif kind == 1:  # a frame header with a random type, flags, stream and body
            body = rng.randbytes(rng.randrange(0, 64))
            payload = (
                len(body).to_bytes(3, "big")
                + bytes([rng.randrange(12), rng.randrange(256)])
                + rng.randrange(0, 8).to_bytes(4, "big")
                + body
            )
        elif kind == 2:  # a valid request with a flipped bit
            raw = bytearray(_frames(_headers_frame(1, _REQUEST)))
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            payload = bytes(raw)
        else:  # data for streams that do not exist, resets, window updates
            d = DataFrame(rng.randrange(1, 20))
            d.data = rng.randbytes(rng.randrange(0, 100))
            payload = _frames(d, _window(rng.randrange(0, 5), rng.randrange(1, 2**31)))
        with H2Client(port, timeout=3) as bad:
            bad.raw(payload, observe=True)
            try:
                bad.wait_closed(timeout=0.3)
            except TimeoutError:
                pass
    _healthy(port)
    _no_alerts(srv)


def test_ping_flood_from_a_client_that_does_not_read(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    with H2Client(port) as bad:
        bad.sock.settimeout(0.5)
        chunk = _ping_frames(4000)
        sent = 0
        try:
            while sent < 12 * 1024 * 1024:
                bad.sock.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, OSError):
            pass  # pyngx stopped reading, or closed the connection: either bounds it
        _healthy(port)
    _no_alerts(srv)


def test_settings_flood_and_rapid_reset(pyngx: ServerFactory, tmp_path: Path) -> None:
    srv, port = _start(pyngx, tmp_path)
    with H2Client(port) as c:
        c.raw(SettingsFrame(0).serialize() * 2000)
        for _ in range(500):
            sid = c.client.get_next_available_stream_id()
            c.client.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/big.bin"),
                    (b":authority", b"a"),
                ],
                end_stream=True,
            )
            c.client.reset_stream(sid, ErrorCodes.CANCEL)
        c.send()
        try:
            r = c.get("/a.txt")
            assert r.status == 200 or r.reset is not None
        except ConnectionError:
            pass
    _healthy(port)
    _no_alerts(srv)
