"""The http2 directives (h2_module.py): values, defaults, inheritance, nginx's checks and
warnings, and which addresses speak HTTP/2 (h2_enabled, the h2c preface hook)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyngx.conf.errors import ConfigError
from pyngx.http.h2 import PREFACE, try_prior_knowledge
from pyngx.http.h2_module import _http2_variable, h2_enabled

from .h2_inprocess import load


def _server_conf(cycle: Any, index: int = 0) -> Any:
    return cycle.http.servers[index].conf


def test_defaults(tmp_path: Path) -> None:
    cycle = load(tmp_path, "server { listen 127.0.0.1:8080; }")
    conf = _server_conf(cycle)
    assert conf.http2 is False
    assert conf.http2_max_concurrent_streams == 128
    assert conf.http2_body_preread_size == 65536
    assert conf.http2_chunk_size == 8192
    assert conf.http2_recv_buffer_size == 262144
    assert cycle.warnings == []


def test_values_and_inheritance(tmp_path: Path) -> None:
    cycle = load(
        tmp_path,
        """
        http2 on;
        http2_max_concurrent_streams 10;
        http2_recv_buffer_size 1m;
        http2_chunk_size 4k;
        server {
            listen 127.0.0.1:8080;
            http2_body_preread_size 1k;
            http2_chunk_size 32m;
            location /a { http2_chunk_size 1k; }
        }
        server { listen 127.0.0.1:8081; http2 off; }
        """,
    )
    conf = _server_conf(cycle)
    assert (conf.http2, conf.http2_max_concurrent_streams) == (True, 10)
    assert conf.http2_body_preread_size == 1024
    assert conf.http2_recv_buffer_size == 1024 * 1024
    assert conf.http2_chunk_size == (1 << 24) - 1  # clamped to the largest frame
    found = cycle.http.servers[0].locations.find("/a")
    assert found[0].http2_chunk_size == 1024
    assert _server_conf(cycle, 1).http2 is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "server { listen 127.0.0.1:1; http2 maybe; }",
            '"http2" directive, it must be "on" or "off"',
        ),
        ("server { location / { http2 on; } }", '"http2" directive is not allowed here'),
        ("server { http2_chunk_size 0; }", "the http2 chunk size cannot be zero"),
        ("server { http2_body_preread_size 2048m; }", "the maximum body preread buffer size is"),
        (
            "server { http2_streams_index_size 3; }",
            '"http2_streams_index_size" directive must be a power of two',
        ),
        ("http2_recv_buffer_size 32;", '"http2_recv_buffer_size" directive value is too small'),
        (
            "server { http2_max_concurrent_streams -1; }",
            '"http2_max_concurrent_streams" directive invalid number',
        ),
        ("server { http2 on; http2 on; }", '"http2" directive is duplicate'),
    ],
)
def test_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value)


def test_obsolete_directives_warn(tmp_path: Path) -> None:
    cycle = load(
        tmp_path,
        """
        http2_push_preload on;
        server {
            listen 127.0.0.1:8080 http2;
            http2_idle_timeout 10s;
            http2_max_concurrent_pushes 5;
            location / { http2_push /x.css; }
        }
        """,
    )
    text = "\n".join(cycle.warnings)
    assert 'the "http2_push_preload" directive is obsolete, ignored in ' in text
    assert 'the "http2_max_concurrent_pushes" directive is obsolete, ignored' in text
    assert 'the "http2_push" directive is obsolete, ignored' in text
    assert (
        'the "http2_idle_timeout" directive is obsolete, '
        'use the "keepalive_timeout" directive instead' in text
    )
    assert (
        'the "listen ... http2" directive is deprecated, use the "http2" directive instead' in text
    )


def test_h2_enabled_and_the_preface_hook(tmp_path: Path) -> None:
    cycle = load(
        tmp_path,
        """
        server { listen 127.0.0.1:8080; server_name a; }
        server { listen 127.0.0.1:8080; server_name b; http2 on; }
        server { listen 127.0.0.1:8081 http2; }
        server { listen 127.0.0.1:8082; http2 on; }
        """,
    )
    ports = {p.listens[0].addr.address[1]: p for p in cycle.http.ports}
    a, b = cycle.http.servers[0], cycle.http.servers[1]
    # ALPN: the server TLS chose decides (nginx reads `http2` from the SNI server).
    assert h2_enabled(ports[8080], a) is False
    assert h2_enabled(ports[8080], b) is True
    assert h2_enabled(ports[8081], cycle.http.servers[2]) is True
    # Cleartext: the default server of the address decides.
    for number, expected in ((8080, False), (8081, True), (8082, True)):
        port = ports[number]
        conn = SimpleNamespace(port=port, default=port.default, buf=b"")
        assert try_prior_knowledge(conn, PREFACE[:10]) is expected  # type: ignore[arg-type]
        if expected:
            assert conn.buf == PREFACE[:10]  # waits for the rest
    port = ports[8081]
    conn = SimpleNamespace(port=port, default=port.default, buf=b"")
    assert try_prior_knowledge(conn, b"PRI * HTTP/1.1\r\n") is False  # type: ignore[arg-type]
    assert try_prior_knowledge(conn, b"POST / HTTP/1.1\r\n") is False  # type: ignore[arg-type]


def test_http2_variable() -> None:
    def r(version: tuple[int, int], ssl: bool) -> Any:
        return SimpleNamespace(version=version, conn=SimpleNamespace(is_ssl=ssl))

    assert _http2_variable(r((2, 0), True)) == "h2"
    assert _http2_variable(r((2, 0), False)) == "h2c"
    assert _http2_variable(r((1, 1), True)) == ""
