"""The http server across process events: reload, graceful stop, hostile neighbours.

A reload (HUP) serves the new configuration to new requests while a keepalive connection of
the old workers finishes cleanly; QUIT lets a download in flight finish; a malformed request
on one connection costs only that connection.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from tests.conftest import ServerFactory
from tests.harness import free_port
from tests.http_client import HttpClient


def _conf(port: int, root: Path, extra: str = "") -> str:
    return f"""
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {extra}
    }}
}}
"""


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "html"
    root.mkdir()
    (root / "a.txt").write_text("A\n")
    (root / "b.txt").write_text("B\n")
    (root / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    return root


def test_reload_serves_new_config_and_keeps_old_keepalive(
    tmp_path: Path, pyngx: ServerFactory
) -> None:
    root = _site(tmp_path)
    port = free_port()
    srv = pyngx(_conf(port, root, "location = /x { error_page 404 /a.txt; }"))
    old = HttpClient("127.0.0.1", port)
    assert old.request("GET", "/x").body == b"A\n"
    mark = srv.log_mark()
    srv.write_conf(srv.conf_path.read_text().replace("/a.txt", "/b.txt"))
    srv.signal(signal.SIGHUP)
    srv.wait_for_log(r"start worker process", since=mark)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with HttpClient("127.0.0.1", port) as c:
            if c.request("GET", "/x").body == b"B\n":
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the new configuration was not served")
    # The old worker's keepalive connection is closed after the reload, never mid-response.
    try:
        r = old.request("GET", "/x")
        assert r.body in (b"A\n", b"B\n")
    except ConnectionError:
        pass
    old.close()


def test_graceful_stop_finishes_download(tmp_path: Path, pyngx: ServerFactory) -> None:
    root = _site(tmp_path)
    port = free_port()
    srv = pyngx(_conf(port, root))
    want = (root / "big.bin").read_bytes()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        srv.signal(signal.SIGQUIT)
        data = first
        while chunk := s.recv(1 << 20):
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body == want
    assert srv.proc is not None
    srv.proc.wait(10)


def test_malformed_request_harms_no_neighbour(tmp_path: Path, pyngx: ServerFactory) -> None:
    root = _site(tmp_path)
    port = free_port()
    pyngx(_conf(port, root))
    want = (root / "big.bin").read_bytes()
    result: list[bytes] = []

    def download() -> None:
        with HttpClient("127.0.0.1", port, timeout=20) as c:
            for _ in range(3):
                result.append(c.request("GET", "/big.bin").body)

    t = threading.Thread(target=download)
    t.start()
    garbage = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 20000 + b"\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        os.urandom(4096),
    ]
    for _ in range(3):
        for g in garbage:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(g)
                # Requests nginx keeps waiting on (an incomplete head) are left after 1 s.
                s.settimeout(1)
                try:
                    while s.recv(65536):
                        pass
                except (ConnectionResetError, TimeoutError):
                    pass
    t.join(30)
    assert len(result) == 3 and all(b == want for b in result)
    with HttpClient("127.0.0.1", port) as c:
        assert c.request("GET", "/a.txt").status == 200
