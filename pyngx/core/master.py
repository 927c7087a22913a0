"""The master process: binds sockets, writes the pid file, supervises workers, handles signals.

Signals are blocked and collected with sigtimedwait, as nginx's master waits in sigsuspend and
acts on flags: no work ever runs inside a signal handler (gunicorn #3198, #2667).

- HUP: load the configuration anew; if it is bad, log why and keep serving the old one. If it
  is good, open only the sockets not already open, start new workers, then tell the old ones
  to finish their connections (QUIT). The listening sockets are shared, so no connection is
  refused while reloading.
- QUIT: graceful stop; TERM/INT: fast stop (then SIGKILL after FAST_STOP_KILL_AFTER);
  USR1: reopen log files here and in the workers.
- A worker that dies unexpectedly is replaced.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass, field

from pyngx.conf.errors import ConfigError
from pyngx.core.cycle import Cycle, load_cycle
from pyngx.core.listening import ListenGroup, SocketTable, plan
from pyngx.core.log import ALERT, EMERG, NOTICE, WARN, report
from pyngx.core.worker import (
    WORKER_FATAL_EXIT,
    WORKER_SIGNALS,
    ConnectionCounter,
    Worker,
    worker_process,
)

MASTER_SIGNALS = (*WORKER_SIGNALS, signal.SIGCHLD, signal.SIGWINCH, signal.SIGUSR2)
FAST_STOP_KILL_AFTER = 5.0
RESPAWN_GRACE = 1.0
# What nginx's master adds to "signal N (NAME) received from PID" (ngx_signal_handler).
SIGNAL_ACTIONS = {
    signal.SIGHUP: ", reconfiguring",
    signal.SIGQUIT: ", shutting down",
    signal.SIGTERM: ", exiting",
    signal.SIGINT: ", exiting",
    signal.SIGUSR1: ", reopening logs",
}
SIGNAL_NAMES = {
    signal.SIGHUP: "SIGHUP",
    signal.SIGQUIT: "SIGQUIT",
    signal.SIGTERM: "SIGTERM",
    signal.SIGINT: "SIGINT",
    signal.SIGUSR1: "SIGUSR1",
    signal.SIGUSR2: "SIGUSR2",
    signal.SIGCHLD: "SIGCHLD",
    signal.SIGWINCH: "SIGWINCH",
}


class StartupError(Exception):
    """Startup failed after the configuration was loaded (bind, pid file); exit 1."""


@dataclass(slots=True)
class Generation:
    cycle: Cycle
    groups: list[ListenGroup]
    sockets: dict[tuple[object, ...], list[socket.socket]]
    pids: set[int] = field(default_factory=set)


def bind_cycle(cycle: Cycle, table: SocketTable, *, startup: bool = False) -> Generation:
    """Open the cycle's sockets. At start-up, failures also go to the console, as nginx's do."""
    groups = plan(cycle.listen_targets())

    def log(level: int, message: str) -> None:
        if startup:
            report(cycle.error_log, level, message)
        else:
            cycle.error_log.log(level, message)

    try:
        sockets = table.open_for(groups, cycle.main.worker_processes, log)
    except OSError as exc:
        raise StartupError(exc.strerror or str(exc)) from None
    return Generation(cycle, groups, sockets)


def write_pid(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StartupError(
            f'open() "{path}" failed ({exc.errno}: {os.strerror(exc.errno or 0)})'
        ) from None


def remove_pid(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def _sockets_for_worker(gen: Generation, index: int) -> list[tuple[ListenGroup, socket.socket]]:
    out = []
    for g in gen.groups:
        socks = gen.sockets[g.key]
        out.append((g, socks[index] if g.opts.reuseport else socks[0]))
    return out


def _close_others(
    mine: list[tuple[ListenGroup, socket.socket]],
    tables: list[dict[tuple[object, ...], list[socket.socket]]],
) -> None:
    """In a new worker: close the inherited listening sockets it does not serve.

    A copy kept open here keeps a socket listening after the master and its real users closed
    theirs: a port removed by a reload, or by QUIT another worker's reuseport socket, would
    go on completing handshakes that nobody accepts instead of refusing connections.
    Plain close(), never unlink(): a unix socket's path still belongs to the master.
    """
    keep = {id(s) for _, s in mine}
    for table in tables:
        for socks in table.values():
            for s in socks:
                if id(s) not in keep:
                    s.close()


def _set_parent_death_signal(sig: int) -> None:
    """Ask Linux to signal this worker when the master dies, so no orphan keeps ports."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Master:
    def __init__(self, gen: Generation, table: SocketTable, paths_globals: tuple[object, ...]):
        self.gen = gen
        self.table = table
        self.paths, self.global_directives = paths_globals
        self.old: list[Generation] = []
        self.counter = ConnectionCounter()
        self.stopping: str | None = None  # "quit" or "term"
        self.kill_at: float | None = None
        self.index_of: dict[int, int] = {}
        self.spawned_at: dict[int, float] = {}
        self.respawn_due: list[tuple[float, int]] = []

    @property
    def log(self):  # type: ignore[no-untyped-def]
        return self.gen.cycle.error_log

    def spawn(self, gen: Generation, index: int) -> int:
        pid = os.fork()
        if pid == 0:
            _set_parent_death_signal(signal.SIGQUIT)
            try:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_DFL)
                for other in [*self.old, self.gen]:
                    if other is not gen:
                        other.cycle.files.close()
                mine = _sockets_for_worker(gen, index)
                _close_others(mine, [self.table.sockets, gen.sockets])
            except BaseException:
                os._exit(WORKER_FATAL_EXIT)
            worker_process(gen.cycle, mine, index, self.counter)
        gen.pids.add(pid)
        self.index_of[pid] = index
        self.spawned_at[pid] = time.monotonic()
        self.log.log(NOTICE, f"start worker process {pid}")
        return pid

    def start_workers(self, gen: Generation) -> None:
        self.log.log(NOTICE, "start worker processes")
        for i in range(gen.cycle.main.worker_processes):
            self.spawn(gen, i)

    def run(self) -> int:
        self.log.log(NOTICE, 'using the "epoll" event method')
        self.start_workers(self.gen)
        while True:
            timeout = 1.0
            if self.kill_at is not None:
                timeout = max(0.05, min(timeout, self.kill_at - time.monotonic()))
            info = signal.sigtimedwait(MASTER_SIGNALS, timeout)
            if info is not None:
                self.on_signal(info.si_signo, info.si_pid)
            self.reap()
            self.respawn_delayed()
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.signal_all(signal.SIGKILL)
                self.kill_at = None
            if self.stopping and not self.all_pids():
                break
        self.log.log(NOTICE, "exit")
        self.table.close_all()
        remove_pid(self.gen.cycle.pid_path)
        return 0

    def respawn_delayed(self) -> None:
        now = time.monotonic()
        due = [index for at, index in self.respawn_due if at <= now]
        self.respawn_due = [(at, index) for at, index in self.respawn_due if at > now]
        if not self.stopping:
            for index in due:
                self.spawn(self.gen, index)

    def all_pids(self) -> set[int]:
        pids = set(self.gen.pids)
        for g in self.old:
            pids |= g.pids
        return pids

    def signal_all(self, sig: int) -> None:
        for pid in self.all_pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def on_signal(self, signo: int, sender: int) -> None:
        name = SIGNAL_NAMES.get(signo, str(signo))
        action = SIGNAL_ACTIONS.get(signo, "")
        self.log.log(NOTICE, f"signal {signo} ({name}) received from {sender}{action}")
        if signo == signal.SIGHUP:
            if not self.stopping:
                self.reload()
        elif signo == signal.SIGQUIT:
            self.stopping = self.stopping or "quit"
            self.signal_all(signal.SIGQUIT)
            self.table.close_all()
        elif signo in (signal.SIGTERM, signal.SIGINT):
            self.stopping = "term"
            self.signal_all(signal.SIGTERM)
            self.table.close_all()
            self.kill_at = time.monotonic() + FAST_STOP_KILL_AFTER
        elif signo == signal.SIGUSR1:
            self.log.log(NOTICE, "reopening logs")
            for error in self.gen.cycle.files.reopen():
                self.log.log(EMERG, error)
            self.signal_all(signal.SIGUSR1)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.worker_exited(pid, status)

    def worker_exited(self, pid: int, status: int) -> None:
        """As nginx's ngx_process_get_status and ngx_reap_children."""
        code: int | None = None
        if os.WIFSIGNALED(status):
            core = " (core dumped)" if os.WCOREDUMP(status) else ""
            self.log.log(
                ALERT, f"worker process {pid} exited on signal {os.WTERMSIG(status)}{core}"
            )
        else:
            code = os.WEXITSTATUS(status)
            self.log.log(NOTICE, f"worker process {pid} exited with code {code}")
        index = self.index_of.pop(pid, 0)
        if pid in self.gen.pids:
            self.gen.pids.discard(pid)
            if code == WORKER_FATAL_EXIT:
                # It failed before serving (bad user, ...): respawning would only loop.
                self.log.log(
                    ALERT,
                    f"worker process {pid} exited with fatal code {code} and cannot be respawned",
                )
            elif not self.stopping:
                # Whatever the reason, even a QUIT sent to the worker itself: the master did
                # not ask it to go, so the service keeps its number of workers. One that dies
                # within RESPAWN_GRACE of its start is replaced after that delay, so a worker
                # that cannot run does not turn the master into a fork loop.
                lived = time.monotonic() - self.spawned_at.pop(pid, 0.0)
                if lived < RESPAWN_GRACE:
                    self.respawn_due.append((time.monotonic() + RESPAWN_GRACE, index))
                else:
                    self.spawn(self.gen, index)
            return
        for g in list(self.old):
            if pid in g.pids:
                g.pids.discard(pid)
                if not g.pids:
                    g.cycle.files.close()
                    self.old.remove(g)

    def reload(self) -> None:
        self.log.log(NOTICE, "reconfiguring")
        try:
            cycle = load_cycle(self.paths, self.global_directives)  # type: ignore[arg-type]
        except ConfigError as exc:
            self.log.log(EMERG, str(exc))
            return
        for warning in cycle.warnings:
            self.log.log(WARN, warning)
        try:
            gen = bind_cycle(cycle, self.table)
        except StartupError as exc:
            self.log.log(EMERG, str(exc))
            cycle.files.close()
            return
        if cycle.pid_path != self.gen.cycle.pid_path:
            try:
                write_pid(cycle.pid_path)
            except StartupError as exc:
                self.log.log(EMERG, str(exc))
            else:
                remove_pid(self.gen.cycle.pid_path)
        old = self.gen
        self.gen = gen
        self.respawn_due.clear()  # the new generation starts its full set of workers
        self.start_workers(gen)
        for pid in old.pids:
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
        self.table.commit(gen.sockets)
        if old.pids:
            self.old.append(old)
        else:
            old.cycle.files.close()


def run_single(gen: Generation) -> int:
    """`master_process off`: serve in this process (nginx's single-process mode)."""
    worker = Worker(gen.cycle, _sockets_for_worker(gen, 0), 0, channel=False)
    try:
        return worker.run()
    finally:
        remove_pid(gen.cycle.pid_path)
        gen.cycle.error_log.log(NOTICE, "exit")


def block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
