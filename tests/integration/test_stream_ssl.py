"""TLS in the stream module: `listen ... ssl` termination and `proxy_ssl` to upstreams.

Cases that Debian's nginx 1.22 supports the same way run against both (`server` fixture);
the rest (PROXY header before TLS, reload) run against pyngx only.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_all

BackendFactory = Callable[..., Backend]
LOG_FORMAT = (
    "log_format tls '$ssl_protocol|$ssl_server_name|$ssl_alpn_protocol|"
    "$ssl_client_verify|$ssl_client_s_dn|$status';\n"
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """PEM files: ECDSA (trusted) and RSA leaf certs for localhost, the CA, a client cert."""
    out: dict[str, str] = {}
    # trustme's default key type is ECDSA.
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    rsa = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    cli = ca.issue_cert("client@example.com", common_name="client")
    for name, blob in (
        ("cert", leaf.cert_chain_pems[0].bytes()),
        ("key", leaf.private_key_pem.bytes()),
        ("rsacert", rsa.cert_chain_pems[0].bytes()),
        ("rsakey", rsa.private_key_pem.bytes()),
        ("ca", ca.cert_pem.bytes()),
        ("clicert", cli.cert_chain_pems[0].bytes()),
        ("clikey", cli.private_key_pem.bytes()),
    ):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(blob)
        out[name] = str(path)
    return out


def tls_conf(port: int, upstream: str, certs: dict[str, str], extra: str = "") -> str:
    return (
        "stream {\n"
        f"  {LOG_FORMAT}"
        "  server {\n"
        f"    listen 127.0.0.1:{port} ssl; proxy_pass {upstream};\n"
        f"    ssl_certificate {certs['cert']}; ssl_certificate_key {certs['key']};\n"
        f"    access_log logs/tls.log tls; {extra}\n"
        "  }\n"
        "}\n"
    )


def tls_client(
    port: int,
    certs: dict[str, str],
    *,
    sni: str | None = "localhost",
    alpn: list[str] | None = None,
    cert: bool = False,
) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.check_hostname = sni is not None
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(certs["clicert"], certs["clikey"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname=sni)


def echo(s: ssl.SSLSocket, data: bytes = b"ping") -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(len(data) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def access_lines(srv: object, n: int, timeout: float = 5.0) -> list[str]:
    path = Path(srv.prefix) / "logs" / "tls.log"  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {n} access log lines in {path}")


# -- termination (both implementations) -----------------------------------------------------


def test_termination_variables(
    server: ServerFactory, backend: BackendFactory, certs: dict[str, str]
) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = server(tls_conf(port, b.address, certs, "ssl_alpn foo bar;"))
    with tls_client(port, certs, alpn=["bar"]) as s:
        assert echo(s) == b"ping"
        assert s.selected_alpn_protocol() == "bar"
        version = s.version()
    with tls_client(port, certs, sni=None) as s:
        assert echo(s) == b"ping"
    lines = access_lines(srv, 2)
    assert lines[0] == f"{version}|localhost|bar|NONE|-|200", lines
    assert lines[1] == f"{version}|-|-|NONE|-|200", lines


def test_plaintext_client_closed_alone(
    server: ServerFactory, backend: BackendFactory, certs: dict[str, str]
) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = server(tls_conf(port, b.address, certs, "ssl_protocols TLSv1.2;"))
    with tls_client(port, certs) as good:
        with client("127.0.0.1", port) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"ping" not in recv_all(plain, timeout=5, reset_ok=True)
        assert echo(good) == b"ping"
        assert good.version() == "TLSv1.2"
    line = srv.wait_for_log(r"while SSL handshaking")
    assert re.search(
        r"\[info\] \d+#\d+: \*\d+ SSL_do_handshake\(\) failed \(SSL: .*\) while SSL "
        r"handshaking, client: \S+, server: 127\.0\.0\.1:\d+$",
        line,
    ), line


def test_handshake_timeout(
    server: ServerFactory, backend: BackendFactory, certs: dict[str, str]
) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = server(tls_conf(port, b.address, certs, "ssl_handshake_timeout 1s;"))
    with client("127.0.0.1", port) as idle:
        start = time.monotonic()
        assert recv_all(idle, timeout=5, reset_ok=True) == b""
        assert 0.8 < time.monotonic() - start < 4
    # nginx 1.22 closes it without a word at `info`; so does pyngx.
    assert "timed out" not in srv.error_log_text()
    with tls_client(port, certs) as s:
        assert echo(s) == b"ping"


def test_verify_client(
    server: ServerFactory, backend: BackendFactory, certs: dict[str, str]
) -> None:
    b = backend(mode="echo")
    port = free_port()
    extra = f"ssl_verify_client on; ssl_client_certificate {certs['ca']};"
    srv = server(tls_conf(port, b.address, certs, extra))
    with tls_client(port, certs, cert=True) as s:
        assert echo(s) == b"ping"
    lines = access_lines(srv, 1)
    assert re.fullmatch(r"TLSv1\.[23]\|localhost\|-\|SUCCESS\|CN=client(,.*)?\|200", lines[0]), (
        lines
    )
    # Without a certificate: refused during the handshake (1.2) or right after it (1.3).
    try:
        with tls_client(port, certs) as s:
            assert echo(s) != b"ping"
    except (ssl.SSLError, OSError):
        pass
    srv.wait_for_log(r"client sent no required SSL certificate")


def test_rsa_and_ecdsa_certificates(
    server: ServerFactory, backend: BackendFactory, certs: dict[str, str]
) -> None:
    b = backend(mode="echo")
    port = free_port()
    extra = (
        f"ssl_certificate {certs['rsacert']}; ssl_certificate_key {certs['rsakey']}; "
        "ssl_protocols TLSv1.2;"
    )
    server(tls_conf(port, b.address, certs, extra))
    for ciphers, kind in (
        ("ECDHE-RSA-AES128-GCM-SHA256", "RSA"),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", "EC"),
    ):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers(ciphers)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as s:
            assert echo(s) == b"ping"
            der = s.getpeercert(binary_form=True)
            assert der is not None
            pem = Path(certs["rsacert" if kind == "RSA" else "cert"]).read_text()
            assert ssl.DER_cert_to_PEM_cert(der).strip() == pem.strip()


def test_missing_certificate_is_an_error(server: ServerFactory, server_kind: str) -> None:
    port = free_port()
    srv = server(
        f"stream {{ server {{ listen 127.0.0.1:{port} ssl; proxy_pass 127.0.0.1:1; }} }}\n",
        start=False,
    )
    from tests.harness import run_nginx, run_pyngx

    args = ["-t", "-p", f"{srv.prefix}/", "-c", str(srv.conf_path)]  # type: ignore[attr-defined]
    res = run_pyngx(args) if server_kind == "pyngx" else run_nginx(args)
    assert res.returncode != 0
    assert re.search(
        r'\[emerg\] (\d+#\d+: )?no "ssl_certificate" is defined for the "listen \.\.\. ssl" '
        r"directive in \S+:\d+",
        res.stderr,
    ), res.stderr


# -- to upstreams -----------------------------------------------------------------------------


class TlsBackend:
    """A TLS echo server in a thread; with `proxy_line`, it first reads a plaintext line."""

    def __init__(self, ctx: ssl.SSLContext, proxy_line: bool = False) -> None:
        self.ctx = ctx
        self.proxy_line = proxy_line
        self.lines: list[bytes] = []
        self.errors: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.proxy_line:
                line = b""
                while not line.endswith(b"\r\n"):
                    byte = conn.recv(1)
                    if not byte:
                        return
                    line += byte
                self.lines.append(line)
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                while data := s.recv(65536):
                    s.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(str(exc))
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def tls_backend(ca: trustme.CA) -> Iterator[Callable[..., TlsBackend]]:
    made: list[TlsBackend] = []

    def make(name: str = "backend.test", proxy_line: bool = False) -> TlsBackend:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(name).configure_cert(ctx)
        b = TlsBackend(ctx, proxy_line)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def proxy_conf(port: int, upstream: str, extra: str) -> str:
    return (
        "stream {\n"
        "  log_format st '$status';\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass {upstream}; proxy_ssl on;\n"
        f"    access_log logs/tls.log st; {extra} }}\n"
        "}\n"
    )


def test_proxy_ssl_verify_name(
    server: ServerFactory, tls_backend: Callable[..., TlsBackend], certs: dict[str, str]
) -> None:
    b = tls_backend("backend.test")
    good, bad = free_port(), free_port()
    verify = f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {certs['ca']};"
    body = (
        "stream {\n"
        "  log_format st '$status';\n"
        f"  server {{ listen 127.0.0.1:{good}; proxy_pass 127.0.0.1:{b.port}; proxy_ssl on;\n"
        f"    {verify} proxy_ssl_name backend.test; proxy_ssl_server_name on;\n"
        "    access_log logs/tls.log st; }\n"
        f"  server {{ listen 127.0.0.1:{bad}; proxy_pass 127.0.0.1:{b.port}; proxy_ssl on;\n"
        f"    {verify} proxy_ssl_name other.test; access_log logs/tls.log st; }}\n"
        "}\n"
    )
    srv = server(body)
    with client("127.0.0.1", good) as c:
        c.sendall(b"hello")
        got = b""
        while len(got) < 5:
            chunk = c.recv(5)
            assert chunk
            got += chunk
        assert got == b"hello"
    with client("127.0.0.1", bad) as c:
        assert recv_all(c, timeout=5, reset_ok=True) == b""
    line = srv.wait_for_log(r"does not match")
    assert re.search(
        r'\[error\] \d+#\d+: \*\d+ upstream SSL certificate does not match "other\.test" while '
        r"SSL handshaking to upstream, client: \S+, server: 127\.0\.0\.1:\d+, upstream: "
        rf'"127\.0\.0\.1:{b.port}", bytes from/to client:0/0, bytes from/to upstream:0/0$',
        line,
    ), line
    assert access_lines(srv, 2) == ["200", "502"]


def test_proxy_protocol_header_before_tls(
    pyngx: ServerFactory, tls_backend: Callable[..., TlsBackend], certs: dict[str, str]
) -> None:
    b = tls_backend("backend.test", proxy_line=True)
    port = free_port()
    pyngx(proxy_conf(port, f"127.0.0.1:{b.port}", "proxy_protocol on;"))
    with client("127.0.0.1", port) as c:
        c.sendall(b"hello")
        assert c.recv(5) == b"hello"
        cport = c.getsockname()[1]
    assert b.lines == [f"PROXY TCP4 127.0.0.23 127.0.0.1 {cport} {port}\r\n".encode()]


def test_certificate_reload_on_hup(
    pyngx: ServerFactory, backend: BackendFactory, certs: dict[str, str], ca: trustme.CA
) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(tls_conf(port, b.address, certs))

    def fingerprint() -> str:
        with tls_client(port, certs) as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return hashlib.sha256(der).hexdigest()

    before = fingerprint()
    fresh = ca.issue_cert("localhost")
    Path(certs["cert"]).write_bytes(fresh.cert_chain_pems[0].bytes())
    Path(certs["key"]).write_bytes(fresh.private_key_pem.bytes())
    mark = srv.log_mark()
    srv.signal(signal.SIGHUP)
    srv.wait_for_log(r"start worker process", since=mark)
    deadline = time.monotonic() + 5
    while fingerprint() == before:
        assert time.monotonic() < deadline, "the old certificate is still served"
        time.sleep(0.1)


def test_certificate_chosen_by_server_name_variable(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    """`ssl_certificate certs/$ssl_server_name.crt;` loads the certificate per server name."""
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    prints = {}
    for name in ("a.test", "b.test"):
        issued = ca.issue_cert(name)
        issued.cert_chain_pems[0].write_to_path(str(certs / f"{name}.crt"))
        issued.private_key_pem.write_to_path(str(certs / f"{name}.key"))
        prints[name] = hashlib.sha256(
            ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())
        ).hexdigest()
    b = backend(mode="echo")
    port = free_port()
    pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port} ssl;\n"
        f"  ssl_certificate {certs}/$ssl_server_name.crt;\n"
        f"  ssl_certificate_key {certs}/$ssl_server_name.key;\n"
        f"  proxy_pass {b.address}; }} }}\n"
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    for name in ("a.test", "b.test", "a.test"):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None and hashlib.sha256(der).hexdigest() == prints[name]
            tls.sendall(b"x")
            assert tls.recv(1) == b"x"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="nosuch.test")
