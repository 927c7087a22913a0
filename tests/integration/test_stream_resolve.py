"""`resolver` + `server name:port resolve`: peers follow DNS at run time.

A tiny UDP DNS responder (a thread in the test) answers for `mail.test.` from a mutable
table with TTL 1; two backends on 127.0.0.2 and 127.0.0.3, same port, tell which address a
client reached.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyngx.protocols import dns
from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, read_banner, run_pyngx

BackendFactory = Callable[..., Backend]
NAME = "mail.test"


class DnsResponder:
    """Answers A queries from `table` (name -> addresses; None is NXDOMAIN). AAAA queries
    for a known name get an empty NOERROR answer, so only the A records count."""

    def __init__(self) -> None:
        self.table: dict[str, list[str] | None] = {}
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="DnsResponder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            data, peer = self.sock.recvfrom(4096)
            try:
                self.sock.sendto(self.answer(data), peer)
            except (dns.DnsError, OSError):
                continue

    def answer(self, query: bytes) -> bytes:
        self.queries += 1
        # Parse the question with the codec's reader: flip QR so it reads as a response.
        flipped = query[:2] + bytes([query[2] | 0x80]) + query[3:]
        q = dns.parse_response(flipped).questions[0]
        addrs = self.table.get(q.name)
        if addrs is None:
            return dns.build_response(query, [], rcode=dns.RCODE_NXDOMAIN)
        if q.qtype != dns.TYPE_A:
            return dns.build_response(query, [])
        recs = [(q.name, dns.TYPE_A, 1, socket.inet_aton(a)) for a in addrs]
        return dns.build_response(query, recs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[DnsResponder]:
    r = DnsResponder()
    try:
        yield r
    finally:
        r.close()


def visit(port: int) -> str:
    """The backend's banner ("A" or "B"), or "" when the proxy closed (502)."""
    with client("127.0.0.1", port) as c:
        return read_banner(c)


def wait_visit(port: int, want: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := visit(port)) != want:
        assert time.monotonic() < deadline, f"still {got!r} instead of {want!r}"
        time.sleep(0.1)


def test_peers_follow_the_dns_answer(
    pyngx: ServerFactory, backend: BackendFactory, responder: DnsResponder
) -> None:
    responder.table[NAME] = ["127.0.0.2"]
    a = backend(host="127.0.0.2", banner=b"A\n")
    b = backend(host="127.0.0.3", port=a.port, banner=b"B\n")
    port = free_port()
    srv = pyngx(
        "stream {\n"
        f"  resolver 127.0.0.1:{responder.port} valid=1s;\n"
        "  resolver_timeout 2s;\n"
        f"  upstream g {{ zone g 64k; server {NAME}:{a.port} resolve; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass g; }}\n"
        "}\n"
    )
    # Until the first answer the group has no peers; then the A record's address.
    wait_visit(port, "A", 5)
    assert [visit(port) for _ in range(3)] == ["A"] * 3
    held = client("127.0.0.1", port)  # an in-flight session across the change
    try:
        assert held.recv(2) == b"A\n"
        responder.table[NAME] = ["127.0.0.3"]
        wait_visit(port, "B", 6)
        assert [visit(port) for _ in range(3)] == ["B"] * 3
        held.sendall(b"still here\n")  # the old peer's session keeps working
        a.wait_for_connections(5)
    finally:
        held.close()
    mark = srv.log_mark()
    responder.table[NAME] = None
    srv.wait_for_log(rf"\[error\] \d+#0: {NAME} could not be resolved \(3: Host not found\)")
    wait_visit(port, "", 3)
    srv.wait_for_log(r"no live upstreams while connecting to upstream", since=mark)
    responder.table[NAME] = ["127.0.0.3"]
    wait_visit(port, "B", 6)
    assert b.connections and not srv.error_log_text().count("[alert]")


def test_resolver_timeout_is_logged(pyngx: ServerFactory, backend: BackendFactory) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        port = free_port()
        srv = pyngx(
            "stream {\n"
            f"  resolver 127.0.0.1:{silent.getsockname()[1]} ipv6=off;\n"
            "  resolver_timeout 1s;\n"
            f"  upstream g {{ zone g 64k; server {NAME}:{free_port()} resolve; }}\n"
            f"  server {{ listen 127.0.0.1:{port}; proxy_pass g; }}\n"
            "}\n"
        )
        srv.wait_for_log(
            rf"\[error\] \d+#0: {NAME} could not be resolved \(110: Operation timed out\)"
        )
        assert visit(port) == ""
        srv.wait_for_log(r"no live upstreams while connecting to upstream")
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("stream_body", "message"),
    [
        (
            "resolver 127.0.0.1;\n"
            "upstream g { server mail.test:25 resolve; }\n"
            "server { listen 127.0.0.1:{port}; proxy_pass g; }",
            'resolving names at run time requires upstream "g" in {path}:6 to be in shared memory',
        ),
        (
            "upstream g { zone g 64k; server mail.test:25 resolve; }\n"
            "server { listen 127.0.0.1:{port}; proxy_pass g; }",
            'no resolver defined to resolve names at run time in upstream "g" in {path}:5',
        ),
        (
            "resolver 127.0.0.1 ipv4=off ipv6=off;\n",
            '"ipv4" and "ipv6" cannot both be "off" in {path}:5',
        ),
        (
            "resolver 127.0.0.1 valid=x;\n",
            'invalid parameter "valid=x" in {path}:5',
        ),
    ],
)
def test_configuration_errors(tmp_path: Path, stream_body: str, message: str) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "pyngx.conf"
    body = stream_body.replace("{port}", str(free_port()))
    path.write_text(
        f"pid logs/p.pid;\nerror_log logs/error.log;\nevents {{}}\nstream {{\n{body}\n}}\n"
    )
    r = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(path)])
    assert r.returncode == 1, r.stderr
    expected = re.escape(message.replace("{path}", str(path)))
    assert re.search(rf"\[emerg\] \d+#0: {expected}\n", r.stderr), r.stderr


def test_unresolvable_resolve_name_passes_test(tmp_path: Path) -> None:
    """A `resolve` name is not looked up at configuration time (nginx starts without it)."""
    (tmp_path / "logs").mkdir()
    path = tmp_path / "pyngx.conf"
    path.write_text(
        "pid logs/p.pid;\nerror_log logs/error.log;\nevents {}\nstream {\n"
        "resolver 127.0.0.1:1 [::1] valid=30s status_zone=r;\nresolver_timeout 5s;\n"
        "upstream g { zone g 64k; server no-such-host.invalid:25 resolve; }\n"
        f"server {{ listen 127.0.0.1:{free_port()}; proxy_pass g; }}\n}}\n"
    )
    r = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(path)])
    assert r.returncode == 0, r.stderr
