"""TLS termination in http (`listen ... ssl`) and the PROXY header (`listen ... proxy_protocol`),
against a real pyngx with real clients: curl, openssl s_client, http.client, raw sockets.

Each server block serves its own directory (an index.html naming the server), so a response
tells which server answered; the certificate a client got tells which server the SNI chose.
Differential checks against nginx are in tests/e2e/test_http_ssl_vs_nginx.py.
"""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.harness import ServerProcess, client, free_port, recv_all

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")

try:
    from pyngx.http.special_response import SENT_AS  # noqa: F401

    FULL_ERROR_PAGES = True
except ImportError:  # the skeleton's stand-in special_response has no 495-497 pages
    FULL_ERROR_PAGES = False
needs_error_pages = pytest.mark.skipif(
    not FULL_ERROR_PAGES, reason="needs the full special_response (nginx's 421/496/497 pages)"
)

LOG = (
    "log_format t '$server_name|$status|$ssl_protocol|$ssl_server_name|$ssl_alpn_protocol|"
    "$ssl_client_verify|$ssl_client_s_dn|$https|$scheme|$ssl_session_reused|"
    "$remote_addr|$proxy_protocol_addr|$proxy_protocol_port|$proxy_protocol_server_addr|"
    "$proxy_protocol_server_port|$connection_requests';\n"
    "access_log logs/t.log t;\n"
)
NAMES = ("a.test", "b.test", "c.test", "localhost")
SITE_DIRS = {"a.test": "a", "b.test": "b", "c.test": "c"}  # localhost: d


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """PEM files: an ECDSA cert per name (NAME.crt/NAME.key), an RSA one for a.test, a client
    certificate, and the CA."""
    out: dict[str, str] = {}
    d = tmp_path / "certs"
    d.mkdir()

    def write(name: str, blob: bytes) -> None:
        (d / name).write_bytes(blob)
        out[name] = str(d / name)

    for name in NAMES:
        leaf = ca.issue_cert(name, common_name=name)
        write(f"{name}.crt", leaf.cert_chain_pems[0].bytes())
        write(f"{name}.key", leaf.private_key_pem.bytes())
    rsa_leaf = ca.issue_cert("a.test", common_name="a.test", key_type=trustme.KeyType.RSA)
    write("a.test.rsa.crt", rsa_leaf.cert_chain_pems[0].bytes())
    write("a.test.rsa.key", rsa_leaf.private_key_pem.bytes())
    cli = ca.issue_cert("client@example.com", common_name="client")
    write("client.crt", cli.cert_chain_pems[0].bytes())
    write("client.key", cli.private_key_pem.bytes())
    write("ca.pem", ca.cert_pem.bytes())
    out["dir"] = str(d)
    return out


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """One directory per server, each with an index.html naming it."""
    root = tmp_path / "site"
    for name in ("a", "b", "c", "d"):
        (root / name).mkdir(parents=True)
        (root / name / "index.html").write_text(f"{name.upper()}\n")
    return root


def srv_block(
    port: int, name: str, site: Path, certs: dict[str, str] | None, extra: str = ""
) -> str:
    tls = ""
    if certs is not None:
        tls = (
            f"ssl_certificate {certs[name + '.crt']}; ssl_certificate_key {certs[name + '.key']}; "
        )
    return (
        f"  server {{ listen 127.0.0.1:{port} ssl; server_name {name}; {tls}"
        f"root {site / SITE_DIRS.get(name, 'd')}; {extra} }}\n"
    )


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    head: str
    body: bytes
    version: str | None = None
    alpn: str | None = None
    peer: x509.Certificate | None = None
    session: ssl.SSLSession | None = None
    reused: bool = False


def client_context(
    certs: dict[str, str] | None,
    *,
    alpn: list[str] | None = None,
    cert: bool = False,
    ciphers: str | None = None,
    tls12: bool = False,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if certs is not None:
        ctx.load_verify_locations(certs["ca.pem"])
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        assert certs is not None
        ctx.load_cert_chain(certs["client.crt"], certs["client.key"])
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def parse_reply(data: bytes) -> tuple[int, str, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    m = re.match(r"HTTP/1\.[01] (\d{3})", text)
    assert m, data[:200]
    return int(m.group(1)), text, body


def https(
    port: int,
    sni: str | None,
    *,
    host: str | None = None,
    path: str = "/",
    ctx: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
    source: str | None = None,
    preface: bytes = b"",
) -> Reply:
    """One request on a new TLS connection (HTTP/1.1, Connection: close)."""
    if ctx is None:
        ctx = client_context(None)
    sock = client("127.0.0.1", port, source=source)
    if preface:
        sock.sendall(preface)
    with ctx.wrap_socket(sock, server_hostname=sni, session=session) as s:
        req = f"GET {path} HTTP/1.1\r\nHost: {host or sni or 'x'}\r\nConnection: close\r\n\r\n"
        s.sendall(req.encode())
        data = recv_all(s)
        status, head, body = parse_reply(data)
        der = s.getpeercert(binary_form=True)
        return Reply(
            status,
            head,
            body,
            s.version(),
            s.selected_alpn_protocol(),
            x509.load_der_x509_certificate(der) if der else None,
            s.session,
            s.session_reused,
        )


def cn(cert: x509.Certificate | None) -> str:
    assert cert is not None
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def client_hello(sni: str | None = "a.test", alpn: list[str] | None = None) -> bytes:
    ctx = client_context(None, alpn=alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def read_response(sock: socket.socket) -> bytes:
    """One keepalive response (with Content-Length) from a plain or TLS socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"\r\nContent-Length: (\d+)", head)
    assert m, head
    while len(body) < int(m.group(1)):
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def log_lines(srv: ServerProcess, n: int, name: str = "t.log", timeout: float = 5.0) -> list[str]:
    path = Path(srv.prefix) / "logs" / name
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            assert len(lines) >= n, lines
            return lines
        time.sleep(0.05)


def fields(line: str) -> dict[str, str]:
    keys = (
        "server",
        "status",
        "protocol",
        "sni",
        "alpn",
        "verify",
        "s_dn",
        "https",
        "scheme",
        "reused",
        "remote_addr",
        "pp_addr",
        "pp_port",
        "pp_server_addr",
        "pp_server_port",
        "requests",
    )
    return dict(zip(keys, line.split("|"), strict=True))


def no_worker_trouble(srv: ServerProcess) -> None:
    text = srv.error_log_text()
    assert "[alert]" not in text and "Traceback" not in text and "request failed" not in text, text
    assert srv.running()


# -- SNI and certificates ------------------------------------------------------------------


def test_sni_selects_server_and_certificate(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + "ssl_protocols TLSv1.2 TLSv1.3;\n"
        + srv_block(port, "a.test", site, certs)
        + srv_block(port, "b.test", site, certs)
        + srv_block(port, "c.test", site, None)  # no certificate: the default server's
        + "}\n"
    )
    verified = client_context(certs)
    for name, body in (("a.test", b"A\n"), ("b.test", b"B\n")):
        r = https(port, name, ctx=verified)
        assert (r.status, r.body) == (200, body)
        assert cn(r.peer) == name
    # c.test has no certificate: the handshake uses the default server's, the request c.test.
    r = https(port, "c.test")
    assert (r.status, r.body, cn(r.peer)) == (200, b"C\n", "a.test")
    # An unknown name, and no SNI at all: the default server's certificate.
    r = https(port, "zzz.test", host="b.test")
    assert (r.status, r.body, cn(r.peer)) == (200, b"B\n", "a.test")
    r = https(port, None, host="a.test")
    assert (r.status, cn(r.peer)) == (200, "a.test")
    lines = [fields(x) for x in log_lines(srv, 5)]
    assert [x["sni"] for x in lines] == ["a.test", "b.test", "c.test", "zzz.test", "-"]
    assert all(x["https"] == "on" and x["scheme"] == "https" for x in lines)
    assert lines[0]["protocol"] == "TLSv1.3"


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_curl_resolve_to_several_servers(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port = free_port()
    pyngx(
        "http {\n"
        + LOG
        + srv_block(port, "a.test", site, certs)
        + srv_block(port, "b.test", site, certs)
        + "}\n"
    )
    for name, body in (("a.test", "A\n"), ("b.test", "B\n")):
        out = subprocess.run(
            [
                str(CURL), "-sS", "--max-time", "5", "--cacert", certs["ca.pem"],
                "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/",
                "-w", "|%{http_code}|%{ssl_verify_result}",
            ],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        # curl checks the certificate against the name: success means the right server's.
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"{body}|200|0"


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
def test_openssl_s_client_sni_and_alpn(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port = free_port()
    pyngx(
        "http {\n"
        + LOG
        + srv_block(port, "a.test", site, certs)
        + srv_block(port, "b.test", site, certs)
        + "}\n"
    )
    out = subprocess.run(
        [
            str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "b.test",
            "-alpn", "h2,http/1.1", "-CAfile", certs["ca.pem"], "-verify_return_error", "-ign_eof",
        ],
        input=b"GET / HTTP/1.0\r\nHost: b.test\r\n\r\n", capture_output=True, timeout=10,
    )  # fmt: skip
    text = out.stdout.decode("latin-1")
    assert re.search(r"subject=.*CN ?= ?b\.test", text), text
    assert "ALPN protocol: http/1.1" in text, text  # no h2 without pyngx's HTTP/2
    assert "Verify return code: 0 (ok)" in text, text
    assert "\r\n\r\nB\n" in text


def test_http_client_keepalive_and_session_reuse(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + "ssl_protocols TLSv1.2;\n"
        + srv_block(port, "localhost", site, certs)
        + "}\n"
    )
    ctx = client_context(certs)
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"D\n")
    assert conn.sock is not None
    session = conn.sock.session
    conn.close()
    r = https(port, "localhost", ctx=ctx, session=session)
    assert r.reused and r.status == 200
    lines = [fields(x) for x in log_lines(srv, 4)]
    assert [x["requests"] for x in lines] == ["1", "2", "3", "1"]
    assert [x["reused"] for x in lines] == [".", ".", ".", "r"]
    assert lines[0]["protocol"] == "TLSv1.2"


def test_certificates_by_key_type(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    extra = (
        f"ssl_certificate {certs['a.test.rsa.crt']}; ssl_certificate_key {certs['a.test.rsa.key']};"
    )
    pyngx(
        "http {\n"
        + LOG
        + "ssl_protocols TLSv1.2;\n"
        + srv_block(port, "a.test", site, certs, extra)
        + "}\n"
    )
    for ciphers, key_type in (
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
    ):
        r = https(port, "a.test", ctx=client_context(certs, ciphers=ciphers, tls12=True))
        assert r.status == 200
        assert r.peer is not None and isinstance(r.peer.public_key(), key_type)


def test_certificate_paths_with_ssl_server_name(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port = free_port()
    d = certs["dir"]
    srv = pyngx(
        "http {\n"
        + LOG
        + f"  server {{ listen 127.0.0.1:{port} ssl; server_name _; root {site / 'a'};\n"
        f"    ssl_certificate {d}/$ssl_server_name.crt;\n"
        f"    ssl_certificate_key {d}/$ssl_server_name.key; }}\n"
        "}\n"
    )
    verified = client_context(certs)
    for name in ("a.test", "b.test"):
        r = https(port, name, ctx=verified)
        assert (r.status, cn(r.peer)) == (200, name)
    # No file for this name: the handshake fails, and nothing else does.
    with pytest.raises((ssl.SSLError, OSError)):
        https(port, "nofile.test")
    assert https(port, "b.test", ctx=verified).status == 200
    no_worker_trouble(srv)


def test_protocols(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + "ssl_protocols TLSv1.3;\n"
        + srv_block(port, "a.test", site, certs)
        + "}\n"
    )
    with pytest.raises(ssl.SSLError):
        https(port, "a.test", ctx=client_context(None, tls12=True))
    line = srv.wait_for_log(r"while SSL handshaking")
    assert re.search(
        r"\[info\] .*SSL_do_handshake\(\) failed \(SSL: error:[0-9A-F]{8}:SSL routines::"
        r"unsupported protocol\) while SSL handshaking, client: 127\.0\.0\.\d+, "
        rf"server: 127\.0\.0\.1:{port}$",
        line,
    ), line
    assert https(port, "a.test").version == "TLSv1.3"


def test_reject_handshake(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + f"  server {{ listen 127.0.0.1:{port} ssl default_server; ssl_reject_handshake on; }}\n"
        + srv_block(port, "a.test", site, certs)
        + "}\n"
    )
    for sni in ("zzz.test", None):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
            https(port, sni)
    assert https(port, "a.test").body == b"A\n"
    assert srv.error_log_text().count("handshake rejected while SSL handshaking") == 2


# -- client certificates, 421 ----------------------------------------------------------------


def verify_conf(port: int, certs: dict[str, str], site: Path, mode: str) -> str:
    verify = f"ssl_verify_client {mode}; ssl_client_certificate {certs['ca.pem']};"
    return (
        "http {\n"
        + LOG
        + "ssl_protocols TLSv1.2 TLSv1.3;\n"
        + srv_block(port, "a.test", site, certs)
        + srv_block(port, "b.test", site, certs, verify)
        + "}\n"
    )


def test_verify_client_on(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(verify_conf(port, certs, site, "on"))
    r = https(port, "b.test", ctx=client_context(certs, cert=True))
    assert (r.status, r.body) == (200, b"B\n")
    r = https(port, "b.test", ctx=client_context(certs))
    if FULL_ERROR_PAGES:
        assert r.status == 400 and b"No required SSL certificate was sent" in r.body
    srv.wait_for_log(
        r"\[info\] .* client sent no required SSL certificate while reading client request "
        r'headers, client: 127\.0\.0\.\d+, server: b\.test, request: "GET / HTTP/1\.1"'
    )
    lines = [fields(x) for x in log_lines(srv, 2)]
    assert lines[0]["verify"] == "SUCCESS"
    assert re.fullmatch(r"CN=client(,.*)?", lines[0]["s_dn"]), lines[0]
    assert (lines[1]["verify"], lines[1]["s_dn"]) == ("NONE", "-")


def test_untrusted_client_certificate(
    pyngx: ServerFactory, certs: dict[str, str], site: Path, tmp_path: Path
) -> None:
    """As in nginx, the handshake completes; the request is answered with 495."""
    from pyngx.http.ssl import LIBSSL

    if not LIBSSL.ok:
        pytest.skip("libssl's verify callback is not reachable here")
    stranger = tmp_path / "stranger.pem"
    leaf = trustme.CA().issue_cert("stranger@example.com", common_name="stranger")
    stranger.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
    port = free_port()
    srv = pyngx(verify_conf(port, certs, site, "on"))
    ctx = client_context(certs)
    ctx.load_cert_chain(str(stranger))
    r = https(port, "b.test", ctx=ctx)
    if FULL_ERROR_PAGES:
        assert r.status == 400 and b"The SSL certificate error" in r.body
    else:
        assert r.status == 495
    srv.wait_for_log(
        r"\[info\] .* client SSL certificate verify error: \(21:unable to verify the first "
        r"certificate\) while reading client request headers, client: 127\.0\.0\.\d+, "
        r"server: b\.test"
    )
    line = fields(log_lines(srv, 1)[0])
    assert line["verify"] == "FAILED:unable to verify the first certificate"
    assert line["s_dn"].startswith("CN=stranger")


def test_verify_client_optional(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(verify_conf(port, certs, site, "optional"))
    assert https(port, "b.test", ctx=client_context(certs)).status == 200
    assert https(port, "b.test", ctx=client_context(certs, cert=True)).status == 200
    lines = [fields(x) for x in log_lines(srv, 2)]
    assert [x["verify"] for x in lines] == ["NONE", "SUCCESS"]


def test_misdirected_request(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(verify_conf(port, certs, site, "on"))
    # SNI a.test, Host b.test: b.test wants client certificates the handshake did not ask for.
    r = https(port, "a.test", host="b.test")
    assert r.status == 421
    line = srv.wait_for_log(r"client attempted")
    assert re.search(
        r"\[info\] .* client attempted to request the server name different from the one that "
        r"was negotiated while reading client request headers, client: 127\.0\.0\.\d+, "
        r'server: a\.test, request: "GET / HTTP/1\.1", host: "b\.test"$',
        line,
    ), line
    # SNI b.test, Host a.test: a.test does not verify clients, so it serves the request.
    r = https(port, "b.test", host="a.test", ctx=client_context(certs, cert=True))
    assert (r.status, r.body) == (200, b"A\n")
    lines = [fields(x) for x in log_lines(srv, 2)]
    assert [(x["server"], x["status"], x["sni"]) for x in lines] == [
        ("a.test", "421", "a.test"),
        ("a.test", "200", "b.test"),
    ]


# -- plain HTTP on an ssl port -------------------------------------------------------------


def test_plain_http_to_ssl_port(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + srv_block(port, "a.test", site, certs)
        + srv_block(port, "b.test", site, certs, "error_page 497 https://$host:$server_port$uri;")
        + "}\n"
    )
    with client("127.0.0.1", port) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        status, head, body = parse_reply(recv_all(s))
    if FULL_ERROR_PAGES:
        assert status == 400
        assert b"<title>400 The plain HTTP request was sent to HTTPS port</title>" in body
        assert "Connection: close" in head
    srv.wait_for_log(
        r"\[info\] .* client sent plain HTTP request to HTTPS port while reading client request "
        r'headers, client: 127\.0\.0\.\d+, server: a\.test, request: "GET /x HTTP/1\.1"'
    )
    # error_page 497: the usual redirect to https.
    with client("127.0.0.1", port) as s:
        s.sendall(b"GET /y HTTP/1.1\r\nHost: b.test\r\n\r\n")
        status, head, _ = parse_reply(recv_all(s))
    assert status == 302
    assert f"Location: https://b.test:{port}/y" in head
    lines = [fields(x) for x in log_lines(srv, 2)]
    assert [(x["https"], x["scheme"], x["protocol"]) for x in lines] == [("", "http", "-")] * 2
    # The port still speaks TLS.
    assert https(port, "a.test").status == 200


# -- ALPN ------------------------------------------------------------------------------------


def test_alpn(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    port2 = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + srv_block(port, "a.test", site, certs)
        # `listen ... http2` offers h2 only when pyngx speaks HTTP/2.
        + f"  server {{ listen 127.0.0.1:{port2} ssl http2; server_name b.test; "
        f"ssl_certificate {certs['b.test.crt']}; ssl_certificate_key {certs['b.test.key']}; "
        f"root {site / 'b'}; }}\n" + "}\n"
    )
    r = https(port, "a.test", ctx=client_context(None, alpn=["h2", "http/1.1"]))
    assert (r.status, r.alpn) == (200, "http/1.1")
    r = https(port, "a.test", ctx=client_context(None, alpn=["http/1.0"]))
    assert r.alpn == "http/1.0"
    assert https(port, "a.test").alpn is None
    from pyngx.http.ssl import h2_available

    if not h2_available():
        r = https(port2, "b.test", ctx=client_context(None, alpn=["h2", "http/1.1"]))
        assert (r.status, r.alpn) == (200, "http/1.1")
    # Nothing in common: refused with nginx's alert (since nginx 1.21.4).
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        https(port, "a.test", ctx=client_context(None, alpn=["foo"]))
    srv.wait_for_log(
        r"\[info\] .* SSL_do_handshake\(\) failed \(SSL: error:0A0000EB:SSL routines::no "
        r"application protocol\) while SSL handshaking"
    )
    lines = [fields(x) for x in log_lines(srv, 3)]
    assert [x["alpn"] for x in lines[:3]] == ["http/1.1", "http/1.0", "-"]


# -- hostile clients -------------------------------------------------------------------------


HOSTILE = [
    b"\x16\x03\x01\x00\x05hello",  # a record that is no ClientHello
    b"\x80\x03\x01\x00\x05hello",  # SSLv2 framing, nonsense inside
    b"\x16\x03\x01\xff\xff" + b"\x01" * 64,  # a record longer than what follows, then EOF
    b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03" + b"\x00" * 36,  # lengths that disagree
    b"\x16\x09\x09\x00\x10" + b"\x00" * 16,  # not TLS 1.x
    b"\x17\x03\x03\x00\x05hello",  # application data first: plain HTTP to the server
    b"\x16" + bytes(range(256)) * 8,  # garbage after a handshake type byte
]


def test_garbage_tls_next_to_a_live_connection(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port = free_port()
    srv = pyngx("http {\n" + LOG + srv_block(port, "localhost", site, certs) + "}\n")
    ctx = client_context(certs)
    live = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    live.request("GET", "/")
    assert live.getresponse().read() == b"D\n"
    hello = client_hello("localhost")
    for junk in [*HOSTILE, hello[:40], hello, hello[:-1]]:
        with client("127.0.0.1", port, source="127.0.0.9") as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            recv_all(s, reset_ok=True)
    live.request("GET", "/")
    assert live.getresponse().read() == b"D\n"
    assert https(port, "localhost", ctx=ctx).status == 200
    text = srv.wait_for_log(r"peer closed connection in SSL handshake")
    text = srv.error_log_text()
    assert "SSL_do_handshake() failed (SSL: error:" in text
    assert re.search(r"\[(info|crit)\] .* while SSL handshaking, client: 127\.0\.0\.9, ", text)
    no_worker_trouble(srv)


def test_handshake_timeouts(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + "client_header_timeout 1s;\n"
        + srv_block(port, "localhost", site, certs)
        + "}\n"
    )
    hello = client_hello("localhost")
    sockets = [client("127.0.0.1", port) for _ in range(3)]
    sockets[1].sendall(hello[:30])  # half a ClientHello
    sockets[2].sendall(hello)  # a whole one, then nothing
    start = time.monotonic()
    for s in sockets:
        recv_all(s, reset_ok=True)
        s.close()
    assert time.monotonic() - start < 4
    want = "client timed out (110: Connection timed out) while SSL handshaking"
    deadline = time.monotonic() + 3
    while srv.error_log_text().count(want) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.error_log_text().count(want) == 3
    assert https(port, "localhost").status == 200
    no_worker_trouble(srv)


def test_graceful_shutdown_during_handshake(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    """Connections that have not got past the start of their handshake do not hold a graceful
    shutdown (nginx closes the ones still waiting for their first byte; pyngx also those whose
    ClientHello has not fully arrived, which OpenSSL has not seen yet)."""
    port = free_port()
    srv = pyngx("http {\n" + LOG + srv_block(port, "localhost", site, certs) + "}\n")
    hello = client_hello("localhost")
    stuck = [client("127.0.0.1", port) for _ in range(2)]
    stuck[1].sendall(hello[:20])
    time.sleep(0.3)
    srv.signal(signal.SIGQUIT)
    deadline = time.monotonic() + 5
    while srv.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.running(), "pyngx did not exit with handshakes in progress"
    for s in stuck:
        assert recv_all(s, reset_ok=True) == b""
        s.close()


# -- PROXY protocol ------------------------------------------------------------------------


def pp_conf(port: int, site: Path, certs: dict[str, str] | None, extra: str = "") -> str:
    tls = ""
    if certs is not None:
        tls = (
            f" ssl; ssl_certificate {certs['a.test.crt']}; "
            f"ssl_certificate_key {certs['a.test.key']}"
        )
    return (
        f"  server {{ listen 127.0.0.1:{port} proxy_protocol{tls}; server_name a.test; "
        f"root {site / 'a'}; {extra} }}\n"
    )


V2_TLVS = [
    (pp.PP2_TYPE_ALPN, b"h2"),
    (pp.PP2_TYPE_AUTHORITY, b"example.com"),
    (
        pp.PP2_TYPE_SSL,
        b"\x01\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x0bclient.name",
    ),
]


def plain_get(port: int, preface: bytes, *, source: str = "127.0.0.23") -> int:
    with client("127.0.0.1", port, source=source) as s:
        s.sendall(preface + b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n")
        data = recv_all(s, reset_ok=True)
    return parse_reply(data)[0] if data else 0


def test_proxy_protocol_plain(pyngx: ServerFactory, site: Path) -> None:
    port = free_port()
    tlv_log = (
        "log_format tlv '$proxy_protocol_tlv_alpn|$proxy_protocol_tlv_authority|"
        "$proxy_protocol_tlv_0x02|$proxy_protocol_tlv_ssl_version|$proxy_protocol_tlv_ssl_cn|"
        "$proxy_protocol_tlv_ssl_verify';\n"
    )
    srv = pyngx(
        "http {\n"
        + LOG
        + tlv_log
        + pp_conf(port, site, None, "access_log logs/tlv.log tlv; access_log logs/t.log t;")
        + "}\n"
    )
    v2 = pp.encode_v2(
        pp.Command.PROXY, pp.Transport.STREAM, "2001:db8::1", 1234, "2001:db8::2", 443, V2_TLVS
    )
    cases = [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1111 80\r\n",
        b"PROXY TCP6 2001:db8::5 2001:db8::6 2222 8080\r\n",
        b"PROXY UNKNOWN\r\n",
        v2,
        pp.encode_v2_local(),
    ]
    for preface in cases:
        assert plain_get(port, preface) == 200
    lines = [fields(x) for x in log_lines(srv, len(cases))]
    got = [
        (x["pp_addr"], x["pp_port"], x["pp_server_addr"], x["pp_server_port"], x["remote_addr"])
        for x in lines
    ]
    local = "127.0.0.23"  # tests.harness.client's default source
    assert got == [
        ("192.0.2.1", "1111", "198.51.100.2", "80", local),
        ("2001:db8::5", "2222", "2001:db8::6", "8080", local),
        ("-", "-", "-", "-", local),
        ("2001:db8::1", "1234", "2001:db8::2", "443", local),
        ("-", "-", "-", "-", local),
    ]
    tlv = log_lines(srv, len(cases), "tlv.log")
    assert tlv[3] == "h2|example.com|example.com|TLSv1.3|client.name|0"
    assert tlv[0] == "-|-|-|-|-|-"


def test_proxy_protocol_then_tls(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    srv = pyngx("http {\n" + LOG + pp_conf(port, site, certs) + "}\n")
    v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 1111 443\r\n"
    v2 = pp.encode_v2(pp.Command.PROXY, pp.Transport.STREAM, "192.0.2.7", 7777, "198.51.100.2", 443)
    for preface in (v1, v2):
        r = https(port, "a.test", preface=preface, ctx=client_context(certs))
        assert (r.status, r.body) == (200, b"A\n")
    # A client sending the PROXY header and its ClientHello in one write.
    hello_first = v1 + client_hello("a.test")
    with client("127.0.0.1", port) as s:
        s.sendall(hello_first)
        assert s.recv(5)[:1] == b"\x16"  # the ServerHello
    # PROXY header, then plain HTTP: 497.
    status = plain_get(port, v1)
    if FULL_ERROR_PAGES:
        assert status == 400
    lines = [fields(x) for x in log_lines(srv, 3)]
    assert [(x["pp_addr"], x["https"], x["sni"]) for x in lines] == [
        ("192.0.2.1", "on", "a.test"),
        ("192.0.2.7", "on", "a.test"),
        ("192.0.2.1", "", "-"),
    ]


def test_proxy_protocol_realip(pyngx: ServerFactory, certs: dict[str, str], site: Path) -> None:
    port = free_port()
    port2 = free_port()
    realip = "set_real_ip_from 127.0.0.2; real_ip_header proxy_protocol;"
    realip_log = "log_format rip '$remote_addr|$remote_port|$realip_remote_addr';"
    srv = pyngx(
        "http {\n"
        + realip_log
        + "access_log logs/t.log rip;\n"
        + pp_conf(port, site, None, realip)
        + pp_conf(port2, site, certs, realip)
        + "}\n"
    )
    v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 1111 443\r\n"
    assert plain_get(port, v1, source="127.0.0.2") == 200  # trusted
    assert plain_get(port, v1, source="127.0.0.3") == 200  # not trusted
    r = https(port2, "a.test", preface=v1, source="127.0.0.2")
    assert r.status == 200
    lines = log_lines(srv, 3)
    assert lines[0] == "192.0.2.1|1111|127.0.0.2"
    assert re.fullmatch(r"127\.0\.0\.3\|\d+\|127\.0\.0\.3", lines[1]), lines
    assert lines[2] == "192.0.2.1|1111|127.0.0.2"


BROKEN_HEADERS = [
    b"PROXY garbage here\r\n",
    b"GET / HTTP/1.0\r\n\r\n",  # no header at all
    b"PROXY TCP4 1.2.3.4 5.6",  # incomplete in the first read
    b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b"x" * 200,  # no CRLF within the v1 limit
    pp.V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    pp.V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\x00" * 12,  # longer than what came
    b"\x16\x03\x01\x00\x05hello",  # TLS where the header should be
]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "ssl"])
def test_broken_proxy_headers_next_to_live_connection(
    pyngx: ServerFactory, certs: dict[str, str], site: Path, tls: bool
) -> None:
    port = free_port()
    srv = pyngx("http {\n" + LOG + pp_conf(port, site, certs if tls else None) + "}\n")
    good = b"PROXY TCP4 192.0.2.1 198.51.100.2 1111 80\r\n"
    # A live keepalive connection, before and after the broken ones.
    live = client("127.0.0.1", port)
    live.sendall(good)
    if tls:
        live = client_context(None).wrap_socket(live, server_hostname="a.test")
    req = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
    live.sendall(req)
    assert read_response(live).endswith(b"A\n")
    for junk in BROKEN_HEADERS:
        with client("127.0.0.1", port, source="127.0.0.9") as s:
            s.sendall(junk)
            assert recv_all(s, reset_ok=True) == b""  # closed without an answer
    live.sendall(req)
    assert read_response(live).endswith(b"A\n")
    live.close()
    text = srv.error_log_text()
    assert text.count(" while reading PROXY protocol, client: 127.0.0.9, server: ") == len(
        BROKEN_HEADERS
    ), text
    assert re.search(
        r'\[error\] .* broken header: "PROXY garbage here\r\n" while reading PROXY protocol, '
        rf"client: 127\.0\.0\.9, server: 127\.0\.0\.1:{port}",
        text,
    ), text
    assert "[error] " in text and "header is too large while reading PROXY protocol" in text
    assert "unknown PROXY protocol version: 3 while reading PROXY protocol" in text
    no_worker_trouble(srv)


def test_proxy_protocol_eof_and_timeout(
    pyngx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    port, port2 = free_port(), free_port()
    srv = pyngx(
        "http {\n"
        + LOG
        + "client_header_timeout 1s;\n"
        + pp_conf(port, site, None)
        + pp_conf(port2, site, certs)
        + "}\n"
    )
    for p in (port, port2):
        with client("127.0.0.1", p) as s:
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s, reset_ok=True) == b""
        with client("127.0.0.1", p) as s:
            assert recv_all(s, timeout=5, reset_ok=True) == b""  # closed at the timeout
    text = srv.error_log_text()
    assert "[info] " in text and "client closed connection while reading PROXY protocol" in text
    # On an ssl port nginx reads the header from a peek that saw nothing.
    assert re.search(r'\[error\] .* broken header: "" while reading PROXY protocol', text), text
    assert text.count("client timed out (110: Connection timed out) while reading PROXY") == 2
    no_worker_trouble(srv)
