"""pyngx.http.ssl's pure parts: SNI names, the ClientHello scan, OpenSSL error texts, handshake
log levels."""

from __future__ import annotations

import ssl
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyngx.core.log import CRIT, INFO
from pyngx.http.server_names import ServerNames
from pyngx.http.ssl import (
    LIBSSL,
    Unreadable,
    handshake_failure,
    openssl_error_text,
    scan_hello,
    sni_server,
    validate_host,
)
from pyngx.protocols import tls_client_hello


@pytest.mark.parametrize(
    ("name", "host"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:443", "example.com"),
        (".example.com", ".example.com"),  # nginx lets a leading dot through
        ("a..b", None),
        ("a/b", None),
        ("a\\b", None),
        ("a\x00b", None),
        (".", None),
        ("", None),
    ],
)
def test_validate_host(name: str, host: str | None) -> None:
    assert validate_host(name) == host


def port_with(*servers: tuple[str, list[str]]) -> SimpleNamespace:
    confs = [SimpleNamespace(tag=tag, names=names) for tag, names in servers]
    entries = [(name, conf, None) for conf in confs for name in conf.names]
    return SimpleNamespace(default=confs[0], names=ServerNames(entries, confs[0]))  # type: ignore[arg-type]


def test_sni_server_tells_a_default_match_from_no_match() -> None:
    port = port_with(("a", ["a.test", "*.a.test"]), ("b", ["b.test"]))
    for name, tag, host in (
        ("b.test", "b", "b.test"),
        ("A.TEST", "a", "a.test"),
        ("a.test.", "a", "a.test"),
    ):
        server, got = sni_server(port, name)
        assert (server.tag, got) == (tag, host)
    assert sni_server(port, "zzz.test") == (None, None)
    assert sni_server(port, None) == (None, None)
    assert sni_server(port, "bad/name") == (None, None)


def test_sni_server_wildcards_and_regex_on_the_default() -> None:
    for names, host in (
        (["*.a.test"], "x.a.test"),
        ([".a.test"], "a.test"),
        ([".a.test"], "y.a.test"),
        (["www.a.*"], "www.a.org"),
        (["~^w+\\.a\\.test$"], "www.a.test"),
    ):
        port = port_with(("a", names), ("b", ["b.test"]))
        server, got = sni_server(port, host)
        assert server is port.default and got == host, (names, host)
    port = port_with(("a", [""]), ("b", ["b.test"]))  # no server_name: matches no SNI name
    assert sni_server(port, "a.test") == (None, None)


def ssl_error_from(reason_text: str) -> ssl.SSLError:
    """A real SSLError as OpenSSL raises it for a bad handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(reason_text.encode("latin-1"))
    with pytest.raises(ssl.SSLError) as info:
        obj.do_handshake()
    return info.value


def test_openssl_error_text_as_nginx_prints_it() -> None:
    exc = ssl_error_from("\x16\x03\x01\x00\x05hello")
    assert openssl_error_text(exc) == "(SSL: error:0A0000F4:SSL routines::unexpected message)"
    exc = ssl_error_from("GET / HTTP/1.1\r\n\r\n")
    assert openssl_error_text(exc) == "(SSL: error:0A00009C:SSL routines::http request)"
    assert handshake_failure(exc) == (
        INFO,
        "SSL_do_handshake() failed (SSL: error:0A00009C:SSL routines::http request)",
    )


def test_handshake_failure_levels() -> None:
    assert handshake_failure(ConnectionResetError()) == (
        INFO,
        "peer closed connection in SSL handshake",
    )
    assert handshake_failure(ConnectionResetError(104, "reset")) == (
        INFO,
        "SSL_do_handshake() failed (104: Connection reset by peer)",
    )
    timeout = ConnectionAbortedError("SSL handshake is taking longer than 1.0 seconds: aborting")
    assert handshake_failure(timeout) == (INFO, "client timed out (110: Connection timed out)")
    exc = ssl.SSLError(1, "[SSL: SOMETHING_ELSE] something else (_ssl.c:1)")
    exc.reason = "SOMETHING_ELSE"  # type: ignore[misc]
    exc.library = "SSL"  # type: ignore[misc]
    assert handshake_failure(exc)[0] == CRIT


def real_hello(sni: str | None, alpn: list[str] | None = None, tls12: bool = False) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, size: int) -> bytes:
    """The same handshake message in records of at most `size` bytes."""
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += hello[:3] + len(part).to_bytes(2, "big") + part
    return out


HELLOS = [
    ("a.test", None, False),
    ("www.example.org", ["h2", "http/1.1"], False),
    (None, ["http/1.1"], True),
    (".".join(["x" * 60] * 4) + ".test", ["a" * 100, "b"], False),
]


@pytest.mark.parametrize(("sni", "alpn", "tls12"), HELLOS)
def test_scan_hello_agrees_with_the_full_reader(
    sni: str | None, alpn: list[str] | None, tls12: bool
) -> None:
    hello = real_hello(sni, alpn, tls12)
    full = tls_client_hello.parse(hello)
    assert full is not None
    for data in (hello, split_records(hello, 50), split_records(hello, 7)):
        got = scan_hello(data)
        assert got is not None
        assert got.server_name == full.server_name
        assert got.alpn == full.alpn
        ids = tuple(
            got.cipher_suites[i] << 8 | got.cipher_suites[i + 1]
            for i in range(0, len(got.cipher_suites), 2)
        )
        assert ids == full.cipher_suites
        # Every proper prefix asks for more.
        for cut in range(0, len(data), 13):
            assert scan_hello(data[:cut]) is None


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=600))
def test_scan_hello_never_fails_otherwise(junk: bytes, cut: int) -> None:
    hello = real_hello("a.test", ["h2"])
    for data in (junk, b"\x16\x03\x01" + junk, hello[:cut] + junk):
        try:
            scan_hello(data)
        except Unreadable:
            pass


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or sys.maxsize < 2**32,
    reason="the object layouts LibSSL reads are checked on 64-bit CPython 3.11",
)
def test_libssl_reaches_openssl() -> None:
    """pyngx's target Python: the verify callback must be installable, or bad client
    certificates would fail handshakes instead of being answered with 495."""
    assert LIBSSL.ok
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    LIBSSL.accept_any_certificate(ctx, 3)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert LIBSSL.verify_result(obj) == 0
    assert LIBSSL.verify_error(20) == "unable to get local issuer certificate"
