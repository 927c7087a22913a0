"""Test harness: real server processes (pyngx, Debian's nginx), real sockets, bounded waits.

Everything here is bounded in time and cleans up after itself: servers are stopped by PID (their
own process group, which they are started in), backends close every socket they opened.

Servers:
    Pyngx(tmp_path, conf_text) / Nginx(tmp_path, conf_text)  -- see pyngx_conf() / nginx_conf()
    run_pyngx(args) / run_nginx(args)                          -- one-shot CLI calls (-t, -V, ...)
Peers:
    Backend(...)               -- recording/echo/sink-hash TCP or unix-socket server in a thread
    client(host, port)         -- a connected socket from a chosen loopback source address
    recv_until / recv_exactly / recv_all
"""

from __future__ import annotations

import hashlib
import os
import re
import selectors
import signal as signal_module
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NGINX_BIN = Path("/usr/sbin/nginx")
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

# How long a server may take to write its pid file, and to stop after SIGTERM.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02


# --------------------------------------------------------------------------------------------
# addresses


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port that was free on `host` a moment ago (the kernel's choice for port 0)."""
    with socket.socket(_family(host), kind) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# Sockets that keep dead_port()'s ports bound for the whole test run.
_DEAD: list[socket.socket] = []


def dead_port(host: str = "127.0.0.1") -> int:
    """A port that refuses connections for the rest of the run: bound but not listening, so
    a later free_port() (a server's listen) cannot be given the same number, as it could a
    port that was only free a moment ago."""
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    s.bind((host, 0))
    _DEAD.append(s)
    port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------------
# server processes


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes in process group `pgid`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # fields: state ppid pgrp ...
            members.append(int(stat.parent.name))
    return members


class ServerProcess:
    """A daemon run in the foreground (`daemon off;`), in its own process group.

    Started when its pid file holds its PID. Subclasses provide the command line and paths.
    The process's stdout/stderr go to files in the prefix (logs/stdout.txt, logs/stderr.txt):
    unlike pipes, files never fill up and block a server that nobody reads.
    """

    name = "server"

    def __init__(
        self,
        prefix: Path,
        conf_path: Path,
        command: Sequence[str],
        *,
        pid_path: Path,
        error_log_path: Path,
        env: dict[str, str] | None = None,
        close_std_fds: bool = False,
    ) -> None:
        self.prefix = prefix
        self.conf_path = conf_path
        self.command = list(command)
        self.pid_path = pid_path
        self.error_log_path = error_log_path
        self.stdout_path = prefix / "logs" / "stdout.txt"
        self.stderr_path = prefix / "logs" / "stderr.txt"
        self.env = env
        # Start with file descriptors 0, 1 and 2 closed, as some supervisors do: the server must
        # not mistake whatever it opens next (a log, a socket) for stdin/stdout/stderr.
        self.close_std_fds = close_std_fds
        self.proc: subprocess.Popen[bytes] | None = None
        # Set by stop() when processes of the group outlived the main one and were SIGKILLed.
        self.strays_killed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running (pid {self.proc.pid})")
        self.pid_path.unlink(missing_ok=True)
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command
        if self.close_std_fds:
            # exec keeps the pid (and so the pid file check and the exit status) the server's.
            command = ["/bin/sh", "-c", 'exec "$@" <&- >&- 2>&-', "sh", *command]
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                start_new_session=True,  # own process group: workers can be killed with it
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._pid_file_pid() == self.proc.pid:
                return self
            if self.proc.poll() is not None:
                self._fail_start(f"exited with status {self.proc.returncode} before writing")
            if time.monotonic() > deadline:
                self.stop()
                self._fail_start(f"did not write its pid within {timeout:.0f}s to")
            time.sleep(POLL_INTERVAL)

    def _pid_file_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _fail_start(self, what: str) -> None:
        raise AssertionError(
            f"{self.name} {what} {self.pid_path}\n"
            f"command: {' '.join(self.command)}\n"
            f"--- stderr ---\n{self.stderr_text()}\n"
            f"--- error log {self.error_log_path} ---\n{self.error_log_text()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL (the whole process group) after `timeout`; returns the status.

        Processes of the group still alive `timeout` after the main one exited (orphaned
        workers) are SIGKILLed too, and `strays_killed` is set.
        """
        proc = self.proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        if proc.poll() is None:
            try:
                proc.send_signal(signal_module.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(pgid)
                proc.wait(timeout)
        # Workers outlive a master that died abnormally; give them a moment, then kill them.
        deadline = time.monotonic() + timeout
        while self._group_alive(pgid):
            if time.monotonic() > deadline:
                self._kill_group(pgid)
                self.strays_killed = True
                break
            time.sleep(POLL_INTERVAL)
        return proc.returncode

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return bool(group_members(pgid))  # zombies (orphans not yet reaped) do not count

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal_module.SIGKILL)
        except ProcessLookupError:
            pass

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_conf(self, conf_text: str) -> None:
        """Replace the config file (e.g. before `signal(SIGHUP)`)."""
        self.conf_path.write_text(conf_text)

    # -- output ------------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def error_log_text(self) -> str:
        return self._read(self.error_log_path)

    def stderr_text(self) -> str:
        return self._read(self.stderr_path)

    def stdout_text(self) -> str:
        return self._read(self.stdout_path)

    def log_mark(self) -> int:
        """Current length of the error log text, for `wait_for_log(..., since=mark)`."""
        return len(self.error_log_text())

    def wait_for_log(self, pattern: str, timeout: float = 5.0, *, since: int = 0) -> str:
        """Poll the error log until regex `pattern` matches (at or after offset `since`).

        Returns the whole line(s) containing the match.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.error_log_text()
            m = regex.search(text, since)
            if m:
                start = text.rfind("\n", 0, m.start()) + 1
                end = text.find("\n", m.end())
                return text[start : end if end >= 0 else len(text)]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no match for {pattern!r} in {self.error_log_path} "
                    f"within {timeout}s\n--- error log ---\n{text[since:]}"
                )
            time.sleep(POLL_INTERVAL)

    def wait_for_port(self, host: str, port: int, timeout: float = 5.0) -> None:
        """Poll until a TCP connect to host:port succeeds.

        Note: the probe is a real connection; behind a proxy it reaches the upstream too.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return
            except OSError as e:
                error = e
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) while waiting for "
                    f"{host}:{port}\n--- error log ---\n{self.error_log_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {host}:{port} not up within {timeout}s ({error})"
                )
            time.sleep(POLL_INTERVAL)

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> ServerProcess:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<{type(self).__name__} pid={pid} prefix={self.prefix}>"


def _main_directives(prefix: Path, pid_name: str, workers: int, level: str) -> str:
    return (
        "daemon off;\n"
        "master_process on;\n"
        f"worker_processes {workers};\n"
        f"pid {prefix}/logs/{pid_name};\n"
        f"error_log {prefix}/logs/error.log {level};\n"
        "events { worker_connections 1024; }\n"
    )


def _child_env() -> dict[str, str]:
    """Environment for `python -m pyngx`: the repo importable even without an install."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def pyngx_conf(body: str, *, prefix: Path, workers: int = 1, level: str = "info") -> str:
    """A complete pyngx.conf: daemon off, master, workers, pid and error log in `prefix`."""
    return _main_directives(prefix, "pyngx.pid", workers, level) + body


class Pyngx(ServerProcess):
    """`python -m pyngx -p PREFIX -c PREFIX/conf/pyngx.conf`, prefix = tmp_path/name.

    Contract with pyngx (as nginx does it): the pid file is written after the listening sockets
    are open, so a test may connect as soon as start() returns.
    """

    name = "pyngx"

    def __init__(
        self,
        tmp_path: Path,
        conf_text: str,
        *,
        extra_args: Iterable[str] = (),
        name: str = "pyngx",
    ) -> None:
        prefix = self.prefix_dir(tmp_path, name)
        (prefix / "conf").mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        conf_path = prefix / "conf" / "pyngx.conf"
        conf_path.write_text(conf_text)
        command = [sys.executable, "-m", "pyngx", "-p", str(prefix), "-c", str(conf_path)]
        super().__init__(
            prefix,
            conf_path,
            [*command, *extra_args],
            pid_path=prefix / "logs" / "pyngx.pid",
            error_log_path=prefix / "logs" / "error.log",
            env=_child_env(),
        )

    @staticmethod
    def prefix_dir(tmp_path: Path, name: str = "pyngx") -> Path:
        return tmp_path / name


def run_pyngx(
    args: Sequence[str], timeout: float = 20, *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """One-shot `python -m pyngx ARGS` (e.g. -t, -V), output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pyngx", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        env=_child_env(),
        stdin=subprocess.DEVNULL,
    )


def nginx_available() -> bool:
    return os.access(NGINX_BIN, os.X_OK) and NGINX_STREAM_MODULE.is_file()


requires_nginx = pytest.mark.skipif(
    not nginx_available(), reason=f"needs {NGINX_BIN} and {NGINX_STREAM_MODULE}"
)


def nginx_conf(
    body: str,
    *,
    prefix: Path,
    workers: int = 1,
    level: str = "info",
    user: str | None = "root" if os.geteuid() == 0 else None,
) -> str:
    """A complete nginx.conf with the stream module loaded; same main directives as pyngx_conf.

    As root, workers run as `user root` by default: pytest's tmp dirs are mode 0700, and
    nginx's default `nobody` could neither reach unix sockets nor files in them.
    """
    head = f"load_module {NGINX_STREAM_MODULE};\n"
    if user:
        head += f"user {user};\n"
    return head + _main_directives(prefix, "nginx.pid", workers, level) + body


class Nginx(ServerProcess):
    """Debian's `nginx -p PREFIX -c PREFIX/conf/nginx.conf -e stderr`, prefix = tmp_path/name."""

    name = "nginx"

    def __init__(
        self,
        tmp_path: Path,
        conf_text: str,
        *,
        extra_args: Iterable[str] = (),
        name: str = "nginx",
    ) -> None:
        prefix = self.prefix_dir(tmp_path, name)
        (prefix / "conf").mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        conf_path = prefix / "conf" / "nginx.conf"
        conf_path.write_text(conf_text)
        command = [str(NGINX_BIN), "-p", f"{prefix}/", "-c", str(conf_path), "-e", "stderr"]
        super().__init__(
            prefix,
            conf_path,
            [*command, *extra_args],
            pid_path=prefix / "logs" / "nginx.pid",
            error_log_path=prefix / "logs" / "error.log",
        )

    @staticmethod
    def prefix_dir(tmp_path: Path, name: str = "nginx") -> Path:
        return tmp_path / name


def run_nginx(
    args: Sequence[str], timeout: float = 20, *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """One-shot `nginx ARGS` (e.g. -t -p P -c C), output captured as text."""
    return subprocess.run(
        [str(NGINX_BIN), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------------------------
# backend


BackendMode = Literal["record", "echo", "sink-hash"]

_READ_SIZE = 256 * 1024
_MAX_PENDING = 1024 * 1024  # echo: stop reading while this much is unsent (flow control)


class Conn:
    """One connection accepted by a Backend. Read its fields from any thread."""

    def __init__(self, backend: Backend, sock: socket.socket, peer: object) -> None:
        self._backend = backend
        self._sock = sock
        self.peer = peer  # (host, port[, ...]) for TCP, "" or a path for unix sockets
        self.sockname: object = sock.getsockname()
        self.accepted_time = time.monotonic()
        self.first_recv_time: float | None = None
        self.closed = False  # both directions done and the socket closed
        self.eof = False  # the client closed its sending side
        self.reset = False  # a read or write failed (ECONNRESET, EPIPE, ...)
        self.nbytes = 0  # bytes received
        self._data = bytearray()
        self._hash = hashlib.sha256()
        self._out = bytearray()
        self._close_when_flushed = False
        self._registered = 0  # selector events currently registered

    @property
    def data(self) -> bytes:
        """Everything received so far, in order (b"" with keep_data=False)."""
        with self._backend._cond:
            return bytes(self._data)

    @property
    def sha256(self) -> str:
        """Hex digest of everything received so far."""
        with self._backend._cond:
            return self._hash.hexdigest()

    def send(self, data: bytes) -> None:
        """Queue bytes to send to the client."""
        self._backend._call(lambda: self._backend._queue_output(self, data))

    def close(self) -> None:
        """Close from the backend side once queued output is sent."""
        self._backend._call(lambda: self._backend._close_after_flush(self))

    def wait_for(self, pattern: bytes, timeout: float = 5.0) -> bytes:
        """Wait until the received data contains `pattern`; returns all data so far."""
        self._backend._wait(lambda: pattern in self._data, timeout, f"{pattern!r} on {self}")
        return self.data

    def wait_for_bytes(self, n: int, timeout: float = 5.0) -> bytes:
        self._backend._wait(lambda: self.nbytes >= n, timeout, f"{n} bytes on {self}")
        return self.data

    def wait_closed(self, timeout: float = 5.0) -> None:
        self._backend._wait(lambda: self.closed, timeout, f"close of {self}")

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("eof" if self.eof else "open")
        return f"<Conn peer={self.peer!r} {state} received={self.nbytes}>"


class Backend:
    """A TCP (or unix-socket) server on its own thread, recording every connection.

    mode:
        "record"     keep what arrives; close when the client does.
        "echo"       send back everything received; close when the client does (after flushing).
        "sink-hash"  on client EOF, send the sha256 hex digest of all bytes received, then close.
    banner: sent as soon as a connection is accepted (mail servers speak first). The attribute
        may be reassigned while the backend runs: it is read at each accept, so connections
        accepted afterwards get the new banner (a server that turns unhealthy, then recovers).
    keep_data=False keeps only counts and the running hash (for large transfers).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix_path: str | Path | None = None,
        mode: BackendMode = "record",
        banner: bytes | None = None,
        keep_data: bool = True,
        backlog: int = 4096,
    ) -> None:
        if mode not in ("record", "echo", "sink-hash"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode: BackendMode = mode
        self.banner = banner
        self.keep_data = keep_data
        self.connections: list[Conn] = []
        self._cond = threading.Condition()
        self._calls: list[Callable[[], None]] = []
        self._stopping = False
        self.unix_path = Path(unix_path) if unix_path is not None else None
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(self.unix_path))
            self.host, self.port = "", 0
        else:
            self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self.host, self.port = host, self._listener.getsockname()[1]
        self._listener.listen(backlog)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"Backend-{self}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """The address as nginx's config spells it: 127.0.0.1:PORT, [::1]:PORT, unix:/path."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    # -- waiting (any thread) ------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"{self}: timed out after {timeout}s waiting for {what}")

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> list[Conn]:
        """Wait until at least n connections were accepted; returns them all."""
        self._wait(lambda: len(self.connections) >= n, timeout, f"{n} connections")
        with self._cond:
            return list(self.connections)

    def wait_closed(self, n: int, timeout: float = 5.0) -> list[Conn]:
        """Wait until at least n connections are closed; returns all connections."""
        self._wait(
            lambda: sum(c.closed for c in self.connections) >= n,
            timeout,
            f"{n} closed connections",
        )
        with self._cond:
            return list(self.connections)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        self._thread.join(5.0)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._cond:
            for conn in self.connections:
                if not conn.closed:
                    conn._sock.close()
                    conn.closed = True
            self._cond.notify_all()
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.unix_path if self.unix_path else f"{self.host}:{self.port}"
        return f"<Backend {self.mode} {where}>"

    # -- event loop (backend thread) -----------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake, or closing

    def _call(self, fn: Callable[[], None]) -> None:
        with self._cond:
            self._calls.append(fn)
        self._wake()

    def _run(self) -> None:
        while not self._stopping:
            for key, mask in self._sel.select(timeout=0.5):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    conn: Conn = key.data
                    if mask & selectors.EVENT_READ and not conn.closed:
                        self._on_readable(conn)
                    if mask & selectors.EVENT_WRITE and not conn.closed:
                        self._on_writable(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            calls, self._calls = self._calls, []
        for fn in calls:
            fn()

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: leave it in the backlog
            sock.setblocking(False)
            conn = Conn(self, sock, peer)
            with self._cond:
                self.connections.append(conn)
                self._cond.notify_all()
            if self.banner:
                conn._out += self.banner
            self._update(conn)

    def _on_readable(self, conn: Conn) -> None:
        try:
            data = conn._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(conn, reset=True)
            return
        if not data:
            with self._cond:
                conn.eof = True
                self._cond.notify_all()
            if self.mode == "sink-hash":
                conn._out += conn._hash.hexdigest().encode()
            conn._close_when_flushed = True
            self._update(conn)
            return
        with self._cond:
            if conn.first_recv_time is None:
                conn.first_recv_time = time.monotonic()
            conn.nbytes += len(data)
            conn._hash.update(data)
            if self.keep_data:
                conn._data += data
            self._cond.notify_all()
        if self.mode == "echo":
            conn._out += data
        self._update(conn)

    def _on_writable(self, conn: Conn) -> None:
        try:
            sent = conn._sock.send(conn._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(conn, reset=True)
            return
        del conn._out[:sent]
        self._update(conn)

    def _queue_output(self, conn: Conn, data: bytes) -> None:
        if not conn.closed:
            conn._out += data
            self._update(conn)

    def _close_after_flush(self, conn: Conn) -> None:
        if not conn.closed:
            conn._close_when_flushed = True
            self._update(conn)

    def _update(self, conn: Conn) -> None:
        """Set the selector interest from the connection's state; close when it is done."""
        if conn.closed:
            return
        if conn._close_when_flushed and not conn._out:
            self._finish(conn)
            return
        events = 0
        if not conn.eof and not conn._close_when_flushed and len(conn._out) < _MAX_PENDING:
            events |= selectors.EVENT_READ
        if conn._out:
            events |= selectors.EVENT_WRITE
        if events == conn._registered:
            return
        if conn._registered == 0:
            self._sel.register(conn._sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn._sock)
        else:
            self._sel.modify(conn._sock, events, conn)
        conn._registered = events

    def _finish(self, conn: Conn, *, reset: bool = False) -> None:
        if conn._registered:
            self._sel.unregister(conn._sock)
            conn._registered = 0
        conn._sock.close()
        with self._cond:
            conn.closed = True
            conn.reset = conn.reset or reset
            self._cond.notify_all()


# --------------------------------------------------------------------------------------------
# clients


def client(
    host: str, port: int, *, source: str | None = "127.0.0.23", timeout: float = 5.0
) -> socket.socket:
    """A TCP connection to host:port from loopback address `source` (None: the kernel's pick).

    Any 127.0.0.0/8 address works as a source on Linux, so tests can tell clients apart.
    """
    family = _family(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def client_unix(path: str | Path, *, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


class _Deadline:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.end = time.monotonic() + timeout
        self.timeout = timeout

    def arm(self, got: bytes | bytearray, what: str) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {what} within {self.timeout}s; received {bytes(got)!r}")
        self.sock.settimeout(left)


def _recv(
    sock: socket.socket, n: int, flags: int, deadline: _Deadline, got: bytearray, what: str
) -> bytes:
    deadline.arm(got, what)
    try:
        return sock.recv(n, flags)
    except TimeoutError:
        raise TimeoutError(
            f"no {what} within {deadline.timeout}s; received {bytes(got)!r}"
        ) from None


def recv_until(sock: socket.socket, pattern: bytes, timeout: float = 5.0) -> bytes:
    """Receive up to and including the first `pattern`; bytes after it stay in the socket."""
    if not pattern:
        raise ValueError("empty pattern")
    old = sock.gettimeout()
    deadline = _Deadline(sock, timeout)
    buf = bytearray()
    what = repr(pattern)
    try:
        while True:
            chunk = _recv(sock, _READ_SIZE, socket.MSG_PEEK, deadline, buf, what)
            if not chunk:
                raise EOFError(f"EOF before {pattern!r}; received {bytes(buf)!r}")
            start = max(0, len(buf) - len(pattern) + 1)
            idx = (bytes(buf[start:]) + chunk).find(pattern)
            take = len(chunk) if idx < 0 else idx + len(pattern) - (len(buf) - start)
            buf += _recv_exactly(sock, take, deadline, buf, what)
            if idx >= 0:
                return bytes(buf)
    finally:
        sock.settimeout(old)


def _recv_exactly(
    sock: socket.socket, n: int, deadline: _Deadline, prefix: bytearray, what: str
) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = _recv(sock, n - len(out), 0, deadline, prefix + out, what)
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes; received {bytes(prefix + out)!r}")
        out += chunk
    return bytes(out)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """Receive exactly n bytes (EOFError if the peer closes first)."""
    old = sock.gettimeout()
    try:
        return _recv_exactly(sock, n, _Deadline(sock, timeout), bytearray(), f"{n} bytes")
    finally:
        sock.settimeout(old)


def read_banner(sock: socket.socket) -> str:
    """The first line a backend sent through the proxy ("A", "220 ok", ...), or "" when the
    connection was closed (or reset) before a full line: a refused or failed session."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(16)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data.decode().strip()


def recv_all(sock: socket.socket, timeout: float = 5.0, *, reset_ok: bool = False) -> bytes:
    """Receive until EOF. With reset_ok, a connection reset also counts as the end."""
    old = sock.gettimeout()
    deadline = _Deadline(sock, timeout)
    buf = bytearray()
    try:
        while True:
            try:
                chunk = _recv(sock, _READ_SIZE, 0, deadline, buf, "EOF")
            except ConnectionResetError:
                if reset_ok:
                    return bytes(buf)
                raise
            if not chunk:
                return bytes(buf)
            buf += chunk
    finally:
        sock.settimeout(old)


def send_all_then_shutdown(sock: socket.socket, data: bytes) -> None:
    """sendall(data), then half-close: the peer sees EOF, the reply can still come back."""
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
