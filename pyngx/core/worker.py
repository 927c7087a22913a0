"""A worker process: one uvloop event loop serving the listening sockets of one cycle.

Signals (from the master or the user): QUIT stops accepting and lets sessions finish (bounded
by `worker_shutdown_timeout`), TERM/INT drop everything and exit, USR1 reopens log files.
Exceptions inside a connection's callbacks are logged and cost only that connection.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from pyngx.core.cycle import Cycle
from pyngx.core.epoll_io import Listener, Reactor
from pyngx.core.listening import ListenGroup
from pyngx.core.log import ALERT, EMERG, INFO, NOTICE, strerror
from pyngx.http.connection import HttpConnection
from pyngx.http.module import HttpPort
from pyngx.stream import udp
from pyngx.stream.health import HealthCheckers, start_health_checks
from pyngx.stream.resolver import UpstreamResolvers, start_resolvers
from pyngx.stream.session import STATUS_OK, ClientSide

# Exit status of a worker that could not start (nginx's: the master does not respawn it).
WORKER_FATAL_EXIT = 2
WORKER_SIGNALS = (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


class ConnectionCounter:
    """$connection numbers, unique across the workers of a master (shared memory).

    Each worker takes a block of COUNTER_BLOCK numbers under the lock and hands them out
    locally: unique like nginx's shared atomic counter, without a lock per connection.
    """

    COUNTER_BLOCK = 64

    def __init__(self) -> None:
        import multiprocessing

        self._value = multiprocessing.Value("Q", 0)
        self._next = self._end = 0

    def next(self) -> int:
        n = self._next
        if n >= self._end:
            v = self._value
            with v.get_lock():
                n = int(v.value) + 1
                v.value = n - 1 + self.COUNTER_BLOCK
            self._end = n + self.COUNTER_BLOCK
        self._next = n + 1
        return n


class _LocalCounter:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


class DispatchingClientSide(ClientSide):
    """For a wildcard socket that also serves specific addresses of its port (nginx's way)."""

    __slots__ = ("group",)

    def __init__(self, worker: Worker, group: ListenGroup) -> None:
        assert group.default is not None
        super().__init__(worker, *group.default)
        self.group = group

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        host = transport.get_extra_info("sockname")[0]
        target = self.group.by_addr.get(host)
        if target is not None:
            self.server, self.listen = target
            self.download_rate = self.server.download_rate
            self.upload_rate = self.server.upload_rate
        super().connection_made(transport)


def _plain_stream(group: ListenGroup) -> bool:
    """A TCP or unix stream listener whose servers need nothing of a uvloop transport: no
    `listen ... ssl` (start_tls) and no `pass` (which may hand the connection to one)."""
    if group.opts.udp or group.default is None:
        return False
    for target in (group.default, *group.by_addr.values()):
        server, listen = target  # type: ignore[misc]
        if isinstance(server, HttpPort) or listen.ssl or server.pass_to is not None:
            return False
    return True


class Worker:
    def __init__(
        self,
        cycle: Cycle,
        groups: list[tuple[ListenGroup, socket.socket]],
        index: int,
        counter: ConnectionCounter | _LocalCounter | None = None,
        *,
        channel: bool = True,
    ) -> None:
        self.cycle = cycle
        self.groups = groups
        self.index = index
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.sessions: set[ClientSide] = set()
        self.http = cycle.http
        self.http_connections: set[HttpConnection] = set()
        # Groups made at run time for `proxy_pass $variable` addresses, kept so that their
        # balancer state (failures, round robin position) lasts across sessions.
        self.implicit_groups: dict[str, Any] = {}
        self.servers: list[Any] = []
        self.counter = counter or _LocalCounter()
        self.worker_connections = cycle.main.worker_connections
        # nginx spends worker_connections on every connection of the worker, not only on
        # sessions: one per listening socket it serves, and one for the channel to the master
        # (none with `master_process off`). Counted the same, the limit admits as many
        # sessions as nginx's does (1 with `worker_connections 4` and one listen).
        self.reserved_connections = len(groups) + int(channel)
        self.under_master = channel
        self.draining = False
        self.exit_code = 0
        self._stopped: asyncio.Future[None] | None = None
        self.health: HealthCheckers | None = None
        self.resolvers: UpstreamResolvers | None = None
        self.cache_processes: Any = None  # proxy_cache loader/manager (worker 0)
        # Plain stream sockets (listeners and upstream connects) on an epoll of our own.
        self.reactor: Reactor | None = None

    # -- used by sessions --------------------------------------------------------------

    def next_connection_id(self) -> int:
        return self.counter.next()

    def over_connection_limit(self) -> bool:
        # nginx counts the client and the upstream connection of each session.
        used = len(self.sessions) * 2 + len(self.http_connections) + self.reserved_connections
        return used > self.worker_connections

    def session_closed(self, session: ClientSide) -> None:
        self.sessions.discard(session)
        if self.draining and not self.sessions:
            self.loop.call_soon(self._stop_if_idle)  # not now: see graceful()

    def http_connection_closed(self, conn: HttpConnection) -> None:
        if self.draining and not self.http_connections:
            self.loop.call_soon(self._stop_if_idle)

    def worker_log(self, level: int, message: str) -> None:
        self.cycle.error_log.log(level, message)

    # -- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        import uvloop

        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self._exception_handler)
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> int:
        loop = self.loop
        self._stopped = loop.create_future()
        for sig, handler in (
            (signal.SIGQUIT, self.graceful),
            (signal.SIGTERM, self.fast),
            (signal.SIGINT, self.fast),
            (signal.SIGUSR1, self.reopen),
        ):
            loop.add_signal_handler(sig, handler)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
        # Before the listeners: `mandatory` checks must mark their peers before any client.
        self.health = start_health_checks(loop, self.cycle.health_checks)
        # `server ... resolve` names: their groups have no peers until the first answer.
        self.resolvers = start_resolvers(loop, self.cycle.stream_servers, self.cycle.error_log)
        from pyngx.http.cache.manager import start_cache_processes

        self.cache_processes = start_cache_processes(self)
        if self.cycle.stream_servers:
            # Plain stream listeners and upstream connects (core/epoll_io.py). Tried for
            # http's upstream connections too: S4 got slower (more reopened keepalive
            # connections, each request's upstream bytes through Python), so http keeps uvloop.
            self.reactor = Reactor(loop)
        for group, sock in self.groups:
            if group.opts.udp:
                # Its close() (graceful or fast) ends its sessions: no socket, no session.
                self.servers.append(await udp.serve(self, group, sock))
                continue
            factory = self._factory(group)
            if _plain_stream(group):
                assert self.reactor is not None
                self.servers.append(Listener(self.reactor, sock, factory, self._accept_failed))
                continue
            ssl_ctx = self._http_ssl(group)
            server = await loop.create_server(
                factory, sock=sock, backlog=group.opts.backlog, ssl=ssl_ctx
            )
            self.servers.append(server)
        self._start_flush_timers()
        await self._stopped
        if self.reactor is not None:
            self.reactor.close()
        if self.health is not None:
            self.health.cancel()
            await self.health.wait_closed()
        if self.resolvers is not None:
            self.resolvers.cancel()
            await self.resolvers.wait_closed()
        if self.under_master:
            self.cycle.error_log.log(NOTICE, "exiting")
        self._flush_access_logs()
        return self.exit_code

    def _factory(self, group: ListenGroup) -> Callable[[], Any]:
        assert group.default is not None
        target = group.default[0]
        if isinstance(target, HttpPort):
            by_addr = {host: t[0] for host, t in group.by_addr.items()} or None
            return lambda: HttpConnection(self, target, by_addr)
        if group.by_addr:
            return lambda: DispatchingClientSide(self, group)
        server, listen = group.default  # type: ignore[misc]
        return lambda: ClientSide(self, server, listen)

    def _accept_failed(self, exc: OSError) -> None:
        # nginx: ALERT, but ERR for ECONNABORTED (which Listener skips quietly).
        self.cycle.error_log.log(ALERT, f"accept4() failed {strerror(exc.errno or 0)}")

    def _http_ssl(self, group: ListenGroup) -> Any:
        assert group.default is not None
        target = group.default[0]
        if isinstance(target, HttpPort) and target.ssl is not None:
            return target.ssl
        return None

    def _stop(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _close_listeners(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()

    def graceful(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.cycle.error_log.log(NOTICE, "gracefully shutting down")
        self._close_listeners()
        self._stop_health_checks()
        # A connection accepted just before the listeners closed may have its connection_made
        # still queued (uvloop calls it soon, not at accept), so it is not yet in `sessions`.
        # Every look at `sessions` from here on is a callback queued after this one, so after
        # that connection_made: stopping earlier would drop the client unserved.
        for conn in list(self.http_connections):
            conn.close_if_idle()
        self.loop.call_soon(self._stop_if_idle)
        timeout = self.cycle.main.worker_shutdown_timeout
        if timeout is not None:
            self.loop.call_later(timeout, self._shutdown_timeout)

    def _shutdown_timeout(self) -> None:
        # As nginx's shutdown timer: each session still open is logged and ended as by its
        # own end (access log line, status 200), then whatever is left is dropped.
        for s in list(self.sessions):
            s.log(INFO, "shutdown timeout while proxying connection")
            s.finalize(STATUS_OK)
        for conn in list(self.http_connections):
            conn.abort()
        self.fast()

    def _stop_if_idle(self) -> None:
        if not self.sessions and not self.http_connections:
            self._stop()

    def fast(self) -> None:
        self._close_listeners()
        self._stop_health_checks()
        for s in list(self.sessions):
            s.abort()
        self.sessions.clear()
        for conn in list(self.http_connections):
            conn.abort()
        self.http_connections.clear()
        self._stop()

    def _stop_health_checks(self) -> None:
        # A leaving worker no longer picks peers for new sessions, and after a reload the new
        # workers probe the same peers: probing on would only double the load on them.
        if self.health is not None:
            self.health.cancel()
        # Likewise the resolver tasks: a draining worker's sessions already hold their peers.
        if self.resolvers is not None:
            self.resolvers.cancel()
        # The new generation's worker 0 takes over the cache manager.
        if self.cache_processes is not None:
            self.cache_processes.cancel()

    def reopen(self) -> None:
        self.cycle.error_log.log(NOTICE, "reopening logs")
        # Lines buffered before the signal belong in the file they were written for.
        self._flush_access_logs()
        for error in self.cycle.files.reopen():
            self.cycle.error_log.log(EMERG, error)

    def _start_flush_timers(self) -> None:
        """`access_log ... flush=time`: buffered lines never wait longer than that."""
        seen: set[int] = set()
        for log in self._all_access_logs():
            if True:
                if log.flush and id(log) not in seen:
                    seen.add(id(log))
                    self.loop.call_later(log.flush, self._flush_tick, log)

    def _all_access_logs(self) -> list[Any]:
        logs = [log for server in self.cycle.stream_servers for log in server.access_logs]
        if self.http is not None:
            logs.extend(self.http.access_logs)
        return logs

    def _flush_tick(self, log: Any) -> None:
        log.flush_now()
        if self._stopped is not None and not self._stopped.done():
            self.loop.call_later(log.flush, self._flush_tick, log)

    def _flush_access_logs(self) -> None:
        """Write out `access_log ... buffer=` lines, as nginx does on exit and before reopening
        (ngx_conf_flush_files, ngx_reopen_files): a stopping worker must not lose them."""
        seen: set[int] = set()
        for log in self._all_access_logs():
            if True:
                if id(log) not in seen:
                    seen.add(id(log))
                    log.flush_now()

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = context.get("message", "unhandled exception")
        if exc is not None:
            message = f"{message}: {type(exc).__name__}: {exc}"
        self.cycle.error_log.log(ALERT, message)


def worker_process(
    cycle: Cycle,
    groups: list[tuple[ListenGroup, socket.socket]],
    index: int,
    counter: ConnectionCounter,
) -> None:
    """Entry point in the forked child; never returns."""
    code = WORKER_FATAL_EXIT
    try:
        _apply_process_settings(cycle, index)
        worker = Worker(cycle, groups, index, counter)
        # Everything allocated so far lives as long as the worker: keep the cyclic collector
        # from walking it again and again (and from touching pages shared with the master).
        gc.freeze()
        code = 1  # set up: from here a failure is a crash, and the master respawns it
        code = worker.run()
        cycle.error_log.log(NOTICE, "exit")
    except BaseException as exc:  # the worker must leave through os._exit, whatever happens
        try:
            cycle.error_log.log(ALERT, f"worker process failed: {type(exc).__name__}: {exc}")
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os._exit(code)


def _apply_process_settings(cycle: Cycle, index: int) -> None:
    main = cycle.main
    _apply_env(main.env)
    if main.worker_priority:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, main.worker_priority)
        except OSError as exc:
            cycle.error_log.log(ALERT, f"setpriority({main.worker_priority}) failed ({exc})")
    if main.worker_rlimit_nofile:
        import resource

        try:
            n = main.worker_rlimit_nofile
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (OSError, ValueError) as exc:
            cycle.error_log.log(ALERT, f"setrlimit(RLIMIT_NOFILE, {n}) failed ({exc})")
    if main.worker_cpu_affinity:
        mask = main.worker_cpu_affinity[min(index, len(main.worker_cpu_affinity) - 1)]
        try:
            os.sched_setaffinity(0, mask)
        except OSError as exc:
            cycle.error_log.log(ALERT, f"sched_setaffinity() failed ({exc})")
    if main.user is not None and os.geteuid() == 0:
        import grp
        import pwd

        user, group = main.user
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        os.setgid(gid)
        os.initgroups(user, gid)
        os.setuid(pw.pw_uid)


def _apply_env(specs: tuple[str, ...]) -> None:
    """nginx's `env`: workers keep only TZ and the variables named (or set) by `env`."""
    keep: dict[str, str] = {}
    if "TZ" in os.environ:
        keep["TZ"] = os.environ["TZ"]
    for spec in specs:
        name, eq, value = spec.partition("=")
        if eq:
            keep[name] = value
        elif name in os.environ:
            keep[name] = os.environ[name]
    os.environ.clear()
    os.environ.update(keep)
