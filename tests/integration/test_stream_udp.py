"""UDP proxying (`listen ... udp`): sessions per client address, proxy_responses,
proxy_requests, proxy_timeout, PROXY headers on datagrams, and nginx 1.22 side by side."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyngx.protocols import dns
from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.harness import free_port, pyngx_conf, run_pyngx

CLIENT_A, CLIENT_B = "127.0.0.23", "127.0.0.24"
LOG_FORMAT = 'log_format u "$protocol $status $bytes_received $bytes_sent $remote_addr";\n'


class UdpBackend:
    """A UDP responder on a thread: `reply(data, addr)` returns the datagrams to answer with.

    Every datagram received is kept (with its source) for the test to inspect.
    """

    def __init__(self, reply: Callable[[bytes], list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.reply = reply
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((data, addr))
            for out in self.reply(data):
                self.sock.sendto(out, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def udp_backend() -> Iterator[Callable[..., UdpBackend]]:
    made: list[UdpBackend] = []

    def make(reply: Callable[[bytes], list[bytes]] = lambda d: [d.upper()]) -> UdpBackend:
        b = UdpBackend(reply)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def udp_client(source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(3.0)
    return s


def conf(port: int, upstream: str, extra: str, log: Path) -> str:
    return (
        "stream {\n"
        f"  {LOG_FORMAT}"
        f"  access_log {log} u;\n"
        f"  server {{ listen 127.0.0.1:{port} udp; proxy_pass {upstream}; {extra} }}\n"
        "}\n"
    )


def free_both_port() -> int:
    """A port free for both TCP and UDP a moment ago (free_port checks one kind only)."""
    for _ in range(50):
        port = free_port(kind=socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both TCP and UDP")


def wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_dns_query_two_clients_at_once(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    """Answers go back to the client that asked, each address its own session."""

    def answer(query: bytes) -> list[bytes]:
        # The answer's address tells which client's query it is (the name carries it).
        name = "a.example.test" if dns.encode_name("a.example.test") in query else "b.example.test"
        ip = socket.inet_aton("10.0.0.23" if name.startswith("a.") else "10.0.0.24")
        return [dns.build_response(query, [(name, dns.TYPE_A, 60, ip)])]

    b = udp_backend(answer)
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    pyngx(conf(port, f"127.0.0.1:{b.port}", "proxy_responses 1;", log))
    ca, cb = udp_client(CLIENT_A), udp_client(CLIENT_B)
    with ca, cb:
        qa_id, qa = dns.build_query("a.example.test", dns.TYPE_A)
        qb_id, qb = dns.build_query("b.example.test", dns.TYPE_A)
        ca.sendto(qa, ("127.0.0.1", port))
        cb.sendto(qb, ("127.0.0.1", port))
        raw_a, raw_b = ca.recv(65535), cb.recv(65535)
        ra, rb = dns.parse_response(raw_a), dns.parse_response(raw_b)
    assert ra.id == qa_id and rb.id == qb_id
    assert dns.addresses(ra, "a.example.test", dns.TYPE_A)[0] == ["10.0.0.23"]
    assert dns.addresses(rb, "b.example.test", dns.TYPE_A)[0] == ["10.0.0.24"]
    lines = sorted(wait_lines(log, 2))
    assert lines == [
        f"UDP 200 {len(qa)} {len(raw_a)} {CLIENT_A}",
        f"UDP 200 {len(qb)} {len(raw_b)} {CLIENT_B}",
    ]
    # Two upstream sockets: one session per client address.
    assert len({addr for _, addr in b.received}) == 2


def test_proxy_responses_1_ends_session(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend()
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    srv = pyngx(conf(port, f"127.0.0.1:{b.port}", "proxy_responses 1;", log))
    with udp_client(CLIENT_A) as c:
        for word in (b"one", b"two"):
            c.sendto(word, ("127.0.0.1", port))
            assert c.recv(100) == word.upper()
    srv.wait_for_log(r"udp done, packets from/to client:1/1, bytes from/to client:3/3")
    # Each answered datagram was a session of its own, on its own upstream socket.
    assert wait_lines(log, 2) == [f"UDP 200 3 3 {CLIENT_A}"] * 2
    assert len({addr for _, addr in b.received}) == 2


def test_proxy_timeout_ends_idle_session(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend()
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    srv = pyngx(conf(port, f"127.0.0.1:{b.port}", "proxy_timeout 1s;", log))
    with udp_client(CLIENT_A) as c:
        c.sendto(b"ping", ("127.0.0.1", port))
        assert c.recv(100) == b"PING"
        started = time.monotonic()
        assert wait_lines(log, 1) == [f"UDP 200 4 4 {CLIENT_A}"]
        assert 0.8 < time.monotonic() - started < 3.0
    srv.wait_for_log(r"udp timed out, packets from/to client:1/1")


def test_proxy_requests_rebinds_client(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend()
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    pyngx(conf(port, f"127.0.0.1:{b.port}", "proxy_requests 2; proxy_responses 1;", log))
    with udp_client(CLIENT_A) as c:
        for i in range(4):
            c.sendto(b"r%d" % i, ("127.0.0.1", port))
            assert c.recv(100) == b"R%d" % i
    assert wait_lines(log, 2) == [f"UDP 200 4 4 {CLIENT_A}"] * 2
    sources = [addr for _, addr in b.received]
    assert sources[0] == sources[1] and sources[2] == sources[3] and sources[1] != sources[2]


def test_proxy_protocol_v2_on_every_datagram(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend(lambda d: [b"ok"])
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    pyngx(conf(port, f"127.0.0.1:{b.port}", "proxy_protocol v2;", log))
    with udp_client(CLIENT_A) as c:
        cport = c.getsockname()[1]
        for word in (b"first", b"second", b"third"):
            c.sendto(word, ("127.0.0.1", port))
            assert c.recv(100) == b"ok"
    assert len(b.received) == 3
    for (data, _), word in zip(b.received, (b"first", b"second", b"third"), strict=True):
        parsed = pp.parse(data)
        assert parsed is not None
        header, consumed = parsed
        assert data[consumed:] == word
        assert header.transport == pp.Transport.DGRAM
        assert (header.src_addr, header.src_port) == (CLIENT_A, cport)
        assert (header.dst_addr, header.dst_port) == ("127.0.0.1", port)


# -- against nginx 1.22 -----------------------------------------------------------------


def test_echo_and_access_log_like_nginx(
    server: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    """Three requests with proxy_responses 3: three answers are not the nine expected, so
    the idle timeout ends the session as "upstream timed out" with status 502 (nginx's rule);
    proxy_requests 3 with proxy_responses 1 ends at the third answer with 200."""
    b = udp_backend()
    port = free_port(kind=socket.SOCK_DGRAM)
    port2 = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    up = f"127.0.0.1:{b.port}"
    srv = server(
        "stream {\n"
        f"  {LOG_FORMAT}  access_log {log} u;\n"
        f"  server {{ listen 127.0.0.1:{port} udp; proxy_pass {up};"
        " proxy_responses 3; proxy_timeout 1s; }\n"
        f"  server {{ listen 127.0.0.1:{port2} udp; proxy_pass {up};"
        " proxy_requests 3; proxy_responses 1; }\n"
        "}\n"
    )
    with udp_client(CLIENT_A) as c:
        for p in (port2, port):
            for word in (b"alpha", b"be", b"c"):
                c.sendto(word, ("127.0.0.1", p))
                assert c.recv(100) == word.upper()
    assert wait_lines(log, 2) == [f"UDP 200 8 8 {CLIENT_A}", f"UDP 502 8 8 {CLIENT_A}"]
    srv.wait_for_log(
        r"udp done, packets from/to client:3/3, bytes from/to client:8/8, "
        r"bytes from/to upstream:8/8"
    )
    srv.wait_for_log(
        r"upstream timed out \(110: Connection timed out\) while proxying connection, "
        rf"udp client: {CLIENT_A}, server: 127\.0\.0\.1:{port}, upstream: \"{up}\", "
        r"bytes from/to client:8/8, bytes from/to upstream:8/8"
    )


def test_upstream_unreachable_like_nginx(server: ServerFactory, tmp_path: Path) -> None:
    """ICMP port unreachable reaches the connected socket as ECONNREFUSED on recv()."""
    port = free_port(kind=socket.SOCK_DGRAM)
    dead = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    srv = server(conf(port, f"127.0.0.1:{dead}", "proxy_responses 1;", log))
    with udp_client(CLIENT_A) as c:
        c.sendto(b"hello", ("127.0.0.1", port))
        srv.wait_for_log(
            r"recv\(\) failed \(111: Connection refused\) while proxying and reading from "
            rf"upstream, udp client: {CLIENT_A}, server: 127\.0\.0\.1:{port}, "
            rf'upstream: "127\.0\.0\.1:{dead}", bytes from/to client:5/0, '
            r"bytes from/to upstream:0/5"
        )
    # nginx counts the failed read as the expected answer: "udp done", status 200.
    srv.wait_for_log(r"udp done, packets from/to client:1/1, bytes from/to client:5/0")
    assert wait_lines(log, 1) == [f"UDP 200 5 0 {CLIENT_A}"]


def test_proxy_protocol_v1_first_datagram_only_like_nginx(
    server: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend(lambda d: [b"ok"])
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    server(conf(port, f"127.0.0.1:{b.port}", "proxy_protocol on;", log))
    with udp_client(CLIENT_A) as c:
        cport = c.getsockname()[1]
        for word in (b"first", b"second"):
            c.sendto(word, ("127.0.0.1", port))
            assert c.recv(100) == b"ok"
    (first, _), (second, _) = b.received
    assert first == f"PROXY TCP4 {CLIENT_A} 127.0.0.1 {cport} {port}\r\n".encode() + b"first"
    assert second == b"second"


@pytest.mark.parametrize("param", ["backlog=10", "ssl", "so_keepalive=on", "proxy_protocol"])
def test_listen_udp_refuses_tcp_parameters(tmp_path: Path, param: str) -> None:
    path = tmp_path / "pyngx.conf"
    path.write_text(
        pyngx_conf(
            f"stream {{ server {{ listen 127.0.0.1:1 udp {param}; proxy_pass 127.0.0.1:1; }} }}",
            prefix=tmp_path,
        )
    )
    done = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(path)])
    assert done.returncode != 0
    name = param.partition("=")[0]
    assert f'"{name}" parameter is incompatible with "udp"' in done.stderr


def test_reuseport_one_socket_per_worker(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend()
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    body = conf(port, f"127.0.0.1:{b.port}", "proxy_responses 1;", log)
    srv = pyngx(body.replace(" udp;", " udp reuseport;"), workers=2)
    # Many client addresses: the kernel spreads them over both workers' sockets.
    for i in range(8):
        with udp_client(f"127.0.0.{30 + i}") as c:
            c.sendto(b"hi", ("127.0.0.1", port))
            assert c.recv(100) == b"HI"
    assert len(wait_lines(log, 8)) == 8
    assert srv.running
    out = subprocess.run(
        ["ss", "-Hunl", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    ).stdout
    assert len(out.splitlines()) == 2  # one bound socket per worker


def test_graceful_shutdown_ends_sessions(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend()
    port = free_port(kind=socket.SOCK_DGRAM)
    log = tmp_path / "access.log"
    srv = pyngx(conf(port, f"127.0.0.1:{b.port}", "", log))
    with udp_client(CLIENT_A) as c:
        c.sendto(b"hi", ("127.0.0.1", port))
        assert c.recv(100) == b"HI"
    srv.signal(signal.SIGQUIT)
    srv.wait_for_log(r"disconnected on shutdown")
    assert wait_lines(log, 1) == [f"UDP 200 2 2 {CLIENT_A}"]


def test_tcp_and_udp_on_one_port(
    pyngx: ServerFactory, udp_backend: Callable[..., UdpBackend], tmp_path: Path
) -> None:
    b = udp_backend()
    port = free_both_port()
    log = tmp_path / "access.log"
    body = conf(port, f"127.0.0.1:{b.port}", "proxy_responses 1;", log)
    tcp = f"  server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{b.port}; }}\n}}\n"
    pyngx(body[: body.rindex("}")] + tcp)
    with udp_client(CLIENT_A) as c:
        c.sendto(b"x", ("127.0.0.1", port))
        assert c.recv(100) == b"X"
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass  # the TCP listener is there too
