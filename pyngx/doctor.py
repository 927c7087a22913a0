"""`pyngx doctor`: ask each stream upstream whether it expects the PROXY header it gets.

An extension (nginx has no such command). The classic mistake in front of a mail server is a
mismatch of `proxy_protocol` between pyngx and the backend: the backend greets a connection
that never sends the header and then reads the header as a command ("500 5.5.2 Invalid
command" three times), or it waits for a header pyngx does not send. For every stream server
with `proxy_protocol on|v2` and every address of its upstream, doctor:

1. connects without sending anything: a server-speaks-first backend that greets at once does
   not wait for a PROXY header, so it will not parse the one pyngx sends;
2. connects and sends the header pyngx would send (from 127.0.0.1): a greeting means the
   header was accepted; a close means the backend refused it (not a trusted sender?).

Backends where the client speaks first (HTTPS, ...) stay silent either way: reported as
"no greeting", which is not an error. Exit status 0 when no mismatch was found, else 1.

    pyngx doctor [-p prefix] [-c file] [-g directives] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass

from pyngx.conf.errors import ConfigError
from pyngx.protocols import proxy_protocol as pp

DEFAULT_TIMEOUT = 1.5


@dataclass(frozen=True, slots=True)
class Finding:
    server: str  # the server's listen address
    upstream: str
    ok: bool
    text: str


def _read_some(sock: socket.socket, timeout: float) -> bytes | None:
    """Bytes the peer sends within `timeout`; b"" when it closed; None when it stayed silent."""
    sock.settimeout(timeout)
    try:
        return sock.recv(512)
    except TimeoutError:
        return None
    except OSError:
        return b""


def _header(version: int, family: int, dst: tuple[str, int]) -> bytes:
    src = "127.0.0.1" if family == socket.AF_INET else "::1"
    if version == 2:
        return pp.encode_v2(
            pp.Command.PROXY, pp.Transport.STREAM, src, 9, dst[0], dst[1], crc32c=True
        )
    return pp.encode_v1(src, 9, dst[0], dst[1])


def probe(address: tuple[str, int], family: int, version: int, timeout: float) -> tuple[bool, str]:
    """(ok, what happened) for one upstream address."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
            unprompted = _read_some(s, timeout)
    except OSError as exc:
        return False, f"connect() failed ({exc.errno}: {exc.strerror})"
    if unprompted:
        line = unprompted.split(b"\n", 1)[0].decode("latin-1").strip()
        return False, (
            f'greets without a PROXY header ("{line}"): it does not expect one and will read '
            "pyngx's header as a command; turn proxy_protocol on at the backend or off here"
        )
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
            s.sendall(_header(version, family, address))
            answer = _read_some(s, timeout)
    except OSError as exc:
        return False, f"connect() failed ({exc.errno}: {exc.strerror})"
    if answer is None:
        if unprompted is None:
            return True, "no greeting either way (the client speaks first): cannot tell"
        return True, "no greeting"
    if answer == b"":
        return False, (
            "closed the connection after the PROXY header: the backend does not trust this "
            "sender (haproxy_trusted_networks, ...) or does not speak PROXY v"
            f"{version}"
        )
    line = answer.split(b"\n", 1)[0].decode("latin-1").strip()
    return True, f'accepted the PROXY header and greeted: "{line}"'


def examine(cycle: object, timeout: float = DEFAULT_TIMEOUT) -> list[Finding]:
    findings: list[Finding] = []
    for server in getattr(cycle, "stream_servers", []):
        version = server.proxy_protocol
        if not version or server.upstream is None:
            continue
        listen = server.listens[0].addr.text if server.listens else "?"
        for peer in server.upstream.balancer.peers:
            addr = peer.conf.addr
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ok, text = probe(addr.address, addr.family, version, timeout)
            findings.append(Finding(listen, addr.text, ok, text))
    return findings


def main(argv: list[str]) -> int:
    from pyngx.core.cycle import load_cycle
    from pyngx.core.paths import make_paths

    parser = argparse.ArgumentParser(prog="pyngx doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("-p", dest="prefix")
    parser.add_argument("-c", dest="conf")
    parser.add_argument("-g", dest="directives")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    paths = make_paths(args.prefix, args.conf)
    try:
        cycle = load_cycle(paths, args.directives, "stderr")
    except ConfigError as exc:
        print(f"pyngx doctor: [emerg] {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    findings = examine(cycle, args.timeout)
    cycle.files.close()
    bad = 0
    for f in findings:
        mark = "ok  " if f.ok else "FAIL"
        print(f"{mark} {f.server} -> {f.upstream}: {f.text}")
        bad += not f.ok
    if not findings:
        print("no stream server sends a PROXY header: nothing to check")
    print(f"{len(findings)} checked, {bad} problem(s), {time.monotonic() - started:.1f}s")
    return 1 if bad else 0
