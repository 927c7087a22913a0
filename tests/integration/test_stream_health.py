"""Active health checks of stream upstream groups (`health_check`, `match`; NGINX Plus syntax).

Backends greet like SMTP servers; a test turns one unhealthy by changing its banner (read at
each accept) or by closing it, and watches where client connections go. A client tells the
two backends apart by their greeting ("220 a" / "220 b"); probes never send "client".
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_until, run_pyngx

BackendFactory = Callable[..., Backend]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "health-checks.conf"
GREETING_A, GREETING_B = b"220 a\r\n", b"220 b\r\n"
# A wrong greeting leaves the probe connection open (the Backend closes only when the client
# does), so the probe fails at health_check_timeout: keep that short.
CHECK = "health_check interval=200ms fails=1 passes=1 match=smtp; health_check_timeout 500ms;"


def conf(port: int, servers: list[Backend], check: str = CHECK, extra: str = "") -> str:
    lines = "".join(f"server {b.address}; " for b in servers)
    return (
        "stream {\n"
        '  match smtp { expect ~ "^220"; }\n'
        f"  upstream mail {{ {lines}}}\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass mail; {check} {extra} }}\n"
        "}\n"
    )


def greetings(port: int, n: int) -> list[bytes]:
    """The greeting each of n consecutive client connections gets."""
    out = []
    for _ in range(n):
        with client("127.0.0.1", port) as c:
            out.append(recv_until(c, b"\r\n", timeout=3))
            c.sendall(b"client\r\n")
    return out


def alternates(seen: list[bytes]) -> bool:
    return set(seen) == {GREETING_A, GREETING_B} and all(
        x != y for x, y in zip(seen, seen[1:], strict=False)
    )


def peer_line(what: str, b: Backend) -> str:
    return rf'peer is {what} while .* of peer {re.escape(b.address)} in upstream "mail"'


@pytest.fixture
def pair(backend: BackendFactory) -> tuple[Backend, Backend]:
    return backend(banner=GREETING_A), backend(banner=GREETING_B)


def test_unhealthy_peer_leaves_rotation_and_comes_back(
    pyngx: ServerFactory, pair: tuple[Backend, Backend]
) -> None:
    a, b = pair
    port = free_port()
    srv = pyngx(conf(port, [a, b]))
    # (a) Both pass: round robin alternates.
    a.wait_for_connections(1)
    b.wait_for_connections(1)
    assert alternates(greetings(port, 4))
    # (b) B greets with a refusal: within a few intervals it is out, and only A serves.
    mark = srv.log_mark()
    b.banner = b"554 no\r\n"
    line = srv.wait_for_log(peer_line("unhealthy", b), timeout=5, since=mark)
    assert "[warn]" in line and 'health check "smtp"' in line
    assert greetings(port, 4) == [GREETING_A] * 4
    srv.wait_for_log(r'\[info\] .*waiting for a match in "554 no\\x0D\\x0A"', since=mark)
    # (c) B recovers and is back in rotation.
    mark = srv.log_mark()
    b.banner = GREETING_B
    line = srv.wait_for_log(peer_line("healthy", b), timeout=5, since=mark)
    assert "[notice]" in line
    # Both serve again (round robin's running weights resume where they were, so the order
    # right after the return need not alternate strictly).
    assert set(greetings(port, 4)) == {GREETING_A, GREETING_B}
    # Client connections never reached B while it was out: every "client" it saw was served.
    assert "no live upstreams" not in srv.error_log_text()


def test_probe_sends_proxy_v2_local_header_then_send_string(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    a = backend(banner=GREETING_A)
    port = free_port()
    body = (
        "stream {\n"
        '  match smtp { send "NOOP\\x20probe\\r\\n"; expect "220"; }\n'
        f"  upstream mail {{ server {a.address}; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass mail; proxy_protocol on;\n"
        "    health_check interval=5s match=smtp; }\n"
        "}\n"
    )
    srv = pyngx(body)
    (probe,) = a.wait_for_connections(1)
    data = probe.wait_for(b"probe\r\n", timeout=3)
    assert data.startswith(pp.V2_SIGNATURE)
    parsed = pp.parse(data)
    assert parsed is not None
    header, consumed = parsed
    assert (header.version, header.command, header.family) == (
        2,
        pp.Command.LOCAL,
        pp.Family.UNSPEC,
    )
    assert data[consumed:] == b"NOOP probe\r\n"
    # Client connections still get nginx's v1 header for `proxy_protocol on`.
    with client("127.0.0.1", port) as c:
        assert recv_until(c, b"\r\n") == GREETING_A
    conns = a.wait_for_connections(2)
    assert any(c.wait_for_bytes(6, timeout=3).startswith(b"PROXY ") for c in conns[1:])
    assert "peer is unhealthy" not in srv.error_log_text()


def test_stopped_backend_becomes_unhealthy_and_gets_no_clients(
    pyngx: ServerFactory, pair: tuple[Backend, Backend]
) -> None:
    a, b = pair
    port = free_port()
    srv = pyngx(conf(port, [a, b]))
    b.wait_for_connections(1)
    mark = srv.log_mark()
    b.close()  # listener closed: connect() is refused
    srv.wait_for_log(
        rf"\[error\] .*connect\(\) failed \(111: Connection refused\) while connecting to "
        rf'upstream, health check "smtp" of peer {re.escape(b.address)} in upstream "mail"',
        timeout=5,
        since=mark,
    )
    srv.wait_for_log(peer_line("unhealthy", b), timeout=5, since=mark)
    mark = srv.log_mark()
    assert greetings(port, 6) == [GREETING_A] * 6
    # No client was ever sent to B (no failed client connect, no next-upstream retry, no 502).
    later = srv.error_log_text()[mark:]
    assert "while connecting to upstream, client:" not in later
    assert "no live upstreams" not in later


def test_mandatory_keeps_peer_out_until_its_first_check_passes(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    a = backend(banner=GREETING_A)
    silent = backend()  # accepts, never greets: its first probe lasts health_check_timeout
    port = free_port()
    check = "health_check interval=10s match=smtp mandatory; health_check_timeout 3s;"
    srv = pyngx(conf(port, [a, silent], check))
    srv.wait_for_log(rf"\[info\] .*{peer_line('healthy', a)}", timeout=5)
    # Without `mandatory` the silent peer would get every other client now.
    assert greetings(port, 4) == [GREETING_A] * 4
    assert not any(b"client" in c.data for c in silent.connections)
    srv.wait_for_log(peer_line("unhealthy", silent), timeout=5)


def test_workers_stop_promptly_with_probes_in_flight(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    silent = backend()
    port = free_port()
    check = "health_check interval=1s match=smtp; health_check_timeout 30s;"
    srv = pyngx(conf(port, [silent], check), workers=2)
    silent.wait_for_connections(2)  # each worker has a probe waiting for a greeting
    started = time.monotonic()
    srv.signal(signal.SIGQUIT)
    assert srv.proc is not None
    srv.proc.wait(timeout=5)
    assert time.monotonic() - started < 3
    assert srv.returncode == 0
    output = srv.error_log_text() + srv.stderr_text()
    assert "[alert]" not in output and "Task was destroyed" not in output


@pytest.mark.parametrize(
    ("stream_body", "message", "line"),
    [
        (
            "upstream g { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port}; proxy_pass g;\n"
            "health_check match=nope; }",
            'unknown match "nope"',
            7,
        ),
        (
            "server { listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:1;\nhealth_check; }",
            '"health_check" needs "proxy_pass" to an upstream group, not "127.0.0.1:1"',
            6,
        ),
        (
            "upstream g { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port}; proxy_pass g;\n"
            "health_check interval=fast; }",
            'invalid parameter "interval=fast"',
            7,
        ),
        (
            "upstream g { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port}; proxy_pass g;\n"
            "health_check fails=0; }",
            'invalid parameter "fails=0"',
            7,
        ),
        (
            "upstream g { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port}; proxy_pass g;\n"
            "health_check mandatory persistent; }",
            'the "persistent" parameter of "health_check" is not supported',
            7,
        ),
        (
            "upstream g { server 127.0.0.1:1; }\nserver { listen 127.0.0.1:{port}; proxy_pass g;\n"
            "health_check udp; }",
            'the "udp" parameter of "health_check" is not supported yet',
            7,
        ),
        ('match m {\nexpect ~ "(";\n}', 'invalid regex "("', 6),
        ('match m { send "a";\nsend "b"; }', '"send" directive is duplicate', 6),
        ("match m { }\nmatch m { }", 'duplicate match "m"', 6),
        (
            'server { listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:1;\nsend "x"; }',
            '"send" directive is not allowed here',
            6,
        ),
    ],
)
def test_bad_configuration_fails_test_with_location(
    tmp_path: Path, stream_body: str, message: str, line: int
) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "pyngx.conf"
    body = stream_body.replace("{port}", str(free_port()))
    path.write_text(
        f"pid logs/p.pid;\nerror_log logs/error.log;\nevents {{}}\nstream {{\n{body}\n}}\n"
    )
    r = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(path)])
    assert r.returncode == 1, r.stderr
    assert re.search(rf"\[emerg\] \d+#0: {re.escape(message)}.* in {path}:{line}\n", r.stderr), (
        r.stderr
    )


def test_example_configuration_passes_test(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    r = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(EXAMPLE)])
    assert r.returncode == 0, r.stderr


# -- the example's TLS check against a real TLS server ----------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    """`openssl s_server` on a loopback port, with a certificate made for the test."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command")
    trustme = pytest.importorskip("trustme")
    cert = trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem
    pem = tmp_path / "server.pem"
    cert.write_to_path(str(pem))
    port = free_port()
    proc = subprocess.Popen(
        [openssl, "s_server", "-quiet", "-accept", f"127.0.0.1:{port}", "-cert", str(pem)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("openssl s_server did not start")
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(5)


def test_example_tls_match_passes_against_openssl_s_server(
    pyngx: ServerFactory, backend: BackendFactory, tls_server: int
) -> None:
    tls_match = re.search(r"^    match tls \{.*?^    \}", EXAMPLE.read_text(), re.M | re.S)
    assert tls_match is not None
    plain = backend(banner=GREETING_A)  # answers a ClientHello with text: fails the check
    port = free_port()
    body = (
        "stream {\n"
        f"{tls_match.group(0)}\n"
        f"  upstream mail {{ server 127.0.0.1:{tls_server}; server {plain.address}; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass mail;\n"
        "    health_check interval=200ms match=tls mandatory; health_check_timeout 500ms; }\n"
        "}\n"
    )
    srv = pyngx(body)
    # `mandatory` logs the first pass, so the TLS server's ServerHello is seen to match.
    tls_peer = f'health check "tls" of peer 127.0.0.1:{tls_server} '
    srv.wait_for_log(r"\[info\] .*peer is healthy while checking response, " + tls_peer)
    srv.wait_for_log(r'peer is unhealthy while .* health check "tls" of peer ' + plain.address)
    time.sleep(0.6)  # a few more rounds: the TLS server keeps passing
    lines = [line for line in srv.error_log_text().splitlines() if tls_peer in line]
    assert len(lines) == 1, lines
