"""Self-tests of tests/harness.py: backends, socket helpers, process supervision."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import (
    Backend,
    Nginx,
    ServerProcess,
    client,
    client_unix,
    free_port,
    group_members,
    nginx_conf,
    recv_all,
    recv_exactly,
    recv_until,
    requires_nginx,
    send_all_then_shutdown,
)

BackendFactory = Callable[..., Backend]


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    udp = free_port(kind=socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", udp))


def test_record_banner_source_address(backend: BackendFactory) -> None:
    b = backend(banner=b"220 hi\r\n")
    with client(b.host, b.port, source="127.0.0.42") as c:
        assert recv_until(c, b"\r\n") == b"220 hi\r\n"
        c.sendall(b"one ")
        c.sendall(b"two")
        (conn,) = b.wait_for_connections(1)
        assert conn.wait_for(b"one two") == b"one two"
        assert conn.peer == ("127.0.0.42", c.getsockname()[1])
        assert conn.first_recv_time is not None
        assert conn.first_recv_time >= conn.accepted_time
    conn.wait_closed()
    assert conn.eof and conn.closed and not conn.reset


def test_conn_send_and_close_from_backend(backend: BackendFactory) -> None:
    b = backend()
    with client(b.host, b.port) as c:
        (conn,) = b.wait_for_connections(1)
        conn.send(b"a\r\nb\r\nrest")
        conn.close()
        # recv_until consumes through the pattern and no further.
        assert recv_until(c, b"\r\n") == b"a\r\n"
        assert recv_until(c, b"\r\n") == b"b\r\n"
        assert recv_exactly(c, 2) == b"re"
        assert recv_all(c) == b"st"
    assert b.wait_closed(1)[0].closed


def test_recv_until_pattern_split_across_segments(backend: BackendFactory) -> None:
    b = backend()
    with client(b.host, b.port) as c:
        (conn,) = b.wait_for_connections(1)
        conn.send(b"abc\r")
        time.sleep(0.1)
        conn.send(b"\nxyz")
        assert recv_until(c, b"\r\n") == b"abc\r\n"
        assert recv_exactly(c, 3) == b"xyz"


def test_recv_helpers_time_out_and_see_eof(backend: BackendFactory) -> None:
    b = backend()
    with client(b.host, b.port) as c:
        (conn,) = b.wait_for_connections(1)
        with pytest.raises(TimeoutError):
            recv_until(c, b"\n", timeout=0.2)
        with pytest.raises(TimeoutError):
            recv_all(c, timeout=0.2)
        assert c.gettimeout() == 5.0  # restored
        conn.send(b"par")
        conn.close()
        with pytest.raises(EOFError, match="b'par'"):
            recv_exactly(c, 10)


def test_echo_large_with_flow_control(backend: BackendFactory) -> None:
    """The client writes 8 MiB before reading: the backend must not buffer it all."""
    b = backend(mode="echo", keep_data=False)
    payload = os.urandom(8 * 1024 * 1024)
    with client(b.host, b.port, timeout=20) as c:
        sender = threading.Thread(target=send_all_then_shutdown, args=(c, payload))
        sender.start()
        echoed = recv_all(c, timeout=20)
        sender.join(5)
    assert echoed == payload
    (conn,) = b.wait_closed(1)
    assert conn.nbytes == len(payload)
    assert conn.sha256 == hashlib.sha256(payload).hexdigest()


def test_sink_hash(backend: BackendFactory) -> None:
    b = backend(mode="sink-hash")
    payload = os.urandom(100_000)
    with client(b.host, b.port) as c:
        send_all_then_shutdown(c, payload)
        assert recv_all(c).decode() == hashlib.sha256(payload).hexdigest()
    assert b.wait_closed(1)[0].data == payload


def test_unix_socket_backend(backend: BackendFactory, tmp_path: Path) -> None:
    b = backend(unix_path=tmp_path / "b.sock", mode="echo")
    assert b.address == f"unix:{tmp_path / 'b.sock'}"
    with client_unix(tmp_path / "b.sock") as c:
        c.sendall(b"hello")
        assert recv_exactly(c, 5) == b"hello"
    b.close()
    assert not (tmp_path / "b.sock").exists()


def test_hundreds_of_concurrent_connections(backend: BackendFactory) -> None:
    b = backend(mode="echo")
    socks = [client(b.host, b.port, source=f"127.0.2.{i % 200 + 1}") for i in range(400)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"%d\n" % i)
        for i, s in enumerate(socks):
            assert recv_until(s, b"\n") == b"%d\n" % i
        assert len(b.wait_for_connections(400)) == 400
    finally:
        for s in socks:
            s.close()
    b.wait_closed(400)


def test_backend_close_closes_open_connections(backend: BackendFactory) -> None:
    b = backend()
    c = client(b.host, b.port)
    (conn,) = b.wait_for_connections(1)
    b.close()
    assert conn.closed
    assert recv_all(c, timeout=2, reset_ok=True) == b""
    c.close()


# -- process supervision ----------------------------------------------------------------------


class Script(ServerProcess):
    """A Python script standing in for a daemon: writes its pid file, then `body` runs."""

    name = "script"

    def __init__(self, tmp_path: Path, body: str) -> None:
        prefix = tmp_path / "script"
        (prefix / "logs").mkdir(parents=True)
        pid_path = prefix / "logs" / "script.pid"
        code = f"import os, signal, subprocess, sys, time\n{textwrap.dedent(body)}"
        script = prefix / "script.py"
        script.write_text(code.replace("PIDFILE", repr(str(pid_path))))
        super().__init__(
            prefix,
            script,
            [sys.executable, str(script)],
            pid_path=pid_path,
            error_log_path=prefix / "logs" / "error.log",
        )


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for PID 1 to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    s = Script(
        tmp_path,
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(PIDFILE, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    s.start()
    t0 = time.monotonic()
    assert s.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 3


def test_stop_kills_orphaned_children(tmp_path: Path) -> None:
    s = Script(
        tmp_path,
        """
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(PIDFILE + ".child", "w").write(str(child.pid))
        open(PIDFILE, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    s.start()
    child = int(Path(str(s.pid_path) + ".child").read_text())
    assert _alive(child)
    assert s.stop(timeout=0.5) == -signal.SIGTERM
    assert s.strays_killed
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_start_failure_reports_stderr(tmp_path: Path) -> None:
    s = Script(tmp_path, 'sys.stderr.write("boom: bad config\\n"); sys.exit(1)')
    with pytest.raises(AssertionError, match=r"(?s)exited with status 1.*boom: bad config"):
        s.start()


def test_wait_for_log(tmp_path: Path) -> None:
    s = Script(
        tmp_path,
        """
        open(PIDFILE, "w").write(str(os.getpid()))
        log = PIDFILE.replace("script.pid", "error.log")
        time.sleep(0.2)
        open(log, "a").write("2026/01/01 00:00:00 [notice] 1#1: ready\\nsecond line\\n")
        time.sleep(60)
        """,
    )
    with s:
        assert s.wait_for_log(r"\[notice\].*ready") == "2026/01/01 00:00:00 [notice] 1#1: ready"
        with pytest.raises(AssertionError, match="no match"):
            s.wait_for_log("ready", timeout=0.2, since=s.log_mark())


@requires_nginx
def test_nginx_bad_config_fails_start_with_its_message(tmp_path: Path) -> None:
    prefix = Nginx.prefix_dir(tmp_path)
    n = Nginx(tmp_path, nginx_conf("no_such_directive on;\n", prefix=prefix))
    with pytest.raises(AssertionError, match=r'unknown directive "no_such_directive"'):
        n.start()


@requires_nginx
def test_nginx_workers_stop_with_master(tmp_path: Path, backend: BackendFactory) -> None:
    b = backend()
    port = free_port()
    body = f"stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {b.address}; }} }}\n"
    with Nginx(tmp_path, nginx_conf(body, prefix=Nginx.prefix_dir(tmp_path), workers=3)) as n:
        n.wait_for_log(r"start worker process \d+(?s:.*)start worker process \d+")
        n.wait_for_port("127.0.0.1", port)
        b.wait_for_connections(1)
        workers = group_members(n.pid)
        assert n.pid in workers and len(workers) == 4
    assert n.returncode == 0
    assert not n.strays_killed
    assert not any(_alive(p) for p in workers)
    assert "exit" in n.error_log_text().splitlines()[-1]
