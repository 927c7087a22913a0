"""The master/worker process model, signal by signal, held to nginx's behaviour.

Real `python -m pyngx` processes in front of an echo Backend, clients from 127.0.0.23. What
nginx does and these tests expect:
- the pid file names the master and is written once the listening sockets are bound; a bind
  failure is an `[emerg]` and exit status 1, leaving no pid file;
- QUIT drains (open sessions go on, the listeners close), TERM and INT stop at once;
- HUP (`-s reload`) loads the configuration anew without refusing a connection; a bad one is
  logged and changes nothing; old workers leave when their last session ends;
- USR1 (`-s reopen`) reopens every log file in the master and the workers, buffered access
  log lines written to the file they were logged for; a stopping worker flushes them too;
- a worker that leaves without the master asking is replaced; `worker_connections` counts a
  worker's connections as nginx counts them;
- the notices of starting and stopping are nginx's, line for line.
Every process started here is stopped by the fixtures, by PID (daemons by the test itself).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import ServerFactory
from tests.harness import (
    Backend,
    ServerProcess,
    client,
    free_port,
    recv_all,
    recv_exactly,
    run_pyngx,
)

BackendFactory = Callable[..., Backend]
T = TypeVar("T")
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# helpers


LOG_FORMAT = "log_format basic '$remote_addr $bytes_received $status';"


def proxy_body(
    port: int,
    upstream: Backend,
    *,
    main: str = "",
    server: str = "",
    access_log: str = "",
    log_params: str = "",
    listen: str = "",
) -> str:
    """A stream server on 127.0.0.1:port proxying to `upstream`; `main`, `server`: directives
    added there; `access_log`: a path, logged to in format `basic` (LOG_FORMAT) with
    `log_params`; `listen`: parameters of the listen directive."""
    if access_log:
        server += f"access_log {access_log} basic {log_params}; "
    return (
        f"{main}stream {{\n    {LOG_FORMAT}\n"
        f"    server {{ listen {LOOPBACK}:{port}{' ' if listen else ''}{listen}; "
        f"proxy_pass {upstream.address}; {server}}}\n}}\n"
    )


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone: it serves nothing)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def children(pid: int) -> list[int]:
    """Live child processes of `pid`: a master's workers."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        st = _stat(int(stat.parent.name))
        if st is not None and st[0] != "Z" and st[1] == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_workers(
    master: int, n: int, *, not_in: Sequence[int] = (), timeout: float = 5.0
) -> list[int]:
    """Wait until the master has exactly n workers, none of them in `not_in`; return them."""

    def check() -> list[int] | None:
        pids = children(master)
        return pids if len(pids) == n and not set(pids) & set(not_in) else None

    return wait_until(check, f"{n} workers of {master} (not {list(not_in)})", timeout)


def echo(sock: socket.socket, data: bytes, timeout: float = 5.0) -> None:
    sock.sendall(data)
    assert recv_exactly(sock, len(data), timeout) == data


def refused(port: int) -> bool:
    try:
        c = client(LOOPBACK, port, timeout=2.0)
    except ConnectionRefusedError:
        return True
    c.close()
    return False


def wait_exit(server: ServerProcess, timeout: float = 5.0) -> int:
    assert server.proc is not None
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{server!r} still running {timeout}s later\n{server.error_log_text()}"
        ) from None


def edit_conf(server: ServerProcess, old: str, new: str) -> None:
    """Change one main directive the harness wrote (nginx refuses duplicates, so replace)."""
    text = server.conf_path.read_text()
    assert old in text
    server.write_conf(text.replace(old, new))


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`pyngx -p PREFIX -c CONF ARGS` against the same configuration as `server`."""
    return run_pyngx(["-p", str(server.prefix), "-c", str(server.conf_path), *args])


def pid_in(path: Path) -> int | None:
    """The pid a pid file names, if it exists and names one."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def log_pids(text: str) -> set[int]:
    return {int(m) for m in re.findall(r"^\S+ \S+ \[\w+\] (\d+)#", text, re.M)}


# --------------------------------------------------------------------------------------------
# start and stop


def test_pid_file_names_the_master_and_follows_bind(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), start=False)
    with open(server.stdout_path, "wb") as out, open(server.stderr_path, "wb") as err:
        # Started here rather than by start(), to watch for the pid file without pausing;
        # set as server.proc, so that the fixture stops it.
        server.proc = subprocess.Popen(
            server.command, env=server.env, stdout=out, stderr=err, start_new_session=True
        )
    deadline = time.monotonic() + 10.0
    while not server.pid_path.exists():
        assert time.monotonic() < deadline and server.proc.poll() is None
        time.sleep(0.001)
    # The moment it appears, the socket must be listening already (a refused connection
    # here would mean the pid file came first).
    with client(LOOPBACK, port) as c:
        echo(c, b"ping")
    assert server.pid_path.read_text() == f"{server.pid}\n"
    assert server.running()
    log = server.error_log_text()
    assert re.search(rf"\[notice\] {server.pid}#0: start worker process \d+", log)
    assert server.stdout_text() == ""


def test_bind_failure_is_emerg_and_exit_1(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    b = backend(mode="echo")
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = pyngx(proxy_body(port, b), start=False)
        r = subprocess.run(
            server.command,
            env=server.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
        )
    message = f"bind() to {LOOPBACK}:{port} failed (98: Address already in use)"
    assert r.returncode == 1, r.stderr
    assert f"pyngx: [emerg] {message}" in r.stderr
    assert r.stdout == ""
    assert re.search(rf"\[emerg\] \d+#0: {re.escape(message)}", server.error_log_text())
    assert not server.pid_path.exists()


def test_worker_processes_2_gives_two_children(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2)
    workers = wait_workers(server.pid, 2)
    for w in workers:
        assert re.search(rf"start worker process {w}\b", server.error_log_text())
    # Both serve the one shared socket: a few connections all work.
    socks = [client(LOOPBACK, port) for _ in range(4)]
    try:
        for i, c in enumerate(socks):
            echo(c, b"hello %d" % i)
    finally:
        for c in socks:
            c.close()


# With reuseport each worker has a socket of its own: every one of them must close.
@pytest.mark.parametrize("listen", ["", "reuseport"])
def test_quit_drains_open_sessions_and_closes_listeners(
    pyngx: ServerFactory, backend: BackendFactory, listen: str
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b, listen=listen), workers=2)
    wait_workers(server.pid, 2)
    with client(LOOPBACK, port) as c:
        echo(c, b"before")
        mark = server.log_mark()
        server.signal(signal.SIGQUIT)
        server.wait_for_log(r"\[notice\] \d+#0: gracefully shutting down", since=mark)
        echo(c, b"after quit")
        # Refused, never accepted into a backlog that nobody serves any more: try it often
        # enough to reach every reuseport socket.
        wait_until(lambda: refused(port), "the listener to close")
        assert all(refused(port) for _ in range(20))
        echo(c, b"still here")
        time.sleep(0.3)
        assert server.running()
        assert server.pid_path.exists()
    assert wait_exit(server) == 0
    assert not server.pid_path.exists()
    log = server.error_log_text()
    assert re.search(rf"\[notice\] {server.pid}#0: signal 3 \(SIGQUIT\) received", log)
    assert re.search(rf"\[notice\] {server.pid}#0: exit$", log, re.M)
    assert "[alert]" not in log
    assert server.stdout_text() == ""


def notices(text: str) -> list[str]:
    """The `[notice]` lines of an error log, as `PID#0: message`."""
    return re.findall(r"^\S+ \S+ \[notice\] (\d+#0: .*)$", text, re.M)


@pytest.mark.parametrize(
    ("sig", "action"),
    [(signal.SIGQUIT, "shutting down"), (signal.SIGTERM, "exiting")],
    ids=["QUIT", "TERM"],
)
def test_stop_is_logged_line_for_line_as_nginx(
    pyngx: ServerFactory, backend: BackendFactory, sig: signal.Signals, action: str
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    (w,) = wait_workers(server.pid, 1)
    m = server.pid
    server.signal(sig)
    assert wait_exit(server) == 0
    graceful = [f"{w}#0: gracefully shutting down"] if sig == signal.SIGQUIT else []
    assert notices(server.error_log_text()) == [
        f'{m}#0: using the "epoll" event method',
        f"{m}#0: start worker processes",
        f"{m}#0: start worker process {w}",
        f"{m}#0: signal {int(sig)} ({sig.name}) received from {os.getpid()}, {action}",
        *graceful,
        f"{w}#0: exiting",
        f"{w}#0: exit",
        f"{m}#0: signal 17 (SIGCHLD) received from {w}",
        f"{m}#0: worker process {w} exited with code 0",
        f"{m}#0: exit",
    ]


@pytest.mark.slow
def test_worker_shutdown_timeout_closes_idle_sessions(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b, main="worker_shutdown_timeout 1s;\n"))
    with client(LOOPBACK, port) as c:
        echo(c, b"idle from now on")
        server.signal(signal.SIGQUIT)
        t0 = time.monotonic()
        assert recv_all(c, timeout=5.0) == b""  # closed (FIN), as nginx closes it
        elapsed = time.monotonic() - t0
    assert 0.7 < elapsed < 4.0, elapsed
    assert wait_exit(server) == 0
    assert not server.pid_path.exists()
    # nginx's words, with the session's context.
    assert re.search(
        r"\[info\] \d+#0: \*1 shutdown timeout while proxying connection, client: 127.0.0.23, "
        rf"server: {LOOPBACK}:{port}, upstream: \"{b.address}\", bytes from/to client:16/16, "
        "bytes from/to upstream:16/16",
        server.error_log_text(),
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_term_and_int_stop_at_once(
    pyngx: ServerFactory, backend: BackendFactory, sig: signal.Signals
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2)
    workers = wait_workers(server.pid, 2)
    with client(LOOPBACK, port) as c:
        echo(c, b"busy")
        t0 = time.monotonic()
        server.signal(sig)
        assert wait_exit(server, timeout=3.0) == 0
        assert time.monotonic() - t0 < 2.0
        assert recv_all(c, timeout=2.0, reset_ok=True) == b""
    assert not server.pid_path.exists()
    wait_until(lambda: not any(alive(w) for w in workers), "the workers to exit", 2.0)
    assert "[alert]" not in server.error_log_text()


@pytest.mark.parametrize("how", ["quit", "stop"])
def test_cli_signals_quit_and_stop(pyngx: ServerFactory, backend: BackendFactory, how: str) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    with client(LOOPBACK, port) as c:
        echo(c, b"x")
        r = cli(server, "-s", how)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        signo = {"quit": "3 (SIGQUIT)", "stop": "15 (SIGTERM)"}[how]
        server.wait_for_log(rf"signal {re.escape(signo)} received")
        if how == "quit":
            echo(c, b"still served after -s quit")
            assert server.running()
        else:
            assert wait_exit(server, timeout=3.0) == 0
    assert wait_exit(server) == 0
    assert not server.pid_path.exists()


# --------------------------------------------------------------------------------------------
# reload


class Traffic(threading.Thread):
    """Short connections (connect, echo 1 KiB, close) in a loop for `seconds`."""

    def __init__(self, port: int, seconds: float) -> None:
        super().__init__(name="traffic", daemon=True)
        self.port = port
        self.seconds = seconds
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            payload = hashlib.sha256(b"%d" % n).digest() * 32
            try:
                with client(LOOPBACK, self.port, timeout=5.0) as c:
                    echo(c, payload)
                self.ok += 1
            except Exception as exc:  # every kind of failure counts; none is expected
                self.failures.append(f"#{n}: {type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_reload_under_traffic_refuses_nothing(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo", keep_data=False)
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2)
    sent, received = hashlib.sha256(), hashlib.sha256()
    with client(LOOPBACK, port) as long:
        # Two clients, so that sessions end and start around every reload.
        traffic = [Traffic(port, 3.0), Traffic(port, 3.0)]
        for t in traffic:
            t.start()
        try:
            workers = wait_workers(server.pid, 2)
            for i in range(3):
                time.sleep(0.6)
                mark = server.log_mark()
                server.signal(signal.SIGHUP)
                server.wait_for_log(r"gracefully shutting down", since=mark)
                chunk = os.urandom(64 * 1024 + i)
                sent.update(chunk)
                long.sendall(chunk)
                received.update(recv_exactly(long, len(chunk)))
        finally:
            for t in traffic:
                t.join(10.0)
        for t in traffic:
            assert not t.is_alive()
            assert t.failures == []
            assert t.ok > 20
        assert sent.hexdigest() == received.hexdigest()
        # The first generation's workers still serve the long session; the newest ones run.
        assert any(alive(w) for w in workers)
    newest = wait_workers(server.pid, 2, not_in=workers)
    assert len(newest) == 2
    log = server.error_log_text()
    assert len(re.findall(r"#0: reconfiguring$", log, re.M)) == 3
    assert "[alert]" not in log and "[emerg]" not in log
    assert server.stdout_text() == ""


def test_reload_switches_upstream_and_old_workers_leave_after_their_sessions(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    a, b = backend(mode="echo"), backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, a))
    (old_worker,) = wait_workers(server.pid, 1)
    with client(LOOPBACK, port) as old:
        echo(old, b"to A")
        text = server.conf_path.read_text()
        server.write_conf(text.replace(a.address, b.address))
        mark = server.log_mark()
        r = cli(server, "-s", "reload")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        server.wait_for_log(rf"{old_worker}#0: gracefully shutting down", since=mark)
        (new_worker,) = set(wait_workers(server.pid, 2)) - {old_worker}
        with client(LOOPBACK, port) as new:
            echo(new, b"to B")
        assert [c.data for c in b.wait_closed(1)] == [b"to B"]
        # The old session still talks to A, through the old worker.
        echo(old, b" and still to A")
        assert a.connections[0].data == b"to A and still to A"
        assert len(a.connections) == 1
        assert alive(old_worker)
    # Its last session over, the old worker leaves; the new one stays.
    server.wait_for_log(rf"worker process {old_worker} exited with code 0")
    assert wait_workers(server.pid, 1, not_in=[old_worker]) == [new_worker]
    assert "[alert]" not in server.error_log_text()


def test_bad_config_on_reload_changes_nothing(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2)
    workers = wait_workers(server.pid, 2)
    good = server.conf_path.read_text()
    server.write_conf(good + "no_such_directive on;\n")
    line = len(good.splitlines()) + 1
    mark = server.log_mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(
        rf"(?m)\[emerg\] {server.pid}#0: unknown directive \"no_such_directive\" in "
        rf"{re.escape(str(server.conf_path))}:{line}$",
        since=mark,
    )
    time.sleep(0.2)
    assert server.running()
    assert children(server.pid) == workers
    with client(LOOPBACK, port) as c:
        echo(c, b"old config still serves")
    assert "gracefully shutting down" not in server.error_log_text()[mark:]
    # `-s reload` reads the configuration first, and refuses a bad one, as nginx's does.
    r = cli(server, "-s", "reload")
    assert r.returncode == 1
    assert 'unknown directive "no_such_directive"' in r.stderr


def test_reload_with_unopenable_access_log_changes_nothing(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    (worker,) = wait_workers(server.pid, 1)
    bad = tmp_path / "missing-dir" / "access.log"
    server.write_conf(
        server.conf_path.read_text().replace(
            proxy_body(port, b), proxy_body(port, b, access_log=str(bad))
        )
    )
    assert f"access_log {bad}" in server.conf_path.read_text()
    mark = server.log_mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(
        rf"\[emerg\] {server.pid}#0: open\(\) \"{re.escape(str(bad))}\" failed "
        r"\(2: No such file or directory\)",
        since=mark,
    )
    assert server.running()
    assert children(server.pid) == [worker]
    with client(LOOPBACK, port) as c:
        echo(c, b"still serving")


def test_reload_adds_and_removes_listen_ports(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    p1, p2 = free_port(), free_port()
    server = pyngx(proxy_body(p1, b), workers=2)
    assert refused(p2)
    body = server.conf_path.read_text()

    mark = server.log_mark()
    server.write_conf(
        body.replace(f"listen {LOOPBACK}:{p1};", f"listen {LOOPBACK}:{p1}; listen {LOOPBACK}:{p2};")
    )
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"gracefully shutting down", since=mark)
    for p in (p1, p2):
        with client(LOOPBACK, p) as c:
            echo(c, b"port %d" % p)

    mark = server.log_mark()
    server.write_conf(body.replace(f"listen {LOOPBACK}:{p1};", f"listen {LOOPBACK}:{p2};"))
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"gracefully shutting down", since=mark)
    wait_until(lambda: refused(p1), f"port {p1} to close", 3.0)
    with client(LOOPBACK, p2) as c:
        echo(c, b"p2 stays")
    # Refused for good, not only while the old workers were leaving.
    wait_workers(server.pid, 2)
    assert refused(p1)


# --------------------------------------------------------------------------------------------
# logs, crashes, odd starts


@pytest.mark.parametrize("how", ["USR1", "-s reopen"])
def test_usr1_reopens_error_and_access_logs(
    pyngx: ServerFactory, backend: BackendFactory, how: str
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b, access_log="logs/access.log"))
    logs = server.prefix / "logs"
    error_log, access_log = logs / "error.log", logs / "access.log"
    with client(LOOPBACK, port) as c:
        echo(c, b"first")
    wait_until(lambda: access_log.exists() and access_log.read_text(), "the first access line")
    error_log.rename(logs / "error.log.1")
    access_log.rename(logs / "access.log.1")

    if how == "USR1":
        server.signal(signal.SIGUSR1)
    else:
        r = cli(server, "-s", "reopen")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    (worker,) = children(server.pid)
    # Both processes log "reopening logs" into the old file, then open the new one.
    old = logs / "error.log.1"
    wait_until(
        lambda: len(re.findall(r"#0: reopening logs$", old.read_text(), re.M)) == 2,
        "reopening in both",
    )
    wait_until(error_log.exists, "a new error.log")

    with client(LOOPBACK, port) as c:
        echo(c, b"second!")
    wait_until(lambda: access_log.exists() and access_log.read_text(), "the access log line")
    assert access_log.read_text() == "127.0.0.23 7 200\n"
    assert (logs / "access.log.1").read_text() == "127.0.0.23 5 200\n"
    server.signal(signal.SIGUSR1)  # the master's "signal received" line lands in the new file
    server.wait_for_log(rf"{server.pid}#0: signal 10 \(SIGUSR1\) received")
    server.wait_for_log(rf"{worker}#0: \*\d+ client disconnected")
    assert log_pids(error_log.read_text()) == {server.pid, worker}
    assert "client disconnected, bytes from/to client:7/7" not in old.read_text()


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM], ids=["QUIT", "TERM"])
def test_worker_stopped_from_outside_is_replaced(
    pyngx: ServerFactory, backend: BackendFactory, sig: signal.Signals
) -> None:
    """nginx respawns any worker that leaves without being told to by the master."""
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    (w,) = wait_workers(server.pid, 1)
    os.kill(w, sig)
    server.wait_for_log(rf"(?m)\[notice\] {server.pid}#0: worker process {w} exited with code 0$")
    (replacement,) = wait_workers(server.pid, 1, not_in=[w])
    server.wait_for_log(rf"(?m)start worker process {replacement}$")
    with client(LOOPBACK, port) as c:
        echo(c, b"still served")


def test_killed_worker_is_replaced(pyngx: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2)
    workers = wait_workers(server.pid, 2)
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(
        rf"(?m)\[alert\] {server.pid}#0: worker process {victim} exited on signal 9$"
    )
    now = wait_workers(server.pid, 2, not_in=[victim])
    (replacement,) = set(now) - set(workers)
    server.wait_for_log(rf"(?m)start worker process {replacement}$")
    socks = [client(LOOPBACK, port) for _ in range(4)]
    try:
        for i, c in enumerate(socks):
            echo(c, b"after the crash %d" % i)
    finally:
        for c in socks:
            c.close()
    assert server.running()


def test_started_with_std_fds_closed(pyngx: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="echo")
    port = free_port()
    body = proxy_body(port, b, main="error_log stderr info;\n", access_log="logs/access.log")
    server = pyngx(body, workers=2, start=False)
    # Only stderr as the error log: nothing may be written to a file that took fd 2.
    edit_conf(server, f"error_log {server.prefix}/logs/error.log info;\n", "")
    server.close_std_fds = True
    server.start()
    workers = wait_workers(server.pid, 2)
    # What it opened (log files, sockets, the shared counter) must not take fds 0-2, where
    # `error_log stderr` would write into it: they are /dev/null.
    for pid in [server.pid, *workers]:
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull, (pid, fd)
    for i in range(3):
        with client(LOOPBACK, port) as c:
            echo(c, b"%d bytes" % i)
    access_log = server.prefix / "logs" / "access.log"
    wait_until(lambda: access_log.read_text().count("\n") == 3, "three access lines")
    assert access_log.read_text() == "".join(
        f"127.0.0.23 {len(b'%d bytes' % i)} 200\n" for i in range(3)
    )
    server.signal(signal.SIGQUIT)
    assert wait_exit(server) == 0
    assert not server.pid_path.exists()
    assert server.stdout_text() == "" and server.stderr_text() == ""


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGTERM], ids=["QUIT", "TERM"])
def test_master_process_off_serves_in_one_process(
    pyngx: ServerFactory, backend: BackendFactory, sig: signal.Signals
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), start=False)
    edit_conf(server, "master_process on;", "master_process off;")
    server.start()
    assert server.pid_path.read_text() == f"{server.pid}\n"
    with client(LOOPBACK, port) as c:
        echo(c, b"single")
        assert children(server.pid) == []
        server.signal(sig)
        if sig == signal.SIGQUIT:
            wait_until(lambda: refused(port), "the listener to close")
            echo(c, b"drained")
            assert server.running()
        else:
            assert wait_exit(server, timeout=3.0) == 0
    assert wait_exit(server) == 0
    assert not server.pid_path.exists()


def test_daemon_on_detaches_and_stops_with_s_stop(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2, start=False)
    edit_conf(server, "daemon off;", "daemon on;")
    daemon: list[int] = []  # every pid to clean up if the test fails
    try:
        with open(server.stdout_path, "wb") as out, open(server.stderr_path, "wb") as err:
            t0 = time.monotonic()
            launcher = subprocess.Popen(
                server.command, env=server.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
            assert launcher.wait(10) == 0
            assert time.monotonic() - t0 < 5.0
        master = wait_until(lambda: pid_in(server.pid_path), "the daemon's pid file")
        daemon.append(master)
        assert master != launcher.pid
        assert alive(master)
        daemon += wait_workers(master, 2)
        with client(LOOPBACK, port) as c:
            echo(c, b"served by the daemon")
        r = cli(server, "-s", "stop")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        wait_until(lambda: not any(alive(p) for p in daemon), "the daemon to exit")
        assert not server.pid_path.exists()
        assert refused(port)
        assert server.stdout_text() == "" and server.stderr_text() == ""
    finally:
        for pid in daemon:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# limits


def test_worker_connections_limit(pyngx: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), start=False)
    edit_conf(server, "worker_connections 1024;", "worker_connections 4;")
    server.start()
    # As nginx counts: of 4 connections, the listening socket and the channel to the master
    # hold one each, the first session (client + upstream) the other two.
    with client(LOOPBACK, port) as first:
        echo(first, b"fits")
        for i in range(3):
            mark = server.log_mark()
            with client(LOOPBACK, port) as extra:
                extra.sendall(b"too many")
                assert recv_all(extra, timeout=3.0, reset_ok=True) == b""
            server.wait_for_log(
                r"(?m)\[alert\] \d+#0: (\*\d+ )?4 worker_connections are not enough$", since=mark
            )
            echo(first, b"unaffected %d" % i)
    assert len(b.connections) == 1
    # The first session gone, its slots serve the next one.
    b.wait_closed(1)
    with client(LOOPBACK, port) as c:
        echo(c, b"fits again")


# --------------------------------------------------------------------------------------------
# more of nginx's process behaviour


@pytest.mark.parametrize(
    "sig", [signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1], ids=["QUIT", "TERM", "USR1"]
)
def test_buffered_access_log_is_flushed_on_exit_and_reopen(
    pyngx: ServerFactory, backend: BackendFactory, sig: signal.Signals
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b, access_log="logs/access.log", log_params="buffer=64k"))
    access_log = server.prefix / "logs" / "access.log"
    with client(LOOPBACK, port) as c:
        echo(c, b"buffered")
    server.wait_for_log(r"client disconnected")
    assert access_log.read_text() == ""  # still in the buffer
    if sig == signal.SIGUSR1:
        access_log.rename(access_log.with_suffix(".log.1"))
        server.signal(sig)
        # As nginx: what was buffered goes to the file it was logged for, before reopening.
        # The master creates the new file at once; the worker flushes its buffer when it
        # gets the signal, so wait for both rather than for the file alone.
        old = access_log.with_suffix(".log.1")
        wait_until(lambda: access_log.exists() and old.read_text() != "", "the flushed line")
        assert old.read_text() == "127.0.0.23 8 200\n"
        return
    server.signal(sig)
    assert wait_exit(server) == 0
    assert access_log.read_text() == "127.0.0.23 8 200\n"


def test_reload_fails_on_a_taken_port_and_keeps_serving(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    workers = wait_workers(server.pid, 1)
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        taken = holder.getsockname()[1]
        text = server.conf_path.read_text()
        server.write_conf(
            text.replace(
                f"listen {LOOPBACK}:{port};",
                f"listen {LOOPBACK}:{port}; listen {LOOPBACK}:{taken};",
            )
        )
        mark = server.log_mark()
        server.signal(signal.SIGHUP)
        server.wait_for_log(
            rf"\[emerg\] {server.pid}#0: bind\(\) to {LOOPBACK}:{taken} failed "
            r"\(98: Address already in use\)",
            since=mark,
        )
    time.sleep(0.2)
    assert server.running()
    assert children(server.pid) == workers
    with client(LOOPBACK, port) as c:
        echo(c, b"old config")
    # The next reload, with the port free, takes it.
    server.signal(signal.SIGHUP)
    wait_workers(server.pid, 1, not_in=workers)
    with client(LOOPBACK, taken) as c:
        echo(c, b"new port")


def test_reload_moves_error_log_pid_file_and_worker_count(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    (first,) = wait_workers(server.pid, 1)
    logs = server.prefix / "logs"
    text = server.conf_path.read_text()
    for old, new in (
        ("worker_processes 1;", "worker_processes 3;"),
        ("logs/pyngx.pid;", "logs/moved.pid;"),
        ("logs/error.log info;", "logs/moved.log info;"),
    ):
        assert old in text
        text = text.replace(old, new)
    server.write_conf(text)
    server.signal(signal.SIGHUP)
    workers = wait_workers(server.pid, 3, not_in=[first])
    # As nginx: the new pid file is written and the old one removed.
    wait_until(lambda: pid_in(logs / "moved.pid") == server.pid, "the new pid file")
    wait_until(lambda: not server.pid_path.exists(), "the old pid file to go")
    moved = logs / "moved.log"
    wait_until(lambda: f"worker process {first} exited" in moved.read_text(), "the master's line")
    with client(LOOPBACK, port) as c:
        echo(c, b"logged in the new file")
    wait_until(lambda: "client disconnected" in moved.read_text(), "a worker's line")
    assert set(workers) & log_pids(moved.read_text())
    assert "client disconnected" not in server.error_log_text()
    # The harness stops it by pid; the pid file it watches is gone, which is expected here.
    server.signal(signal.SIGQUIT)
    assert wait_exit(server) == 0
    assert not (logs / "moved.pid").exists()


def test_workers_leave_when_the_master_is_killed(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b), workers=2)
    workers = wait_workers(server.pid, 2)
    with client(LOOPBACK, port) as c:
        echo(c, b"x")
        server.signal(signal.SIGKILL)
        assert wait_exit(server) == -signal.SIGKILL
        # Orphans would keep the port; they drain instead, then leave.
        echo(c, b"the open session finishes")
    wait_until(lambda: not any(alive(w) for w in workers), "the orphaned workers to exit")
    assert refused(port)


def test_reopen_failure_is_emerg_and_keeps_the_old_file(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    logs = Path("logs")
    server = pyngx(proxy_body(port, b, access_log=str(logs / "sub" / "access.log")), start=False)
    sub = server.prefix / "logs" / "sub"
    sub.mkdir()
    server.start()
    sub.rename(sub.with_name("sub.old"))
    mark = server.log_mark()
    server.signal(signal.SIGUSR1)
    message = (
        rf'open\(\) "{re.escape(str(sub))}/access.log" failed \(2: No such file or directory\)'
    )
    server.wait_for_log(rf"\[emerg\] {server.pid}#0: {message}", since=mark)
    (worker,) = children(server.pid)
    server.wait_for_log(rf"\[emerg\] {worker}#0: {message}", since=mark)
    # Still logging, to the file it had.
    with client(LOOPBACK, port) as c:
        echo(c, b"kept")
    old = sub.with_name("sub.old") / "access.log"
    wait_until(lambda: old.read_text() == "127.0.0.23 4 200\n", "the line in the old file")


def test_second_instance_fails_and_leaves_the_first_alone(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    server = pyngx(proxy_body(port, b))
    r = run_pyngx(["-p", str(server.prefix), "-c", str(server.conf_path)])
    assert r.returncode == 1
    assert f"[emerg] bind() to {LOOPBACK}:{port} failed (98: Address already in use)" in r.stderr
    assert server.pid_path.read_text() == f"{server.pid}\n"
    with client(LOOPBACK, port) as c:
        echo(c, b"the first still serves")
    r = cli(server, "-s", "quit")
    assert r.returncode == 0
    assert wait_exit(server) == 0
