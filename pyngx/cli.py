"""pyngx's command line, flag for flag nginx's: -h -v -V -t -T -q -s -p -e -c -g.

Messages go to stderr prefixed `pyngx: `, as nginx prefixes `nginx: `; nothing is printed on
stdout except what -T dumps. Exit status is 0 on success and 1 on any error.
"""

from __future__ import annotations

import os
import signal
import ssl
import sys
from dataclasses import dataclass

from pyngx import NGINX_COMPAT_VERSION, __version__
from pyngx.conf.errors import ConfigError
from pyngx.core.paths import (
    DEFAULT_CONF_PATH,
    DEFAULT_ERROR_LOG,
    DEFAULT_PID_PATH,
    DEFAULT_PREFIX,
    make_paths,
)

PROG = "pyngx"
VERSION_LINE = f"nginx version: nginx/{NGINX_COMPAT_VERSION} (pyngx/{__version__})"
SIGNALS = {
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reopen": signal.SIGUSR1,
    "reload": signal.SIGHUP,
}
# What is built in, in the form tools that probe `nginx -V` look for (never `=dynamic`).
MODULE_FLAGS = (
    "--with-stream",
    "--with-stream_realip_module",
    "--with-stream_ssl_module",
    "--with-stream_ssl_preread_module",
    "--with-http_ssl_module",
    "--with-http_realip_module",
    "--with-http_v2_module",
    "--with-http_stub_status_module",
    "--with-threads",
)

USAGE = f"""Usage: {PROG} [-?hvVtTq] [-s signal] [-p prefix]
             [-e filename] [-c filename] [-g directives]

Options:
  -?,-h         : this help
  -v            : show version and exit
  -V            : show version and configure options then exit
  -t            : test configuration and exit
  -T            : test configuration, dump it and exit
  -q            : suppress non-error messages during configuration testing
  -s signal     : send signal to a master process: stop, quit, reopen, reload
  -p prefix     : set prefix path (default: {DEFAULT_PREFIX})
  -e filename   : set error log file (default: {DEFAULT_ERROR_LOG})
  -c filename   : set configuration file (default: {DEFAULT_CONF_PATH})
  -g directives : set global directives out of configuration file
"""


class UsageError(Exception):
    pass


@dataclass
class Options:
    help: bool = False
    version: bool = False
    configure: bool = False
    test: bool = False
    dump: bool = False
    quiet: bool = False
    signal: str | None = None
    prefix: str | None = None
    error_log: str | None = None
    conf: str | None = None
    directives: str | None = None


_ARG_NAMES = {
    "p": "directory name",
    "e": "file name",
    "c": "file name",
    "g": "parameter",
    "s": "parameter",
}


def parse_args(argv: list[str]) -> Options:
    """nginx's ngx_get_options: flags may be grouped (`-tq`); values follow or are attached."""
    o = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or len(arg) < 2:
            raise UsageError(f'invalid option: "{arg}"')
        j = 1
        while j < len(arg):
            ch = arg[j]
            j += 1
            if ch in "?h":
                o.help = True
            elif ch == "v":
                o.version = True
            elif ch == "V":
                o.version = o.configure = True
            elif ch == "t":
                o.test = True
            elif ch == "T":
                o.test = o.dump = True
            elif ch == "q":
                o.quiet = True
            elif ch in _ARG_NAMES:
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise UsageError(f'option "-{ch}" requires {_ARG_NAMES[ch]}')
                if ch == "p":
                    o.prefix = value
                elif ch == "e":
                    o.error_log = value
                elif ch == "c":
                    o.conf = value
                elif ch == "g":
                    o.directives = value
                else:
                    if value not in SIGNALS:
                        raise UsageError(f'invalid option: "-s {value}"')
                    o.signal = value
                break
            else:
                raise UsageError(f'invalid option: "{arg[j - 1 :]}"')
    return o


def err(message: str) -> None:
    try:
        os.write(2, f"{PROG}: {message}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def ensure_std_fds() -> None:
    """Started with fds 0-2 closed, later opens must not land on them: fill them with /dev/null."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def show_version(configure: bool) -> None:
    lines = [VERSION_LINE]
    if configure:
        lines.append(f"built by CPython {sys.version.split()[0]}")
        lines.append(f"built with {ssl.OPENSSL_VERSION}")
        lines.append("TLS SNI support enabled")
        lines.append(
            f"configure arguments: --prefix={DEFAULT_PREFIX} --conf-path={DEFAULT_CONF_PATH}"
            f" --error-log-path={DEFAULT_ERROR_LOG} --pid-path={DEFAULT_PID_PATH} "
            + " ".join(MODULE_FLAGS)
        )
    os.write(2, ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    ensure_std_fds()
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["doctor"]:
        from pyngx.doctor import main as doctor

        return doctor(args[1:])
    try:
        opts = parse_args(args)
    except UsageError as exc:
        err(str(exc))
        return 1
    if opts.version:
        show_version(opts.configure)
    if opts.help:
        os.write(2, (VERSION_LINE + "\n" + USAGE).encode())
    if opts.version or opts.help:
        return 0
    paths = make_paths(opts.prefix, opts.conf)

    from pyngx.core.cycle import load_cycle
    from pyngx.core.log import EMERG, report, startup_log

    log = startup_log(paths.full(opts.error_log or DEFAULT_ERROR_LOG))
    try:
        cycle = load_cycle(paths, opts.directives, opts.error_log)
    except ConfigError as exc:
        report(log, EMERG, str(exc))
        if opts.test:
            err(f"configuration file {paths.conf_path} test failed")
        return 1
    from pyngx.core.log import WARN

    for warning in cycle.warnings:
        report(log, WARN, warning)
    if opts.test:
        if not opts.quiet:
            err(f"the configuration file {paths.conf_path} syntax is ok")
            err(f"configuration file {paths.conf_path} test is successful")
        if opts.dump:
            out = []
            for path, text in cycle.conf_files:
                out.append(f"# configuration file {path}:\n{text}\n")
            sys.stdout.write("".join(out))
            sys.stdout.flush()
        cycle.files.close()
        return 0
    if opts.signal:
        pid_path = cycle.pid_path
        cycle.files.close()
        return send_signal(pid_path, opts.signal)

    from pyngx.core.run import start

    return start(cycle, paths, opts.directives)


def send_signal(pid_path: str, name: str) -> int:
    try:
        with open(pid_path) as f:
            text = f.read()
    except OSError as exc:
        err(f'[error] open() "{pid_path}" failed ({exc.errno}: {os.strerror(exc.errno or 0)})')
        return 1
    value = text.strip()
    if not value.isdigit():
        err(f'[error] invalid PID number "{value}" in "{pid_path}"')
        return 1
    sig = SIGNALS[name]
    try:
        os.kill(int(value), sig)
    except OSError as exc:
        err(
            f"[alert] kill({value}, {int(sig)}) failed ({exc.errno}: {os.strerror(exc.errno or 0)})"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
