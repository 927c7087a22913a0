"""limit_req, limit_conn and stub_status in http: real pyngx processes and real clients.

Clients are told apart by their loopback source address. Rates are chosen so that the outcome
is a matter of counts (1r/m drains nothing measurable during a test; 10r/s delays requests by
a tenth of a second each); timings are only checked with loose lower bounds.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_access_helpers import (
    A,
    B,
    big_file,
    get,
    slow_download,
    status,
    stub_numbers,
    wait_for,
)


def _server(
    pyngx: ServerFactory, tmp_path: Path, http: str, server: str, **kwargs: object
) -> tuple[int, ServerProcess]:
    port = free_port()
    root = tmp_path / "html"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    srv = pyngx(
        "http {\n"
        f"  access_log {tmp_path}/access.log;\n"
        f"{http}\n"
        f"  server {{ listen 127.0.0.1:{port}; server_name localhost; root {root};\n"
        f"{server}\n"
        "  }\n"
        "}\n",
        **kwargs,  # type: ignore[arg-type]
    )
    return port, srv


def _parallel(port: int, n: int, path: str = "/", source: str = A) -> list[tuple[int, str]]:
    """n requests at once (own connections): [(status, X-Limit header)], in finishing order."""
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one() -> None:
        code, headers, _ = get(port, path, source=source)
        with lock:
            results.append((code, headers.get("x-limit", "")))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(results) == n
    return results


# -- limit_req ------------------------------------------------------------------------------


def _about(n: int) -> str:
    """A regex for nginx's excess n.000 as logged, allowing for what 1r/m drains while a
    loaded machine runs the test (one thousandth per 62.5 ms)."""
    return rf"(?:{n}\.000|{n - 1}\.9\d\d)"


ZONE_1M = "limit_req_zone $binary_remote_addr zone=one:1m rate=1r/m;"


def test_burst_nodelay_counts_per_client(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        ZONE_1M,
        "limit_req zone=one burst=3 nodelay;\n add_header X-Limit $limit_req_status always;",
    )
    got = [get(port, "/", source=A) for _ in range(6)]
    assert [(c, h["x-limit"]) for c, h, _ in got] == [(200, "PASSED")] * 4 + [(503, "REJECTED")] * 2
    # Another client has a bucket of its own.
    assert [status(port, "/", source=B) for _ in range(5)] == [200] * 4 + [503]
    line = srv.wait_for_log("limiting requests")
    assert re.search(
        rf'\[error\] \d+#\d+: \*\d+ limiting requests, excess: {_about(4)} by zone "one", '
        r'client: 127\.0\.0\.23, server: localhost, request: "GET / HTTP/1\.1"',
        line,
    ), line


def test_status_and_log_level(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        ZONE_1M,
        "limit_req zone=one;\n limit_req_status 429;\n limit_req_log_level notice;",
    )
    assert [status(port) for _ in range(3)] == [200, 429, 429]
    line = srv.wait_for_log("limiting requests")
    assert re.search(rf"\[notice\] .* limiting requests, excess: {_about(1)} by zone", line)


def test_state_is_shared_by_all_workers(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        ZONE_1M + "\n log_format w '$pid $status';",
        f"limit_req zone=one burst=4 nodelay;\n access_log {tmp_path}/w.log w;",
        workers=3,
    )
    codes = [status(port) for _ in range(24)]  # a new connection each: any worker takes it
    assert codes == [200] * 5 + [503] * 19
    pids = {line.split()[0] for line in (tmp_path / "w.log").read_text().splitlines()}
    assert pids  # (which workers served them is up to the kernel)


def test_delayed_requests_wait_and_go_through(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        "limit_req_zone $binary_remote_addr zone=fast:1m rate=2r/s;",
        "limit_req zone=fast burst=5;\n add_header X-Limit $limit_req_status always;",
    )
    start = time.monotonic()
    results = _parallel(port, 4)
    elapsed = time.monotonic() - start
    assert sorted(results) == [(200, "DELAYED")] * 3 + [(200, "PASSED")]
    # Excess 1000, 2000, 3000 at 2r/s: waits of 0.5, 1 and 1.5 s, at once (the loop was not
    # held by any of them).
    assert 1.2 <= elapsed < 10
    line = srv.wait_for_log("delaying request")
    assert re.search(r'\[warn\] .* delaying request, excess: \d\.\d{3}, by zone "fast"', line)


def test_delay_threshold(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(
        pyngx,
        tmp_path,
        "limit_req_zone $binary_remote_addr zone=fast:1m rate=2r/s;",
        "limit_req zone=fast burst=5 delay=2;\n add_header X-Limit $limit_req_status always;",
    )
    results = _parallel(port, 4)
    assert sorted(results) == [(200, "DELAYED")] + [(200, "PASSED")] * 3


def test_dry_run(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        ZONE_1M,
        "limit_req zone=one burst=1;\n limit_req_dry_run on;\n"
        " add_header X-Limit $limit_req_status always;",
    )
    got = [get(port)[1]["x-limit"] for _ in range(3)]
    assert got == ["PASSED", "DELAYED_DRY_RUN", "REJECTED_DRY_RUN"]
    line = srv.wait_for_log("limiting requests, dry run")
    assert re.search(rf"limiting requests, dry run, excess: {_about(2)} by zone", line)


def test_several_zones_in_one_location(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(
        pyngx,
        tmp_path,
        ZONE_1M + "\n limit_req_zone $server_name zone=all:1m rate=1r/m;",
        "limit_req zone=one burst=5 nodelay;\n limit_req zone=all burst=2 nodelay;",
    )
    # The per-server zone allows 3 in all, whoever sends them; the per-client one 6 each.
    assert [status(port, "/", source=s) for s in (A, B, A, B)] == [200, 200, 200, 503]


def test_client_leaving_while_delayed(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        "limit_req_zone $binary_remote_addr zone=s:1m rate=1r/s;",
        "limit_req zone=s burst=5;",
    )
    assert status(port) == 200
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(A, 0))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # delayed by about a second
    time.sleep(0.2)
    s.close()
    time.sleep(1.2)  # the delay has passed: the request must not be answered or crash
    assert status(port, "/", source=B) == 200
    wait_for(lambda: " 499 " in (tmp_path / "access.log").read_text(), what="499 logged")
    assert "request failed" not in srv.error_log_text()


def test_error_page_after_rejection_is_not_limited_again(
    pyngx: ServerFactory, tmp_path: Path
) -> None:
    port, _ = _server(
        pyngx, tmp_path, ZONE_1M, "location / { limit_req zone=one; error_page 503 /index.html; }"
    )
    assert status(port) == 200
    # Rejected, then redirected to /index.html in the same location: limit_req does not
    # check the request again (nginx's r->main->limit_req_status), so the page is served.
    code, _, body = get(port)
    assert (code, body) == (503, b"hello\n")


# -- limit_conn -----------------------------------------------------------------------------


def test_limit_conn_counts_requests_in_progress(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        "limit_conn_zone $binary_remote_addr zone=c:1m;",
        "limit_conn c 1;\n add_header X-Limit $limit_conn_status always;",
    )
    big_file(tmp_path / "html")
    slow = slow_download(port, "/big.bin", source=A)
    try:
        code, headers, _ = get(port, "/", source=A)
        assert (code, headers["x-limit"]) == (503, "REJECTED")
        code, headers, _ = get(port, "/", source=B)
        assert (code, headers["x-limit"]) == (200, "PASSED")
        line = srv.wait_for_log("limiting connections")
        assert re.search(
            r'\[error\] \d+#\d+: \*\d+ limiting connections by zone "c", client: 127\.0\.0\.23,',
            line,
        ), line
    finally:
        slow.close()
    # The slow request ends when its client goes: its count is given back.
    wait_for(lambda: status(port, "/", source=A) == 200, what="count released")


def test_limit_conn_status_dry_run_and_workers(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        "limit_conn_zone $binary_remote_addr zone=c:1m;",
        "limit_conn c 1;\n limit_conn_status 429;\n limit_conn_log_level info;\n"
        " location /dry/ { limit_conn c 1; limit_conn_dry_run on;"
        " add_header X-Limit $limit_conn_status always; }",
        workers=2,
    )
    big_file(tmp_path / "html")
    (tmp_path / "html" / "dry").mkdir()
    (tmp_path / "html" / "dry" / "index.html").write_text("dry\n")
    slow = slow_download(port, "/big.bin", source=A)
    try:
        # Whichever worker takes them, the count is the same table's.
        assert [status(port, "/", source=A) for _ in range(6)] == [429] * 6
        code, headers, _ = get(port, "/dry/", source=A)
        assert (code, headers["x-limit"]) == (200, "REJECTED_DRY_RUN")
        assert "[info]" in srv.wait_for_log("limiting connections, dry run,")
    finally:
        slow.close()
    wait_for(lambda: status(port, "/", source=A) == 200, what="count released")


def test_limit_req_runs_before_limit_conn(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(
        pyngx,
        tmp_path,
        ZONE_1M + "\n limit_conn_zone $binary_remote_addr zone=c:1m;",
        "limit_req zone=one;\n limit_conn c 5;\n"
        ' add_header X-Limit "$limit_req_status/$limit_conn_status" always;',
    )
    got = [get(port)[1]["x-limit"] for _ in range(2)]
    # Refused by limit_req: limit_conn never saw the request (its status is not set).
    assert got == ["PASSED/PASSED", "REJECTED/"]


# -- stub_status ----------------------------------------------------------------------------


def _stub(port: int) -> dict[str, int]:
    code, headers, body = get(port, "/status")
    assert code == 200 and headers["content-type"] == "text/plain"
    return stub_numbers(body.decode())


def test_stub_status_after_a_known_sequence(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(
        pyngx,
        tmp_path,
        "",
        "location = /status { stub_status; }\n"
        " location /vars { add_header X-C"
        ' "$connections_active $connections_reading $connections_writing $connections_waiting"'
        " always; }",
    )
    # Three requests on one keepalive connection, left open (waiting).
    keep = socket.create_connection(("127.0.0.1", port), timeout=5)
    for _ in range(3):
        keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"hello\n"):
            data += keep.recv(4096)
    # One request on a connection closed after it.
    assert status(port) == 200
    # A connection that sent nothing (waiting), one with half a request head (reading).
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    half = socket.create_connection(("127.0.0.1", port), timeout=5)
    half.sendall(b"GET / HTTP/1.1\r\nHost:")
    try:
        # Each look is a connection and a request of its own: count them.
        pages: list[dict[str, int]] = []

        def settled() -> bool:
            pages.append(_stub(port))
            return pages[-1]["reading"] == 1 and pages[-1]["waiting"] == 2

        wait_for(settled, what="idle and half connections seen")
        k = len(pages)
        assert pages[-1] == {
            "active": 4,  # keep, idle, half and the status request's own
            "accepts": 4 + k,
            "handled": 4 + k,
            "requests": 5 + k,  # 3 on keep, 1, the half one, and the pages
            "reading": 1,
            "writing": 1,
            "waiting": 2,
        }
        code, headers, _ = get(port, "/vars/")
        assert headers["x-c"] == "4 1 1 2"
    finally:
        for s in (keep, idle, half):
            s.close()
    wait_for(lambda: _stub(port)["active"] == 1, what="connections closed")
    last = _stub(port)
    assert (last["reading"], last["writing"], last["waiting"]) == (0, 1, 0)


def test_stub_status_sums_all_workers(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(pyngx, tmp_path, "", "location = /status { stub_status; }", workers=3)
    for _ in range(12):
        assert status(port) == 200
    wait_for(lambda: _stub(port)["active"] == 1, what="connections closed")
    numbers = _stub(port)
    # Each status request counts too; 12 requests before them, all on their own connection.
    assert numbers["accepts"] == numbers["handled"] == numbers["requests"]
    assert numbers["accepts"] >= 13


def test_stub_status_methods_and_head(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(pyngx, tmp_path, "", "location = /status { stub_status on; }")
    assert status(port, "/status", method="POST") == 405
    code, headers, body = get(port, "/status", method="HEAD")
    assert (code, body) == (200, b"")
    assert int(headers["content-length"]) > 80


# -- reloads ----------------------------------------------------------------------------------


def _reload(srv: ServerProcess) -> None:
    mark = srv.log_mark()
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("gracefully shutting down", since=mark)


def test_state_and_counters_outlive_a_reload(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx,
        tmp_path,
        ZONE_1M,
        "location / { limit_req zone=one burst=1 nodelay; }\n location = /status { stub_status; }",
    )
    assert [status(port) for _ in range(2)] == [200, 200]
    _reload(srv)
    # The same zone (name, size, key): the bucket is where it was.
    assert status(port) == 503
    # The status page goes on counting: the 3 requests before and the page's own.
    wait_for(lambda: _stub(port)["accepts"] >= 4, what="counters kept")


def test_reload_changing_a_zones_key_is_refused(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(pyngx, tmp_path, ZONE_1M, "limit_req zone=one burst=1 nodelay;")
    assert status(port) == 200
    srv.write_conf(srv.conf_path.read_text().replace("$binary_remote_addr", "$remote_addr"))
    mark = srv.log_mark()
    srv.signal(signal.SIGHUP)
    srv.wait_for_log(
        r'\[emerg\] \d+#0: limit_req "one" uses the "\$remote_addr" key while previously it'
        r' used the "\$binary_remote_addr" key$',
        since=mark,
    )
    # The running configuration goes on.
    assert [status(port) for _ in range(2)] == [200, 503]
