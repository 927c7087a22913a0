"""Real mail servers behind pyngx: Dovecot (IMAP/IMAPS) and Postfix (SMTP), owned by the tests.

Both run from private config directories under pytest's tmp dirs, on free loopback ports, with
the PROXY protocol required on every listener (as Stalwart is set up behind nginx in the seed).
Neither touches /etc or the packaged services.

Running them as root in tmp dirs needs a few tricks:
  * Dovecot refuses mail access as root (uid 0 is hard-coded out), and its login processes must
    not be root: mail processes run as `mail`, login processes as `dovenull` (chrooted into
    base_dir/login, so the 0700 tmp dirs above do not matter), auth and the rest as root.
  * Postfix opens data_directory/master.lock as `postfix`, and its delivery agent `virtual`
    writes the maildir as the mailbox owner: those two live in a world-traversable (0755)
    directory made for the session (MailStore), not in pytest's 0700 tmp dirs. Lookup tables
    are `inline:` for the same reason (virtual reads tables after dropping privileges).
  * Postfix runs as `postfix start-fg`, in its own process group; it is stopped by SIGTERM to
    the master's PID (from queue_directory/pid/master.pid, checked to be in that group).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ServerProcess, free_port, group_members

CLIENT = "127.0.0.23"
PASSWORD = "secret"
# Mailboxes: one per kind of test, so tests never see each other's mail.
USERS = ("alice", "bob", "carol", "dave", "erin")
DOMAIN = "example.test"
MAIL_START_TIMEOUT = 15.0


def _missing(*programs: str) -> list[str]:
    return [p for p in programs if shutil.which(p) is None]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the mail servers need root to start (they drop privileges themselves)")


@dataclass
class MailStore:
    """A 0755 directory under /tmp: the maildirs (owned by `mail`) and Postfix's data dir."""

    root: Path
    uid: int
    gid: int

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user

    def new_messages(self, user: str) -> list[Path]:
        new = self.maildir(user) / "new"
        cur = self.maildir(user) / "cur"
        return sorted(
            [*new.glob("*"), *cur.glob("*")] if new.is_dir() else [], key=lambda p: p.name
        )

    def wait_for_messages(self, user: str, count: int, timeout: float = 20.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.new_messages(user)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} of {count} messages in {self.maildir(user)} after {timeout}s"
                )
            time.sleep(0.05)


@pytest.fixture(scope="session")
def mail_store() -> Iterator[MailStore]:
    _require_root()
    mail = pwd.getpwnam("mail")
    root = Path(tempfile.mkdtemp(prefix="pyngx-mail-"))
    try:
        root.chmod(0o755)
        (root / "mail").mkdir(mode=0o755)
        os.chown(root / "mail", mail.pw_uid, mail.pw_gid)
        yield MailStore(root, mail.pw_uid, mail.pw_gid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MailCert:
    ca_path: Path
    cert_path: Path
    key_path: Path
    der: bytes


@pytest.fixture(scope="session")
def mail_cert(tmp_path_factory: pytest.TempPathFactory) -> MailCert:
    trustme = pytest.importorskip("trustme")
    import ssl

    d = tmp_path_factory.mktemp("mail-cert")
    ca = trustme.CA()
    cert = ca.issue_cert("mail.example.test", "localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(d / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(d / "cert.pem")
    cert.private_key_pem.write_to_path(d / "key.pem")
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return MailCert(d / "ca.pem", d / "cert.pem", d / "key.pem", der)


# --------------------------------------------------------------------------------------------
# Dovecot


class Dovecot(ServerProcess):
    """`dovecot -F -c DIR/dovecot.conf`; its master writes base_dir/master.pid with its PID."""

    name = "dovecot"

    def __init__(self, d: Path, store: MailStore, cert: MailCert) -> None:
        self.imap_port = free_port()
        self.imaps_port = free_port()
        base = d / "run"
        (d / "state").mkdir(parents=True, exist_ok=True)
        (d / "logs").mkdir(parents=True, exist_ok=True)
        users = d / "users"
        users.write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in USERS))
        log = d / "logs" / "dovecot.log"
        conf = d / "dovecot.conf"
        conf.write_text(
            f"""\
base_dir = {base}
state_dir = {d / "state"}
instance_name = pyngx-test-{os.getpid()}
protocols = imap
listen = 127.0.0.1
log_path = {log}
info_log_path = {log}
ssl = yes
ssl_cert = <{cert.cert_path}
ssl_key = <{cert.key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {users}
}}
userdb {{
  driver = static
  args = home={store.root / "mail"}/%u
}}
mail_location = maildir:{store.root / "mail"}/%u
mail_uid = {store.uid}
mail_gid = {store.gid}
first_valid_uid = {store.uid}
first_valid_gid = {store.gid}
default_internal_user = root
default_login_user = dovenull
haproxy_trusted_networks = 127.0.0.1
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
    haproxy = yes
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
    haproxy = yes
  }}
}}
"""
        )
        super().__init__(
            d,
            conf,
            ["dovecot", "-F", "-c", str(conf)],
            pid_path=base / "master.pid",
            error_log_path=log,
        )


@pytest.fixture(scope="session")
def dovecot(
    tmp_path_factory: pytest.TempPathFactory, mail_store: MailStore, mail_cert: MailCert
) -> Iterator[Dovecot]:
    if missing := _missing("dovecot"):
        pytest.skip(f"Dovecot is not installed (missing {', '.join(missing)})")
    server = Dovecot(tmp_path_factory.mktemp("dovecot"), mail_store, mail_cert)
    server.start(MAIL_START_TIMEOUT)
    try:
        server.wait_for_port("127.0.0.1", server.imaps_port, MAIL_START_TIMEOUT)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Postfix

POSTFIX_MASTER_CF = """\
{listen} inet n - n - - smtpd
  -o smtpd_upstream_proxy_protocol=haproxy
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(ServerProcess):
    """`postfix -c DIR start-fg`: postfix-script stays in the foreground, master is its child.

    Started when queue_directory/pid/master.pid names a process of our group; stopped by
    SIGTERM to that master (then the group is reaped by ServerProcess.stop).
    """

    name = "postfix"

    def __init__(self, d: Path, store: MailStore) -> None:
        self.smtp_port = free_port()
        conf_dir = d / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (d / "logs").mkdir(parents=True, exist_ok=True)
        data = store.root / "postfix-data"
        data.mkdir(mode=0o700, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
        self.queue_dir = d / "queue"
        self.queue_dir.mkdir(exist_ok=True)
        log = d / "logs" / "maillog"
        mailboxes = ", ".join(f"{u}@{DOMAIN}={u}/" for u in USERS)
        (conf_dir / "main.cf").write_text(
            f"""\
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 100
alias_maps =
alias_database =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {store.root / "mail"}
virtual_mailbox_maps = inline:{{ {mailboxes} }}
virtual_uid_maps = static:{store.uid}
virtual_gid_maps = static:{store.gid}
virtual_minimum_uid = {store.uid}
maillog_file = {log}
maillog_file_prefixes = {d}
biff = no
smtputf8_enable = no
"""
        )
        (conf_dir / "master.cf").write_text(
            POSTFIX_MASTER_CF.format(listen=f"127.0.0.1:{self.smtp_port}")
        )
        self.master_pid: int | None = None
        super().__init__(
            d,
            conf_dir / "main.cf",
            ["postfix", "-c", str(conf_dir), "start-fg"],
            pid_path=self.queue_dir / "pid" / "master.pid",
            error_log_path=log,
        )

    def _master_pid(self) -> int | None:
        """The master's PID from its pid file, if it is our child (it runs in its own session)."""
        pid = self._pid_file_pid()
        if pid is None or self.proc is None:
            return None
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return pid if ppid == self.proc.pid else None

    def start(self, timeout: float = MAIL_START_TIMEOUT) -> Postfix:
        self.pid_path.unlink(missing_ok=True)
        self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while (master := self._master_pid()) is None:
            if self.proc.poll() is not None:
                self._fail_start(f"exited with status {self.proc.returncode} before writing")
            if time.monotonic() > deadline:
                self.stop()
                self._fail_start(f"did not write its master's pid within {timeout:.0f}s to")
            time.sleep(0.02)
        self.master_pid = master
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the master; its daemons (its own process group) are SIGKILLed if left."""
        master = self.master_pid
        self.master_pid = None
        if master is not None and self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(master, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)  # postfix-script exits when the master has
            except subprocess.TimeoutExpired:
                self._kill_group(master)
        if master is not None:
            deadline = time.monotonic() + timeout
            while group_members(master):
                if time.monotonic() > deadline:
                    self._kill_group(master)
                    self.strays_killed = True
                    break
                time.sleep(0.02)
        return super().stop(timeout)


@pytest.fixture(scope="session")
def postfix(tmp_path_factory: pytest.TempPathFactory, mail_store: MailStore) -> Iterator[Postfix]:
    if missing := _missing("postfix"):
        pytest.skip(f"Postfix is not installed (missing {', '.join(missing)})")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("Postfix's system user `postfix` does not exist")
    server = Postfix(tmp_path_factory.mktemp("postfix"), mail_store)
    server.start()
    try:
        server.wait_for_port("127.0.0.1", server.smtp_port, MAIL_START_TIMEOUT)
        yield server
    finally:
        server.stop()
