"""The cycle: one loaded configuration, compiled into the objects the processes run.

`load_cycle` parses the main file (and `-g` directives, which nginx applies first), walks the
tree through the registry, merges every level, opens log files and resolves upstreams. Any
problem raises ConfigError with nginx's wording, before a socket is touched, so `-t`, startup
and reload all fail the same way and a running server keeps its old cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import COMMAND_LINE, ConfigError, DirectiveValueError
from pyngx.conf.parser import parse_config, parse_string
from pyngx.conf.registry import Context, Registry
from pyngx.core import main_module
from pyngx.core.log import ErrorLog, LogTarget, OpenFiles
from pyngx.core.main_module import ErrorLogSpec, MainConf
from pyngx.core.paths import DEFAULT_ERROR_LOG, DEFAULT_PID_PATH, Paths
from pyngx.http import module as http_module
from pyngx.http.modules import register_http
from pyngx.stream import access as stream_access
from pyngx.stream import health as stream_health
from pyngx.stream import module as stream_module
from pyngx.stream import pass_module as stream_pass
from pyngx.stream import pitfalls
from pyngx.stream import resolver as stream_resolver
from pyngx.stream import upstream as stream_upstream
from pyngx.stream.health import HealthCheck
from pyngx.stream.module import StreamServer


def build_registry() -> Registry:
    reg = Registry()
    main_module.register(reg)
    stream_module.register(reg)
    stream_upstream.register(reg)
    stream_pass.register(reg)
    stream_resolver.register(reg)
    stream_health.register(reg)
    stream_access.register(reg)  # allow/deny and the limit_conn directives
    register_http(reg)
    return reg


REGISTRY = build_registry()


@dataclass(slots=True)
class Cycle:
    paths: Paths
    main: MainConf
    error_log: ErrorLog
    files: OpenFiles
    stream_servers: list[StreamServer]
    conf_files: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Active health checks (pyngx/stream/health.py); each worker runs its own.
    health_checks: list[HealthCheck] = field(default_factory=list)
    http: http_module.HttpConf | None = None

    def listen_targets(self) -> list[Any]:
        """Everything with `listens` that core.listening.plan turns into sockets."""
        return [*self.stream_servers, *(self.http.ports if self.http else ())]

    @property
    def pid_path(self) -> str:
        return self.main.pid_path


def load_cycle(
    paths: Paths, global_directives: str | None = None, default_error_log: str | None = None
) -> Cycle:
    """Parse, check and compile the configuration; raise ConfigError on any problem."""
    root = Context("main", REGISTRY)
    if global_directives:
        root.run(parse_string(global_directives, COMMAND_LINE, conf_prefix=paths.conf_prefix))
    parsed = parse_config(paths.conf_path, conf_prefix=paths.conf_prefix)
    root.run(parsed.nodes)
    files = OpenFiles()
    try:
        try:
            main = main_module.build_main(root, paths.full)
        except DirectiveValueError as exc:
            raise ConfigError(exc.text) from None
        if not main.pid_path:
            main = _replace(main, pid_path=DEFAULT_PID_PATH)
        main = _replace(main, pid_path=paths.full(main.pid_path))
        specs = main.error_logs or (ErrorLogSpec(default_error_log or DEFAULT_ERROR_LOG, 3),)

        def make_error_log(specs: list[ErrorLogSpec] | tuple[ErrorLogSpec, ...]) -> ErrorLog:
            targets = []
            for spec in specs:
                try:
                    targets.append(LogTarget(files.open(paths.full(spec.path)), spec.level))
                except OSError as exc:
                    raise ConfigError(str(exc.strerror)) from None
            return ErrorLog(targets)

        error_log = make_error_log(specs)

        def open_file(path: str) -> object:
            return files.open(paths.full(path))

        servers: list[StreamServer] = []
        checks: list[HealthCheck] = []
        stream = root.local("stream")
        if stream is not None:
            servers = stream_module.build(stream, open_file, make_error_log, error_log)
            checks = stream_health.build(stream, servers)
        http_conf = None
        http = root.local("http")
        if http is not None:
            http_conf = http_module.build(http, open_file, make_error_log, error_log, paths.full)
    except BaseException:
        files.close()
        raise
    stream_ctx = root.local("stream")
    warnings = [
        *root.slots.get("__warnings__", []),
        *pitfalls.check(servers),
        *pitfalls.check_preread_variables(stream_ctx.node if stream_ctx else None, servers),
    ]
    return Cycle(paths, main, error_log, files, servers, parsed.files, warnings, checks, http_conf)


def _replace(main: MainConf, **changes: object) -> MainConf:
    from dataclasses import replace

    return replace(main, **changes)  # type: ignore[arg-type]
