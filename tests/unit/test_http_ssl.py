"""pyngx.http.ssl's pure parts: SNI names, OpenSSL error texts, handshake log levels."""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import pytest

from pyngx.core.log import CRIT, INFO
from pyngx.http.server_names import ServerNames
from pyngx.http.ssl import (
    handshake_failure,
    openssl_error_text,
    sni_server,
    validate_host,
)


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
