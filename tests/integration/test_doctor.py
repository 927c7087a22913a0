"""`pyngx doctor` (extension): a backend that greets without waiting for the PROXY header is
reported, one that waits for it and greets after it passes, one that closes on it fails."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.harness import REPO_ROOT, free_port


def _backend(mode: str) -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def run() -> None:
        for _ in range(2):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                if mode == "greets":
                    conn.sendall(b"220 mail ESMTP\r\n")
                    continue
                try:
                    data = conn.recv(200)
                except TimeoutError:
                    continue
                if mode == "proxy" and data.startswith(b"PROXY TCP4 "):
                    conn.sendall(b"* OK IMAP ready\r\n")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


def _doctor(tmp_path: Path, upstream_port: int) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "pyngx.conf"
    conf.write_text(
        f"events {{}}\nstream {{ server {{ listen 127.0.0.1:{free_port()}; "
        f"proxy_pass 127.0.0.1:{upstream_port}; proxy_protocol on; }} }}\n"
    )
    (tmp_path / "logs").mkdir(exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pyngx",
            "doctor",
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "--timeout",
            "0.8",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )


def test_greeting_without_header_is_reported(tmp_path: Path) -> None:
    srv, _ = _backend("greets")
    with srv:
        r = _doctor(tmp_path, srv.getsockname()[1])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "greets without a PROXY header" in r.stdout
    assert '"220 mail ESMTP"' in r.stdout


def test_backend_expecting_header_passes(tmp_path: Path) -> None:
    srv, _ = _backend("proxy")
    with srv:
        r = _doctor(tmp_path, srv.getsockname()[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'accepted the PROXY header and greeted: "* OK IMAP ready"' in r.stdout


def test_backend_closing_on_header_fails(tmp_path: Path) -> None:
    srv, _ = _backend("closes")
    with srv:
        r = _doctor(tmp_path, srv.getsockname()[1])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "closed the connection after the PROXY header" in r.stdout
