"""The command line, flag by flag, compared with nginx's where nginx has the same flag."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = Path(NGINX).exists()


def pyngx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyngx", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
    )


def write_conf(tmp_path: Path, body: str = "") -> Path:
    (tmp_path / "logs").mkdir(exist_ok=True)
    conf = tmp_path / "pyngx.conf"
    conf.write_text(
        "pid logs/pyngx.pid;\nerror_log logs/error.log;\nevents { worker_connections 64; }\n" + body
    )
    return conf


def test_help_lists_every_flag() -> None:
    for flag in ("-h", "-?"):
        r = pyngx(flag)
        assert r.returncode == 0
        assert r.stdout == ""
        for opt in (
            "-v",
            "-V",
            "-t",
            "-T",
            "-q",
            "-s signal",
            "-p prefix",
            "-e filename",
            "-c filename",
            "-g directives",
        ):
            assert opt in r.stderr


def test_version_lines_are_nginx_shaped() -> None:
    r = pyngx("-v")
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.startswith("nginx version: nginx/1.")
    assert "pyngx/" in r.stderr
    r = pyngx("-V")
    assert "TLS SNI support enabled" in r.stderr
    args = next(line for line in r.stderr.splitlines() if line.startswith("configure arguments:"))
    for flag in (
        "--with-stream",
        "--with-stream_ssl_module",
        "--with-stream_realip_module",
        "--with-stream_ssl_preread_module",
        "--with-http_ssl_module",
        "--with-http_realip_module",
    ):
        assert f" {flag}" in args
    assert "=dynamic" not in args


def test_test_flag_success_and_quiet(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 0
    assert r.stdout == ""
    assert r.stderr == (
        f"pyngx: the configuration file {conf} syntax is ok\n"
        f"pyngx: configuration file {conf} test is successful\n"
    )
    r = pyngx("-tq", "-p", str(tmp_path), "-c", str(conf))
    assert (r.returncode, r.stderr) == (0, "")


def test_test_failure_exits_1_with_location(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, "stream {\n  bogus;\n}\n")
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 1
    assert re.search(rf'\[emerg\] \d+#0: unknown directive "bogus" in {conf}:5\n', r.stderr)
    assert f"pyngx: configuration file {conf} test failed" in r.stderr


@pytest.mark.skipif(not HAVE_NGINX, reason="needs Debian's nginx")
def test_dump_matches_nginx(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "one.conf").write_text("# included\n")
    (tmp_path / "conf.d" / "two.conf").write_text("# no newline at end")
    conf = write_conf(tmp_path, "include conf.d/*.conf;\n")
    r = pyngx("-T", "-p", str(tmp_path), "-c", str(conf))
    n = subprocess.run(
        [NGINX, "-T", "-p", f"{tmp_path}/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert n.returncode == 0, n.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout == n.stdout


def test_relative_conf_is_relative_to_prefix(tmp_path: Path) -> None:
    write_conf(tmp_path)
    r = pyngx("-t", "-p", str(tmp_path), "-c", "pyngx.conf", cwd=Path("/"))
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path}/pyngx.conf syntax is ok" in r.stderr


def test_global_directives(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off; worker_processes 3;")
    assert r.returncode == 0, r.stderr
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf), "-g", "pid x.pid;")
    assert r.returncode == 1
    assert '"pid" directive is duplicate' in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-x"], 'pyngx: invalid option: "x"'),
        (["foo"], 'pyngx: invalid option: "foo"'),
        (["-c"], 'pyngx: option "-c" requires file name'),
        (["-p"], 'pyngx: option "-p" requires directory name'),
        (["-g"], 'pyngx: option "-g" requires parameter'),
        (["-s"], 'pyngx: option "-s" requires parameter'),
        (["-s", "restart"], 'pyngx: invalid option: "-s restart"'),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    r = pyngx(*args)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == message


@pytest.mark.skipif(not HAVE_NGINX, reason="needs Debian's nginx")
@pytest.mark.parametrize("args", [["-x"], ["-c"], ["-s", "restart"], ["-g"]])
def test_bad_options_word_for_word_as_nginx(args: list[str]) -> None:
    ours = pyngx(*args)
    theirs = subprocess.run([NGINX, *args], capture_output=True, text=True, timeout=30, check=False)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.splitlines()[0].removeprefix("pyngx: ") == theirs.stderr.splitlines()[
        0
    ].removeprefix("nginx: ")


def test_signal_without_pid_file(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    r = pyngx("-s", "reload", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 1
    assert (
        f'[error] open() "{tmp_path}/logs/pyngx.pid" failed (2: No such file or directory)'
        in r.stderr
    )


def test_signal_with_garbage_pid(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    (tmp_path / "logs" / "pyngx.pid").write_text("nope\n")
    r = pyngx("-s", "quit", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 1
    assert f'invalid PID number "nope" in "{tmp_path}/logs/pyngx.pid"' in r.stderr


def test_signal_is_delivered(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "logs" / "pyngx.pid").write_text(f"{sleeper.pid}\n")
        r = pyngx("-s", "stop", "-p", str(tmp_path), "-c", str(conf))
        assert r.returncode == 0, r.stderr
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_missing_conf_file(tmp_path: Path) -> None:
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(tmp_path / "none.conf"))
    assert r.returncode == 1
    assert f'open() "{tmp_path}/none.conf" failed (2: No such file or directory)' in r.stderr


def test_error_log_flag_receives_config_errors(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, "bogus;\n")
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf), "-e", "logs/startup.log")
    assert r.returncode == 1
    assert "pyngx: [emerg] unknown directive" in r.stderr
    assert "[emerg]" in (tmp_path / "logs" / "startup.log").read_text()


def test_no_output_on_stdout_when_started_and_stopped(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, "daemon off;\n")
    p = subprocess.Popen(
        [sys.executable, "-m", "pyngx", "-p", str(tmp_path), "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    pid_file = tmp_path / "logs" / "pyngx.pid"
    try:
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().strip() == str(p.pid):
                break
            if p.poll() is not None:
                break
            os.sched_yield()
            import time

            time.sleep(0.05)
        assert pid_file.read_text().strip() == str(p.pid)
        p.send_signal(signal.SIGQUIT)
        out, _ = p.communicate(timeout=10)
        assert p.returncode == 0
        assert out == b""
        assert not pid_file.exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "stalwart-behind-nginx.txt"


@pytest.mark.parametrize(
    "name", ["stalwart-behind-nginx.conf", "stalwart-high-ports.conf", "health-checks.conf"]
)
def test_examples_pass_the_test_flag(name: str, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(EXAMPLES / name))
    assert r.returncode == 0, r.stderr


def test_bundled_default_config_passes_the_test_flag(tmp_path: Path) -> None:
    import pyngx as package

    (tmp_path / "logs").mkdir()
    conf = Path(package.__file__).parent / "data" / "pyngx.conf"
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not SEED.exists(), reason="the seed text is not beside this checkout")
def test_seed_example_is_verbatim() -> None:
    seed = SEED.read_text().splitlines()
    start = seed.index("# /etc/nginx/nginx.conf")
    end = max(i for i, line in enumerate(seed) if line == "}")
    assert (EXAMPLES / "stalwart-behind-nginx.conf").read_text().splitlines() == seed[
        start : end + 1
    ]


def test_warns_about_listen_proxy_protocol_without_trusted_senders(tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path,
        "stream {\n  server {\n    listen 127.0.0.1:2525 proxy_protocol;\n"
        "    proxy_pass 127.0.0.1:10025;\n  }\n}\n",
    )
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"\[warn\] .*\"listen 127\.0\.0\.1:2525 proxy_protocol\" expects a PROXY protocol header"
        rf".* in {re.escape(str(conf))}:6\n",
        r.stderr,
    ), r.stderr
    assert "test is successful" in r.stderr
    trusted = write_conf(
        tmp_path,
        "stream {\n  server {\n    listen 127.0.0.1:2525 proxy_protocol;\n"
        "    set_real_ip_from 10.0.0.0/8;\n    proxy_pass 127.0.0.1:10025;\n  }\n}\n",
    )
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(trusted))
    assert "[warn]" not in r.stderr


def test_warns_about_preread_variables_without_ssl_preread(tmp_path: Path) -> None:
    body = (
        "stream {\n  map $ssl_preread_server_name $b {\n    default 127.0.0.1:2;\n  }\n"
        "  server {\n    listen 127.0.0.1:2443;\n    {preread}proxy_pass $b;\n  }\n}\n"
    )
    conf = write_conf(tmp_path, body.replace("{preread}", ""))
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert re.search(
        rf"\[warn\] .*no server has \"ssl_preread on\".* in {re.escape(str(conf))}:5\n", r.stderr
    ), r.stderr
    conf = write_conf(tmp_path, body.replace("{preread}", "ssl_preread on; "))
    r = pyngx("-t", "-p", str(tmp_path), "-c", str(conf))
    assert "[warn]" not in r.stderr, r.stderr
