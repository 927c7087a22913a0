"""pyngx/stream/health.py without processes: escapes, matching, verdicts, and probes on loopback."""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from pyngx.conf.values import SockAddr
from pyngx.core.log import DEBUG, ErrorLog, LogFile, LogTarget
from pyngx.protocols import proxy_protocol as pp
from pyngx.stream.health import (
    CHECKING,
    CONNECTING,
    HealthCheck,
    HealthCheckers,
    Match,
    Outcome,
    _PeerState,
    unescape_hex,
)
from pyngx.stream.upstream import UpstreamGroup
from pyngx.upstream import PeerConf, make_balancer

SMTP = Match("smtp", regex=re.compile(rb"^220"))


def make_check(
    tmp_path: Path,
    ports: list[int],
    match: Match | None = SMTP,
    **overrides: object,
) -> HealthCheck:
    peers = [PeerConf(f"127.0.0.1:{p}", SockAddr(socket.AF_INET, ("127.0.0.1", p))) for p in ports]
    group = UpstreamGroup("mail", make_balancer("round_robin", peers), None, False, False)
    log = ErrorLog([LogTarget(LogFile(str(tmp_path / "error.log")), DEBUG)])
    fields: dict[str, object] = {
        "group": group,
        "match": match,
        "interval": 5.0,
        "jitter": 0.0,
        "fails": 1,
        "passes": 1,
        "port": None,
        "mandatory": False,
        "timeout": 1.0,
        "connect_timeout": 1.0,
        "proxy_protocol": 0,
        "buffer_size": 16384,
        "bind": None,
        "error_log": log,
        "where": "test:1",
    }
    fields.update(overrides)
    return HealthCheck(**fields)  # type: ignore[arg-type]


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "error.log").read_text()


def test_unescape_hex() -> None:
    assert unescape_hex("\\x16\\x03\\x01A") == b"\x16\x03\x01A"
    assert unescape_hex("\\xZZ \\x4") == b"\\xZZ \\x4"  # not two hex digits: kept
    assert unescape_hex("caf\u00e9\r\n") == "caf\u00e9\r\n".encode()


def test_match_literal_regex_and_case() -> None:
    assert Match("m", expect=b"OK").test(b"* OK ready")
    assert not Match("m", expect=b"OK").test(b"* ok ready")
    assert Match("m", regex=re.compile(rb"ok", re.I)).test(b"* OK")
    assert not SMTP.test(b"554 220")
    assert Match("m").test(b"") and not Match("m").reads


def test_fails_and_passes_in_a_row(tmp_path: Path) -> None:
    check = make_check(tmp_path, [1], fails=2, passes=2)
    loop = asyncio.new_event_loop()
    loop.close()  # record() never touches the loop
    hc = HealthCheckers(loop, [check])
    (peer,) = check.group.balancer.peers
    st = _PeerState(check, peer)
    bad, good = Outcome(False, CHECKING, "nope"), Outcome(True, CHECKING)
    hc.record(st, bad)
    assert not peer.unhealthy
    hc.record(st, good)  # the run of failures is broken
    hc.record(st, bad)
    assert not peer.unhealthy
    hc.record(st, bad)
    assert peer.unhealthy
    hc.record(st, good)
    assert peer.unhealthy
    hc.record(st, good)
    assert not peer.unhealthy
    text = log_text(tmp_path)
    assert text.count("[error] ") == 3
    assert text.count("[warn] ") == 1
    assert 'peer is unhealthy while checking response, health check "smtp" of peer ' in text
    assert "[notice] " in text and "peer is healthy while checking response" in text


def test_any_failing_check_keeps_the_peer_out(tmp_path: Path) -> None:
    one = make_check(tmp_path, [1])
    (peer,) = one.group.balancer.peers
    two = replace(one, where="test:2")
    loop = asyncio.new_event_loop()
    loop.close()
    hc = HealthCheckers(loop, [one, two])
    s1, s2 = _PeerState(one, peer), _PeerState(two, peer)
    hc.record(s1, Outcome(False, CONNECTING, "refused"))
    hc.record(s2, Outcome(False, CONNECTING, "refused"))
    hc.record(s1, Outcome(True, CONNECTING))
    assert peer.unhealthy
    hc.record(s2, Outcome(True, CONNECTING))
    assert not peer.unhealthy


def probe(check: HealthCheck) -> Outcome:
    async def run() -> Outcome:
        hc = HealthCheckers(asyncio.get_running_loop(), [check])
        return await hc.probe(check, check.group.balancer.peers[0])

    return asyncio.run(run())


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def test_probe_refused_timed_out_and_passed(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        out = probe(make_check(tmp_path, [port]))
    assert (out.ok, out.action) == (False, CONNECTING)
    assert out.error == "connect() failed (111: Connection refused)"
    with listener() as srv:
        port = srv.getsockname()[1]
        out = probe(make_check(tmp_path, [port], timeout=0.2))  # accepted, never greeted
        assert (out.ok, out.action) == (False, "reading from upstream")
        assert out.error == "upstream timed out (110: Connection timed out)"
        out = probe(make_check(tmp_path, [port], match=None))
        assert out.ok and out.action == CONNECTING


def test_probe_sends_local_header_and_reads_within_buffer(tmp_path: Path) -> None:
    with listener() as srv:
        port = srv.getsockname()[1]

        async def run(check: HealthCheck) -> tuple[Outcome, bytes]:
            loop = asyncio.get_running_loop()
            hc = HealthCheckers(loop, [check])
            task = loop.create_task(hc.probe(check, check.group.balancer.peers[0]))
            srv.setblocking(False)
            conn, _ = await loop.sock_accept(srv)
            with conn:
                sends = check.proxy_protocol or (check.match and check.match.send)
                got = await loop.sock_recv(conn, 100) if sends else b""
                await loop.sock_sendall(conn, b"x" * 10 + b"220 late\r\n")
                return await task, got

        send = Match("m", send=b"PING\r\n", regex=re.compile(rb"^220"))
        check = make_check(tmp_path, [port], send, proxy_protocol=1, timeout=0.3)
        out, got = asyncio.run(run(check))
        parsed = pp.parse(got)
        assert parsed is not None and parsed[0].command == pp.Command.LOCAL
        assert got[parsed[1] :] == b"PING\r\n"
        # "^220" cannot match after the x's: the probe waits for more until the timeout.
        assert (out.ok, out.action) == (False, CHECKING)
        assert 'waiting for a match in "xxxxxxxxxx220 late\\x0D\\x0A"' in str(out.error)
        late = Match("m", expect=b"220")
        out, _ = asyncio.run(run(make_check(tmp_path, [port], late, buffer_size=12)))
        assert not out.ok and "no match in the first 12 bytes" in str(out.error)
        out, _ = asyncio.run(run(make_check(tmp_path, [port], late)))
        assert out.ok


@pytest.mark.parametrize("jitter", [0.0, 0.05])
def test_start_marks_mandatory_peers_and_cancel_stops_tasks(tmp_path: Path, jitter: float) -> None:
    async def run() -> None:
        with listener() as srv:
            check = make_check(tmp_path, [srv.getsockname()[1]], mandatory=True, jitter=jitter)
            hc = HealthCheckers(asyncio.get_running_loop(), [check])
            hc.start()
            (peer,) = check.group.balancer.peers
            assert peer.unhealthy  # "checking" until the first probe completes
            await asyncio.sleep(0.1)
            hc.cancel()
            await hc.wait_closed()
            assert all(st.task is not None and st.task.done() for st in hc.states)

    asyncio.run(run())


def test_probe_unix_socket_peer(tmp_path: Path) -> None:
    path = tmp_path / "peer.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        srv.listen(1)
        check = make_check(tmp_path, [1], match=None)
        peer = PeerConf(f"unix:{path}", SockAddr(socket.AF_UNIX, str(path)))
        group = UpstreamGroup("u", make_balancer("round_robin", [peer]), None, False, False)
        out = probe(replace(check, group=group, port=25))  # port= does not apply to unix
    assert out.ok and out.action == CONNECTING
