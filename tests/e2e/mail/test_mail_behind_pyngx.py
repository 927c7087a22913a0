"""The founding use case: pyngx in front of real mail servers, with the seed's stream config.

pyngx listens without `proxy_protocol` on `listen` and sends a PROXY header upstream
(`proxy_protocol on;`); Postfix and Dovecot require that header on every connection and log the
client address it carries. Clients connect from 127.0.0.23, so the logs prove the address made
it through. IMAPS is passed through untouched: the client sees Dovecot's own certificate.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import make_msgid
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.e2e.mail.conftest import (
    CLIENT,
    DOMAIN,
    PASSWORD,
    Dovecot,
    MailCert,
    MailStore,
    Postfix,
)
from tests.harness import ServerProcess, client, free_port, recv_all, run_pyngx

pytestmark = [pytest.mark.slow, pytest.mark.e2e_mail, pytest.mark.timeout(60)]


def seed_stream(
    smtp: tuple[int, int] | None, imaps: tuple[int, int] | None, listen: str = ""
) -> str:
    """The seed's stream block: (pyngx port, backend port) per service."""
    servers = []
    for name, ports in (("SMTP", smtp), ("IMAPS", imaps)):
        if ports is None:
            continue
        front, back = ports
        servers.append(
            f"    # Proxy {name}\n"
            "    server {\n"
            f"        listen 127.0.0.1:{front}{listen};\n"
            f"        proxy_pass 127.0.0.1:{back};\n"
            "        proxy_protocol on;\n"
            "    }\n"
        )
    return "stream {\n" + "".join(servers) + "}\n"


def message(to: str, subject: str, body: bytes = b"hello through pyngx\r\n") -> bytes:
    msgid = make_msgid(domain="client.example.org")
    return (
        f"From: Sender <sender@example.org>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {msgid}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "\r\n"
    ).encode() + body


def send(port: int, to: str, msg: bytes, timeout: float = 20.0) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout, source_address=(CLIENT, 0)) as smtp:
        refused = smtp.sendmail("sender@example.org", [to], msg)
        assert refused == {}


MAIL_NAME = "mail.example.test"  # in the certificate; the client connects to 127.0.0.1


class IMAP4SSLFrom(imaplib.IMAP4_SSL):
    """IMAP4_SSL from the client address (imaplib has no source_address), checking MAIL_NAME."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=MAIL_NAME)


def imap_fetch_all(port: int, user: str, cert: MailCert) -> tuple[bytes, list[bytes]]:
    """Log in over IMAPS through pyngx; (peer certificate DER, every message in INBOX)."""
    ctx = ssl.create_default_context(cafile=str(cert.ca_path))
    with IMAP4SSLFrom("127.0.0.1", port, ssl_context=ctx, timeout=10) as imap:
        peer = imap.sock.getpeercert(binary_form=True)
        assert peer is not None
        imap.login(user, PASSWORD)
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK", data
        count = int(data[0] or b"0")
        messages = []
        for i in range(1, count + 1):
            typ, fetched = imap.fetch(str(i), "(BODY.PEEK[])")
            assert typ == "OK", fetched
            part = fetched[0]
            assert isinstance(part, tuple), fetched
            messages.append(part[1])
        imap.logout()
    return peer, messages


def body_of(raw: bytes) -> bytes:
    sep = b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n"
    return raw.split(sep, 1)[1].replace(b"\r\n", b"\n")


def wait_in(server: ServerProcess, pattern: str, count: int, since: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = len(re.findall(pattern, server.error_log_text()[since:]))
        if found >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def smtp_front(pyngx: ServerFactory, postfix: Postfix) -> int:
    port = free_port()
    pyngx(seed_stream((port, postfix.smtp_port), None))
    return port


# --------------------------------------------------------------------------------------------


def test_smtp_delivers_and_postfix_sees_client_address(
    smtp_front: int, postfix: Postfix, mail_store: MailStore
) -> None:
    mark = postfix.log_mark()
    send(smtp_front, f"alice@{DOMAIN}", message(f"alice@{DOMAIN}", "seed smtp"))
    [path] = mail_store.wait_for_messages("alice", 1)
    assert b"Subject: seed smtp" in path.read_bytes()
    postfix.wait_for_log(r"connect from unknown\[127\.0\.0\.23\]", timeout=10, since=mark)
    assert "connect from unknown[127.0.0.1]" not in postfix.error_log_text()[mark:]


def test_imaps_passes_through_with_dovecots_certificate(
    pyngx: ServerFactory, dovecot: Dovecot, mail_store: MailStore, mail_cert: MailCert
) -> None:
    # Drop a message into bob's maildir the way a delivery agent would (as its owner).
    new = mail_store.maildir("bob") / "new"
    for sub in ("new", "cur", "tmp"):
        (mail_store.maildir("bob") / sub).mkdir(parents=True, exist_ok=True)
    for p in [mail_store.maildir("bob"), *mail_store.maildir("bob").iterdir()]:
        os.chown(p, mail_store.uid, mail_store.gid)
    raw = message(f"bob@{DOMAIN}", "dropped").replace(b"\r\n", b"\n")
    (new / "1.pyngx.test").write_bytes(raw)
    os.chown(new / "1.pyngx.test", mail_store.uid, mail_store.gid)

    port = free_port()
    pyngx(seed_stream(None, (port, dovecot.imaps_port)))
    mark = dovecot.log_mark()
    peer, messages = imap_fetch_all(port, "bob", mail_cert)
    assert hashlib.sha256(peer).hexdigest() == hashlib.sha256(mail_cert.der).hexdigest()
    assert len(messages) == 1
    assert b"Subject: dropped" in messages[0]
    line = dovecot.wait_for_log(r"Login: user=<bob>", timeout=10, since=mark)
    assert "rip=127.0.0.23," in line and "TLS" in line, line


def test_one_mib_message_round_trips(
    pyngx: ServerFactory,
    postfix: Postfix,
    dovecot: Dovecot,
    mail_store: MailStore,
    mail_cert: MailCert,
) -> None:
    smtp_port, imaps_port = free_port(), free_port()
    pyngx(seed_stream((smtp_port, postfix.smtp_port), (imaps_port, dovecot.imaps_port)))
    # 1 MiB of 76-character lines, with lines that SMTP must dot-stuff.
    chunk = hashlib.sha256(b"pyngx").hexdigest() * 64
    lines = [b".", b"..", b".leading dot"]
    size = 0
    i = 0
    while size < 1 << 20:
        line = chunk[i % 64 : i % 64 + 76].encode()
        lines.append(line)
        size += len(line) + 2
        i += 1
    body = b"\r\n".join(lines) + b"\r\n"
    send(smtp_port, f"carol@{DOMAIN}", message(f"carol@{DOMAIN}", "big", body))
    mail_store.wait_for_messages("carol", 1)
    _, messages = imap_fetch_all(imaps_port, "carol", mail_cert)
    assert len(messages) == 1
    got = body_of(messages[0])
    want = body.replace(b"\r\n", b"\n")
    assert len(got) == len(want)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()


def test_fifty_parallel_smtp_sessions_all_deliver(
    smtp_front: int, postfix: Postfix, mail_store: MailStore
) -> None:
    n = 50
    mark = postfix.log_mark()
    start = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        futures = [
            pool.submit(
                send, smtp_front, f"dave@{DOMAIN}", message(f"dave@{DOMAIN}", f"parallel {i}")
            )
            for i in range(n)
        ]
        for f in futures:
            f.result(timeout=30)
    found = mail_store.wait_for_messages("dave", n, timeout=30)
    assert len(found) == n
    subjects = {
        m.group(1) for p in found if (m := re.search(rb"Subject: parallel (\d+)", p.read_bytes()))
    }
    assert subjects == {str(i).encode() for i in range(n)}
    connects = wait_in(postfix, r"connect from unknown\[127\.0\.0\.23\]", 2 * n, mark, 10)
    # "connect from" and "disconnect from" for every session.
    assert connects >= 2 * n
    assert time.monotonic() - start < 40


def test_proxy_protocol_on_listen_is_caught(
    pyngx: ServerFactory, dovecot: Dovecot, postfix: Postfix, mail_cert: MailCert, tmp_path: Path
) -> None:
    smtp_port, imaps_port = free_port(), free_port()
    body = seed_stream(
        (smtp_port, postfix.smtp_port), (imaps_port, dovecot.imaps_port), " proxy_protocol"
    )
    # `pyngx -t` warns about the mistake, for each server.
    conf = tmp_path / "mistake.conf"
    conf.write_text("error_log stderr;\nevents { worker_connections 64; }\n" + body)
    check = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(conf)])
    out = check.stdout + check.stderr
    assert out.count("expects a PROXY protocol header") == 2, out

    srv = pyngx(body.replace("proxy_protocol on;", "proxy_protocol on; proxy_protocol_timeout 2s;"))
    # IMAPS: the TLS ClientHello is taken for a (broken) PROXY header; the handshake fails.
    ctx = ssl.create_default_context(cafile=str(mail_cert.ca_path))
    with client("127.0.0.1", imaps_port, source=CLIENT) as sock, pytest.raises(OSError):
        ctx.wrap_socket(sock, server_hostname=MAIL_NAME).recv(100)  # SSLError is an OSError
    srv.wait_for_log(r"broken header", timeout=5)
    # SMTP: the client waits for a greeting that never comes; pyngx gives up on the header.
    with client("127.0.0.1", smtp_port, source=CLIENT) as sock:
        assert recv_all(sock, timeout=10, reset_ok=True) == b""


def test_swaks_delivers_through_pyngx(
    smtp_front: int, postfix: Postfix, mail_store: MailStore
) -> None:
    """A second, independent SMTP client (the one mail admins test servers with)."""
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed")
    mark = postfix.log_mark()
    result = subprocess.run(
        [
            "swaks",
            "--server", f"127.0.0.1:{smtp_front}",
            "--local-interface", CLIENT,
            "--from", "sender@example.org",
            "--to", f"erin@{DOMAIN}",
            "--header", "Subject: sent by swaks",
            "--timeout", "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 mail.example.test ESMTP" in result.stdout, result.stdout
    [path] = mail_store.wait_for_messages("erin", 1)
    assert b"Subject: sent by swaks" in path.read_bytes()
    postfix.wait_for_log(r"connect from unknown\[127\.0\.0\.23\]", timeout=10, since=mark)
