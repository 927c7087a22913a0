"""TLS, realip and the PROXY header in http: pyngx against Debian's nginx 1.22, side by side.

Each test starts both with the same configuration (on their own ports), plays the same clients
against each, and compares what the clients saw, the access log lines, and the error log lines
(without time, pid and connection number). nginx 1.22 differs from mainline, which pyngx follows,
in a few places the configurations avoid: its default ssl_protocols has no TLSv1.3 (set
explicitly here), it logs some handshake errors at `crit` that mainline logs at `info`, and it
still accepts `ssl on`.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.harness import (
    NGINX_BIN,
    NGINX_STREAM_MODULE,
    ServerProcess,
    client,
    free_port,
    nginx_available,
    recv_all,
)

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not nginx_available(), reason="Debian's nginx is not installed"),
]

try:
    from pyngx.http.special_response import SENT_AS  # noqa: F401

    FULL_ERROR_PAGES = True
except ImportError:
    FULL_ERROR_PAGES = False
needs_error_pages = pytest.mark.skipif(
    not FULL_ERROR_PAGES, reason="needs the full special_response (nginx's 421/496/497 pages)"
)

TLS_LOG = (
    "log_format t '$server_name|$status|$ssl_protocol|$ssl_server_name|$ssl_client_verify|"
    "$ssl_client_s_dn|$https|$scheme|$ssl_alpn_protocol|$ssl_session_reused';\n"
    "access_log logs/t.log t;\n"
)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "certs"
    d.mkdir()
    out: dict[str, str] = {"dir": str(d)}

    def write(name: str, blob: bytes) -> None:
        (d / name).write_bytes(blob)
        out[name] = str(d / name)

    for name in ("a.test", "b.test"):
        leaf = ca.issue_cert(name, common_name=name)
        write(f"{name}.crt", leaf.cert_chain_pems[0].bytes())
        write(f"{name}.key", leaf.private_key_pem.bytes())
    cli = ca.issue_cert("client@example.com", common_name="client")
    write("client.crt", cli.cert_chain_pems[0].bytes())
    write("client.key", cli.private_key_pem.bytes())
    write("ca.pem", ca.cert_pem.bytes())
    return out


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        (root / name / "index.html").write_text(f"{name.upper()}\n")
    return root


Scenario = Callable[[int], list[object]]


def both(
    pyngx: ServerFactory, nginx: ServerFactory, conf: Callable[[int], str]
) -> tuple[tuple[ServerProcess, int], tuple[ServerProcess, int]]:
    """nginx and pyngx with the same configuration, each on its own port."""
    ports = free_port(), free_port()
    n = nginx(conf(ports[0]))
    p = pyngx(conf(ports[1]))
    return (n, ports[0]), (p, ports[1])


_PREFIX = re.compile(r"^\S+ \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?")


def error_lines(srv: ServerProcess, port: int, words: tuple[str, ...]) -> list[str]:
    """Log entries mentioning one of `words`, as `[level] message` with the port made neutral
    (an entry goes on over the lines that do not start with a time, as quoted input does)."""
    entries: list[str] = []
    for line in srv.error_log_text().splitlines():
        m = _PREFIX.match(line)
        if m is None:
            if entries:
                entries[-1] += "\n" + line
            continue
        entries.append(f"[{m.group(1)}] {line[m.end() :]}")
    return [e.replace(f":{port}", ":PORT") for e in entries if any(w in e for w in words)]


def access_lines(srv: ServerProcess, n: int, name: str = "t.log") -> list[str]:
    path = Path(srv.prefix) / "logs" / name
    deadline = time.monotonic() + 5
    while True:
        got = path.read_text().splitlines() if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def normalized(data: bytes) -> bytes:
    """A response without what differs by implementation: version, Date."""
    data = re.sub(rb"nginx/\d+\.\d+\.\d+", b"nginx/X", data)
    return re.sub(rb"\r\nDate: [^\r]*", b"", data)


def tls_context(certs: dict[str, str] | None, *, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        assert certs is not None
        ctx.load_cert_chain(certs["client.crt"], certs["client.key"])
    return ctx


def tls_get(
    port: int,
    sni: str | None,
    host: str,
    *,
    ctx: ssl.SSLContext | None = None,
    preface: bytes = b"",
    source: str = "127.0.0.23",
) -> tuple[bytes, str]:
    """(the response, the certificate's CN) for one HTTP/1.0 request over TLS."""
    sock = client("127.0.0.1", port, source=source)
    if preface:
        sock.sendall(preface)
    with (ctx or tls_context(None)).wrap_socket(sock, server_hostname=sni) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = recv_all(s)
        der = s.getpeercert(binary_form=True)
    assert der is not None
    name = x509.load_der_x509_certificate(der).subject
    cn = str(name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
    return normalized(data), cn


def plain(port: int, data: bytes, *, source: str = "127.0.0.23") -> bytes:
    with client("127.0.0.1", port, source=source) as s:
        s.sendall(data)
        try:
            return normalized(recv_all(s, reset_ok=True))
        except TimeoutError:
            return b"<timeout>"


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = tls_context(None)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- SNI, 421, 496, 497 ----------------------------------------------------------------------


def sni_conf(certs: dict[str, str], site: Path) -> Callable[[int], str]:
    def conf(port: int) -> str:
        def tls(name: str) -> str:
            cert, key = certs[name + ".crt"], certs[name + ".key"]
            return f"ssl_certificate {cert}; ssl_certificate_key {key};"

        return (
            "http {\n" + TLS_LOG + "ssl_protocols TLSv1.2 TLSv1.3;\n"
            f"server {{ listen 127.0.0.1:{port} ssl; server_name a.test; {tls('a.test')}\n"
            f"  root {site / 'a'}; }}\n"
            f"server {{ listen 127.0.0.1:{port} ssl; server_name b.test; {tls('b.test')}\n"
            f"  ssl_verify_client on; ssl_client_certificate {certs['ca.pem']};\n"
            f"  root {site / 'b'}; }}\n"
            f"server {{ listen 127.0.0.1:{port} ssl; server_name c.test; root {site / 'c'}; }}\n"
            "}\n"
        )

    return conf


SNI_CASES: list[tuple[str | None, str, bool]] = [
    ("a.test", "a.test", False),
    ("b.test", "b.test", True),
    ("c.test", "c.test", False),  # no certificate of its own: the default server's
    ("zzz.test", "a.test", False),  # unknown name: default certificate, Host decides
    (None, "c.test", False),
    ("b.test", "a.test", True),  # a.test does not verify clients: served
    ("B.TEST", "b.test", True),
]


def test_sni_selection_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    results = []
    for srv, port in both(pyngx, nginx, sni_conf(certs, site)):
        got = [
            tls_get(port, sni, host, ctx=tls_context(certs, cert=cert))
            for sni, host, cert in SNI_CASES
        ]
        results.append((got, access_lines(srv, len(SNI_CASES))))
    (n_got, n_log), (p_got, p_log) = results
    assert [cn for _, cn in p_got] == [cn for _, cn in n_got]
    assert [r.split(b"\r\n")[0] for r, _ in p_got] == [r.split(b"\r\n")[0] for r, _ in n_got]
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r, _ in p_got] == [
        r.rsplit(b"\r\n\r\n", 1)[1] for r, _ in n_got
    ]
    assert p_log == n_log


def test_misdirected_request_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    results = []
    for srv, port in both(pyngx, nginx, sni_conf(certs, site)):
        got, _ = tls_get(port, "a.test", "b.test")
        log = access_lines(srv, 1)
        errors = error_lines(srv, port, ("negotiated",))
        results.append((got, log, errors))
    (n_got, n_log, n_err), (p_got, p_log, p_err) = results
    assert n_got.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
    assert p_got.startswith(b"HTTP/1.1 421 ")
    if FULL_ERROR_PAGES:
        assert p_got == n_got
    assert p_log == n_log
    assert p_err == n_err and len(n_err) == 1


@needs_error_pages
def test_no_client_certificate_and_plain_http_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    results = []
    words = ("plain HTTP", "no required SSL certificate")
    for srv, port in both(pyngx, nginx, sni_conf(certs, site)):
        no_cert, _ = tls_get(port, "b.test", "b.test")
        plain_http = plain(port, b"GET /x HTTP/1.1\r\nHost: b.test\r\n\r\n")
        time.sleep(0.2)
        results.append((no_cert, plain_http, error_lines(srv, port, words)))
    assert results[1] == results[0]
    assert results[0][0].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert len(results[0][2]) == 2


@needs_error_pages
def test_logged_status_of_496_497_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    logs = []
    for srv, port in both(pyngx, nginx, sni_conf(certs, site)):
        tls_get(port, "b.test", "b.test")
        plain(port, b"GET /x HTTP/1.1\r\nHost: b.test\r\n\r\n")
        logs.append(access_lines(srv, 2))
    assert logs[1] == logs[0]


CERT_LOG = (
    "log_format c '$ssl_client_verify|$ssl_client_s_dn|$ssl_client_i_dn|"
    "$ssl_client_s_dn_legacy|$ssl_client_i_dn_legacy|$ssl_client_serial|"
    "$ssl_client_fingerprint|$ssl_client_v_start|$ssl_client_v_end|$ssl_client_v_remain|"
    "$ssl_client_escaped_cert|$ssl_protocol|$ssl_cipher|$ssl_ciphers|$ssl_server_name|"
    "$ssl_alpn_protocol|$ssl_early_data';\n"
    "access_log logs/c.log c;\n"
)


def test_tls_variables_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    def conf(port: int) -> str:
        tls = f"ssl_certificate {certs['a.test.crt']}; ssl_certificate_key {certs['a.test.key']};"
        return (
            "http {\n" + CERT_LOG + "ssl_protocols TLSv1.2 TLSv1.3;\n"
            f"server {{ listen 127.0.0.1:{port} ssl; server_name a.test; {tls}\n"
            f"  ssl_verify_client optional; ssl_client_certificate {certs['ca.pem']};\n"
            f"  root {site / 'a'}; }}\n"
            "}\n"
        )

    logs = []
    for srv, port in both(pyngx, nginx, conf):
        tls12 = tls_context(certs, cert=True)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.set_alpn_protocols(["http/1.1"])
        tls_get(port, "a.test", "a.test", ctx=tls12)
        tls_get(port, None, "a.test", ctx=tls_context(certs, cert=True))
        tls_get(port, "a.test", "a.test", ctx=tls_context(certs))
        logs.append(access_lines(srv, 3, "c.log"))
    assert logs[1] == logs[0]
    assert logs[0][0].startswith("SUCCESS|CN=client")


def test_client_certificate_errors_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path, tmp_path: Path
) -> None:
    """Untrusted and self-signed client certificates complete the handshake; the request is
    then answered by ssl_verify_client's mode (495 for on/optional, served for
    optional_no_ca when the error is one it lets through)."""
    other = trustme.CA().issue_cert("stranger@example.com", common_name="stranger")
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(other.private_key_and_cert_chain_pem.bytes())
    selfsigned = tmp_path / "self.pem"
    selfsigned.write_bytes(
        trustme.CA().private_key_pem.bytes() + b"\n" + trustme.CA().cert_pem.bytes()
    )
    own = trustme.CA()
    own_pem = tmp_path / "own.pem"
    own_pem.write_bytes(own.private_key_pem.bytes() + own.cert_pem.bytes())

    def conf(port: int) -> str:
        tls = f"ssl_certificate {certs['a.test.crt']}; ssl_certificate_key {certs['a.test.key']};"
        servers = ""
        for name, mode in (("on", "on"), ("opt", "optional"), ("noca", "optional_no_ca")):
            servers += (
                f"server {{ listen 127.0.0.1:{port} ssl; server_name {name}; {tls}\n"
                f"  ssl_verify_client {mode}; ssl_client_certificate {certs['ca.pem']};\n"
                f"  root {site / 'a'}; }}\n"
            )
        return (
            "http {\n"
            "log_format v '$server_name|$status|$ssl_client_verify|$ssl_client_s_dn';\n"
            "access_log logs/v.log v; ssl_protocols TLSv1.2 TLSv1.3;\n" + servers + "}\n"
        )

    def with_cert(path: Path | None) -> ssl.SSLContext:
        ctx = tls_context(None)
        if path is not None:
            ctx.load_cert_chain(str(path))
        return ctx

    results = []
    for srv, port in both(pyngx, nginx, conf):
        lines = []
        for name in ("on", "opt", "noca"):
            for path in (stranger, own_pem, None):
                got, _ = tls_get(port, name, name, ctx=with_cert(path))
                lines.append(got.split(b"\r\n")[0])
        time.sleep(0.2)
        # nginx sends and logs 495/496 as 400; pyngx's logged status does not follow yet
        # (see test_logged_status_of_496_497_vs_nginx), nor its status line without the full
        # special_response: compare those as 400 here.
        logged = [re.sub(r"\|49[5-7]\|", "|400|", x) for x in access_lines(srv, 9, "v.log")]
        if not FULL_ERROR_PAGES:
            lines = [re.sub(rb" 49[5-7] $", b" 400 Bad Request", x) for x in lines]
        results.append((lines, logged, error_lines(srv, port, ("certificate",))))
    assert results[1] == results[0]
    assert results[0][0][0] == b"HTTP/1.1 400 Bad Request"


# -- handshakes that fail ------------------------------------------------------------------


def test_failed_handshakes_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    def conf(port: int) -> str:
        tls = f"ssl_certificate {certs['a.test.crt']}; ssl_certificate_key {certs['a.test.key']};"
        return (
            "http {\n" + TLS_LOG + "ssl_protocols TLSv1.2 TLSv1.3; client_header_timeout 1s;\n"
            f"server {{ listen 127.0.0.1:{port} ssl default_server; ssl_reject_handshake on; }}\n"
            f"server {{ listen 127.0.0.1:{port} ssl; server_name a.test; {tls}\n"
            f"  root {site / 'a'}; }}\n"
            "}\n"
        )

    hello = client_hello("a.test")
    alerts: list[list[bytes]] = []
    errors: list[list[str]] = []
    for srv, port in both(pyngx, nginx, conf):
        got = [
            plain(port, client_hello("r.test")),  # rejected by the default server
            plain(port, client_hello(None)),
            plain(port, client_hello("a.test", ["foo"])),  # no protocol in common
        ]
        alerts.append(got)
        with client("127.0.0.1", port) as s:  # a record that is no ClientHello
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            recv_all(s, reset_ok=True)
        with client("127.0.0.1", port) as s:  # half a ClientHello, then goodbye
            s.sendall(hello[:40])
            s.shutdown(socket.SHUT_WR)
            recv_all(s, reset_ok=True)
        with client("127.0.0.1", port) as s:  # nothing at all, then goodbye
            s.shutdown(socket.SHUT_WR)
            recv_all(s, reset_ok=True)
        with client("127.0.0.1", port) as s:  # half a ClientHello, then silence
            s.sendall(hello[:40])
            recv_all(s, reset_ok=True)
        time.sleep(0.3)
        errors.append(error_lines(srv, port, ("handshak", "timed out", "closed connection", "SSL")))
    assert alerts[1] == alerts[0]
    assert alerts[0][0] == b"\x15\x03\x03\x00\x02\x02\x70"
    assert errors[1] == errors[0]
    assert len(errors[0]) == 7, errors[0]


# -- realip ----------------------------------------------------------------------------------


REALIP_LOG = (
    "log_format r '$remote_addr|$realip_remote_addr|$uri';\n"
    "log_format rp '$remote_addr|$remote_port|$realip_remote_addr';\n"
    "access_log logs/r.log r;\n"
)


def realip_conf(site: Path) -> Callable[[int], str]:
    def conf(port: int) -> str:
        p = [port, port + 1, port + 2, port + 3]
        return (
            "http {\n" + REALIP_LOG + f"root {site / 'a'};\n"
            f"server {{ listen 127.0.0.1:{p[0]}; set_real_ip_from 127.0.0.2; }}\n"
            f"server {{ listen 127.0.0.1:{p[1]}; set_real_ip_from 127.0.0.2;\n"
            "  set_real_ip_from 10.0.0.0/8; real_ip_header X-Forwarded-For; }\n"
            f"server {{ listen 127.0.0.1:{p[2]}; set_real_ip_from 127.0.0.2;\n"
            "  set_real_ip_from 10.0.0.0/8; set_real_ip_from 2001:db8::/32;\n"
            "  real_ip_header X-Forwarded-For; real_ip_recursive on; }\n"
            f"server {{ listen 127.0.0.1:{p[3]}; set_real_ip_from 127.0.0.0/30;\n"
            "  real_ip_header X-Client; access_log logs/r.log r; access_log logs/rp.log rp;\n"
            "  location /loc/ { real_ip_header X-Other; } }\n"
            "}\n"
        )

    return conf


XFF = [
    "192.0.2.1, 10.1.1.1",
    "192.0.2.1,10.2.2.2, 10.1.1.1",
    "10.3.3.3, 10.2.2.2",
    "junk, 10.1.1.1",
    "192.0.2.1, junk, 10.1.1.1",
    "192.0.2.1, 10.1.1.1, ",
    ",192.0.2.1",
    "192.0.2.7",
    "2001:db8::5, 2001:db8::9",
    "192.0.2.8:8080",
    "[2001:db8::7]:443, 10.1.1.1",
    "",
]
REAL_IP = [
    "192.0.2.1",
    "junk",
    "2001:DB8:0:0:0:0:0:1",
    "::ffff:192.0.2.9",
    "::2",
    "010.1.1.1",
    "1..2.3",
    "255.255.255.255",
    "192.0.2.1:8080",
    "[::1]:443",
    "[::1]",
    "fe80::1%eth0",
]


def realip_requests(port: int) -> None:
    def get(offset: int, path: str, headers: str, source: str) -> None:
        data = f"GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode()
        plain(port + offset, data, source=source)

    for source in ("127.0.0.2", "127.0.0.3"):
        for value in REAL_IP:
            get(0, "/", f"X-Real-IP: {value}\r\n", source)
        for offset in (1, 2):
            for value in XFF:
                get(offset, "/", f"X-Forwarded-For: {value}\r\n", source)
            get(offset, "/", "X-Forwarded-For: 192.0.2.5, 10.9.9.9\r\nX-Forwarded-For: "
                "10.1.1.1\r\n", source)  # fmt: skip
            get(offset, "/", "X-Forwarded-For: junk\r\nX-Forwarded-For: 10.1.1.1\r\n", source)
    for value in ("192.0.2.1:8080", "[2001:db8::1]:1", "192.0.2.2"):
        get(3, "/", f"X-Client: {value}\r\n", "127.0.0.2")
    get(3, "/loc/", "X-Other: 192.0.2.3\r\n", "127.0.0.2")
    get(3, "/loc/", "X-Other: 192.0.2.3\r\nx-client: 192.0.2.4\r\n", "127.0.0.2")


def test_realip_vs_nginx(pyngx: ServerFactory, nginx: ServerFactory, site: Path) -> None:
    logs = []
    for factory in (nginx, pyngx):
        port = _four_free_ports()
        srv = factory(realip_conf(site)(port))
        realip_requests(port)
        rows = access_lines(srv, 2 * (len(REAL_IP) + 2 * (len(XFF) + 2)) + 5)
        with_port = access_lines(srv, 3, "rp.log")
        logs.append((rows, [x for x in with_port if not x.startswith("127.")]))
    assert logs[1][0] == logs[0][0]
    assert logs[1][1] == logs[0][1]


def _four_free_ports() -> int:
    """A base port with the next three free as well."""
    for _ in range(50):
        base = free_port()
        if base > 65000:
            continue
        try:
            socks = []
            for i in range(4):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
        except OSError:
            continue
        finally:
            for s in locals().get("socks", []):
                s.close()
        return base
    raise AssertionError("no four consecutive free ports")


# -- PROXY protocol --------------------------------------------------------------------------


PP_LOG = (
    "log_format p '$remote_addr|$remote_port|$realip_remote_addr|$proxy_protocol_addr|"
    "$proxy_protocol_port|$proxy_protocol_server_addr|$proxy_protocol_server_port|$https|"
    "$status';\naccess_log logs/p.log p;\n"
)

PP_GOOD = [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1111 80\r\n",
    b"PROXY TCP6 2001:db8::5 2001:db8::6 2222 8080\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
    pp.encode_v2(pp.Command.PROXY, pp.Transport.STREAM, "192.0.2.9", 9, "198.51.100.9", 99),
    pp.encode_v2(pp.Command.PROXY, pp.Transport.STREAM, "2001:db8::1", 1, "2001:db8::2", 2),
    pp.encode_v2(
        pp.Command.PROXY,
        pp.Transport.STREAM,
        "192.0.2.10",
        10,
        "198.51.100.10",
        100,
        [(pp.PP2_TYPE_ALPN, b"h2"), (pp.PP2_TYPE_AUTHORITY, b"example.com")],
    ),
    pp.encode_v2_local(),
]
PP_BROKEN = [
    b"PROXY garbage here\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6",
    pp.V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
    pp.V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\x00" * 12,
]


def pp_conf(certs: dict[str, str], site: Path) -> Callable[[int], str]:
    def conf(port: int) -> str:
        tls = f"ssl_certificate {certs['a.test.crt']}; ssl_certificate_key {certs['a.test.key']};"
        return (
            "http {\n" + PP_LOG + f"root {site / 'a'}; ssl_protocols TLSv1.2 TLSv1.3;\n"
            f"server {{ listen 127.0.0.1:{port} proxy_protocol;\n"
            "  set_real_ip_from 127.0.0.2; real_ip_header proxy_protocol; }\n"
            f"server {{ listen 127.0.0.1:{port + 1} proxy_protocol ssl; {tls} }}\n"
            "}\n"
        )

    return conf


def test_proxy_protocol_vs_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, certs: dict[str, str], site: Path
) -> None:
    results = []
    for factory in (nginx, pyngx):
        port = _four_free_ports()
        srv = factory(pp_conf(certs, site)(port))
        request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
        for source in ("127.0.0.2", "127.0.0.3"):
            for header in PP_GOOD:
                plain(port, header + request, source=source)
        for header in PP_GOOD[:2] + PP_GOOD[4:6]:
            tls_get(port + 1, "a.test", "x", preface=header)
        replies = [plain(p, junk) for p in (port, port + 1) for junk in PP_BROKEN]
        time.sleep(0.3)
        rows = access_lines(srv, 2 * len(PP_GOOD) + 4)
        # Ports of untouched client addresses vary; the rest must be equal.
        rows = [re.sub(r"^(127\.0\.0\.\d+)\|\d+\|", r"\1|N|", x) for x in rows]
        errors = [
            line.replace(f":{port + 1}", ":PORT1").replace(f":{port}", ":PORT")
            for line in error_lines(srv, 0, ("PROXY",))
        ]
        results.append((rows, replies, errors))
    assert results[1][0] == results[0][0]
    assert results[1][1] == results[0][1]
    assert results[1][2] == results[0][2]
    assert len(results[0][2]) == 2 * len(PP_BROKEN)


# -- configuration errors --------------------------------------------------------------------


def config_cases(certs: dict[str, str]) -> dict[str, str]:
    a_crt, a_key, b_key = certs["a.test.crt"], certs["a.test.key"], certs["b.test.key"]
    pair = f"ssl_certificate {a_crt}; ssl_certificate_key {a_key};"
    listen = "listen 127.0.0.1:1 ssl;"
    return {
        "no certificate": f"server {{\n {listen}\n}}",
        "no key": f"server {{ {listen} ssl_certificate {a_crt}; }}",
        "fewer keys than certificates": f"server {{ {listen} ssl_certificate {a_crt};\n"
        f" ssl_certificate {certs['ca.pem']}; ssl_certificate_key {a_key}; }}",
        "missing certificate file": f"server {{ {listen} ssl_certificate /nonexistent.crt;"
        f" ssl_certificate_key {a_key}; }}",
        "missing key file": f"server {{ {listen} ssl_certificate {a_crt};"
        " ssl_certificate_key /nonexistent.key; }",
        "key mismatch": f"server {{ {listen} ssl_certificate {a_crt};"
        f" ssl_certificate_key {b_key}; }}",
        "key as certificate": f"server {{ {listen} ssl_certificate {a_key};"
        f" ssl_certificate_key {a_key}; }}",
        "certificate as key": f"server {{ {listen} ssl_certificate {a_crt};"
        f" ssl_certificate_key {a_crt}; }}",
        "certificate off ssl ports too": f"{pair} server {{ listen 127.0.0.1:1; }}".replace(
            a_crt, "/nonexistent.crt"
        ),
        "bad ciphers": f"server {{ {listen} {pair} ssl_ciphers FOO; }}",
        "bad protocol": f"server {{ {listen} {pair}\n ssl_protocols TLSv1.2 TLSv1.4; }}",
        "bad session cache": f"server {{ {listen} {pair}\n ssl_session_cache foo; }}",
        "bad verify value": f"server {{ {listen} {pair}\n ssl_verify_client maybe; }}",
        "no client certificate": f"server {{ {listen} {pair} ssl_verify_client on; }}",
        "bad client certificate": f"server {{ {listen} {pair} ssl_verify_client on;"
        f" ssl_client_certificate {a_key}; }}",
        "missing client certificate": f"server {{ {listen} {pair} ssl_verify_client on;"
        " ssl_client_certificate /nonexistent.pem; }",
        "bad curve": f"server {{ {listen} {pair} ssl_ecdh_curve prime256v1:foo; }}",
        "bad dhparam": f"server {{ {listen} {pair} ssl_dhparam {a_crt}; }}",
        "missing dhparam": f"server {{ {listen} {pair} ssl_dhparam /nonexistent.pem; }}",
        "missing password file": f"server {{ {listen} {pair}\n ssl_password_file /nonexistent; }}",
        "ocsp and optional_no_ca": f"server {{ {listen} {pair}"
        " ssl_verify_client optional_no_ca; ssl_ocsp on; }",
        "handshake timeout is stream only": f"server {{ {listen} {pair}\n"
        " ssl_handshake_timeout 5s; }",
        "reject with a server without certificate": "server { listen 127.0.0.1:1 ssl;"
        " ssl_reject_handshake on; }\nserver {\n listen 127.0.0.1:1 ssl; server_name x; }",
        "set_real_ip_from bad": "server { listen 127.0.0.1:1;\n set_real_ip_from 999.1.1.1; }",
        "set_real_ip_from bad bits": "server { listen 127.0.0.1:1;\n"
        " set_real_ip_from 1.2.3.4/33; }",
        "real_ip_recursive bad": "server { listen 127.0.0.1:1;\n real_ip_recursive maybe; }",
        "real_ip_header no value": "server { listen 127.0.0.1:1;\n real_ip_header; }",
    }


_MESSAGE = re.compile(r"\[(emerg|warn)\] (?:\d+#\d+: )?(.*)")


def run_t(cmd: list[str]) -> list[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return [
        f"[{m.group(1)}] {m.group(2)}" for m in map(_MESSAGE.search, res.stderr.splitlines()) if m
    ]


@pytest.mark.parametrize("case", sorted(config_cases({k: k for k in (
    "a.test.crt", "a.test.key", "b.test.key", "ca.pem")})))  # fmt: skip
def test_config_errors_vs_nginx(case: str, certs: dict[str, str], tmp_path: Path) -> None:
    conf = tmp_path / "test.conf"
    conf.write_text(
        f"load_module {NGINX_STREAM_MODULE};\npid logs/test.pid;\nevents {{ }}\n"
        "http {\naccess_log off;\n" + config_cases(certs)[case] + "\n}\n"
    )
    for sub in ("n/logs", "p/logs"):
        (tmp_path / sub).mkdir(parents=True)
    ngx = run_t([str(NGINX_BIN), "-t", "-p", f"{tmp_path}/n/", "-c", str(conf)])
    pyn = run_t([sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf)])
    assert ngx, "nginx accepted it"
    assert pyn == ngx


@pytest.mark.pyngx_differs("`ssl on` was removed in nginx 1.25.1; 1.22 only warns")
def test_ssl_on_is_unknown(tmp_path: Path) -> None:
    conf = tmp_path / "test.conf"
    conf.write_text("pid logs/test.pid;\nevents { }\nhttp {\nserver {\n ssl on; }\n}\n")
    (tmp_path / "p/logs").mkdir(parents=True)
    pyn = run_t([sys.executable, "-m", "pyngx", "-t", "-p", f"{tmp_path}/p/", "-c", str(conf)])
    assert pyn == [f'[emerg] unknown directive "ssl" in {conf}:5']
