"""Process plumbing for the benchmark: /proc readings, pinning, and the servers under test.

Everything started here is remembered by PID and stopped by PID; nothing is ever looked up by
name, so other nginx or Python processes on the machine are left alone.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


# -- /proc -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of `pid`; /proc/PID/task/TID/children is not built into every kernel."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None and int(fields[1]) == pid:
            out.append(int(name))
    return sorted(out)


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for child in children(pid):
        pids.extend(process_tree(child))
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the given processes (fields 14 and 15 of /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def pss_bytes(pids: Iterable[int]) -> int:
    """Proportional set size: pages shared between a master and its forked workers (or with
    other processes) count once in total instead of once per process, unlike RSS."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the PID, it names one process even if PIDs are reused."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def pin_tree(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of `pid` and of its descendants (affinity is per thread on Linux)."""
    mask = cpus if cpus is not None else set(range(os.cpu_count() or 1))
    for p in process_tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass


# -- helpers ---------------------------------------------------------------------------


def free_port() -> int:
    """A port that is free now (the kernel's choice); the window until it is bound is tiny."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    cmd: Sequence[str],
    cpus: set[int] | None,
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout: Any = subprocess.PIPE,
    stderr: Any = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a helper; `cpus` pins it before it runs any code, so its threads inherit the mask."""

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        list(cmd), stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, preexec_fn=pin
    )


def read_json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The next JSON line a helper prints, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer from {proc.args!r} within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1)  # byte by byte: never read past the line into the pipe's future
        if not chunk:
            raise RuntimeError(f"{proc.args!r} exited (code {proc.wait(5)}) without answering")
        buf += chunk
    return json.loads(buf)  # type: ignore[no-any-return]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal one process we started, wait for it, and kill it (and only it) if it lingers."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- servers under test and the nginx banner backend -----------------------------------------


class StartError(RuntimeError):
    """The server exited at startup, typically refusing the configuration: `reason` is its
    message ('unknown directive "proxy_cache" in ...')."""

    def __init__(self, name: str, reason: str, prefix: str) -> None:
        super().__init__(f"{name} exited at startup: {reason} (see {prefix}/logs/)")
        self.reason = reason


def _strip_log_prefix(line: str) -> str:
    """'2026/11/26 13:01:23 [emerg] 4082#0: unknown ...' or 'pyngx: [emerg] unknown ...' →
    '[emerg] unknown ...'."""
    at = line.find(" [")
    if at < 0 or line.startswith("["):
        return line
    rest = line[at + 1 :]
    level_end = rest.find("] ")
    if level_end < 0:
        return line
    level, text = rest[: level_end + 1], rest[level_end + 2 :]
    pid, sep, msg = text.partition(": ")
    if sep and pid.partition("#")[0].isdigit():
        text = msg
    return f"{level} {text}"


class Server:
    """nginx or pyngx run as a master with workers, from a prefix directory of its own."""

    def __init__(self, name: str, argv: Sequence[str], prefix: str, workers: int) -> None:
        self.name = name
        self.argv = list(argv)
        self.prefix = prefix
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid_path = os.path.join(prefix, "logs", f"{name}.pid")
        self.error_log = os.path.join(prefix, "logs", "error.log")
        self.conf_path = os.path.join(prefix, "conf", "bench.conf")

    def write_conf(self, text: str) -> None:
        os.makedirs(os.path.join(self.prefix, "logs"), exist_ok=True)
        os.makedirs(os.path.join(self.prefix, "conf"), exist_ok=True)
        with open(self.conf_path, "w") as f:
            f.write(text)

    def header(self, cpu_affinity: str | None, nofile: int) -> str:
        """The main-level directives both nginx and pyngx read the same way."""
        lines = []
        if os.path.exists(STREAM_MODULE):
            lines.append(f"load_module {STREAM_MODULE};")  # pyngx accepts and ignores it
        lines += [
            "daemon off;",
            "master_process on;",
            f"worker_processes {self.workers};",
            f"worker_rlimit_nofile {nofile};",
        ]
        if cpu_affinity:
            lines.append(f"worker_cpu_affinity {cpu_affinity};")
        lines += [
            f"pid {self.pid_path};",
            f"error_log {self.error_log} error;",
            "events { worker_connections 20000; }",
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until the pid file names our master and all workers are forked."""
        try:
            os.unlink(self.pid_path)
        except FileNotFoundError:
            pass
        cmd = [*self.argv, "-p", self.prefix, "-c", self.conf_path, "-e", self.error_log]
        with open(os.path.join(self.prefix, "logs", "stderr.log"), "ab") as out:
            # Its own session: a Ctrl-C on the bench reaches the bench, which stops it by PID.
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(self.name, self.startup_error(), self.prefix)
            if self._pid_file() == self.proc.pid and len(children(self.proc.pid)) >= self.workers:
                time.sleep(0.3)  # let the workers reach their event loops
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not start within {timeout:.0f}s")

    def startup_error(self) -> str:
        """Why it exited at startup: the last [emerg]/[alert] line it wrote (the error log may
        not be open yet when the configuration is refused, so stderr is read too)."""
        lines: list[str] = []
        for path in (os.path.join(self.prefix, "logs", "stderr.log"), self.error_log):
            try:
                with open(path, errors="replace") as f:
                    # A message may lack its newline; "\n" and the program's prefix split them.
                    lines += f.read().replace(" nginx: [", "\nnginx: [").splitlines()
            except OSError:
                pass
        worst = [ln for ln in lines if "[emerg]" in ln or "[alert]" in ln] or lines
        return _strip_log_prefix(worst[-1].strip()) if worst else "no message"

    def _pid_file(self) -> int | None:
        try:
            with open(self.pid_path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        workers = [(pid, start_time(pid)) for pid in self.pids()[1:]]
        try:
            stop(self.proc, signal.SIGTERM, timeout)
        finally:
            # Workers that outlived their master: only the processes we saw under it (same PID
            # and same start time, so a reused PID is never hit).
            for pid, started in workers:
                if started is not None and start_time(pid) == started:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.proc = None

    def error_lines(self) -> list[str]:
        """Lines at error level or worse in the error log (the config logs nothing below)."""
        try:
            with open(self.error_log, errors="replace") as f:
                return [line.rstrip("\n") for line in f]
        except OSError:
            return []
