"""TLS in the stream module: `listen ... ssl` (ngx_stream_ssl_module) and `proxy_ssl`.

SSLContexts are built once per server when the configuration loads (in the master, so a
broken certificate fails `-t`, start-up and reload like nginx's); forked workers inherit them,
and a reload builds new ones from the files as they are then.

What Python's `ssl` cannot do, and is therefore accepted but not honoured:
- `ssl_session_cache`: every context keeps OpenSSL's internal cache (per worker process);
  `off`/`none` cannot switch it off and `shared:` is not shared between workers.
- `ssl_session_timeout`: SSL_CTX_set_timeout is not exposed; OpenSSL's 300 s default applies,
  which is also nginx's default (5m).
- `ssl_verify_depth` / `proxy_ssl_verify_depth`: no depth knob; chains are checked fully.
- `ssl_verify_client optional_no_ca`: behaves as `optional` (an untrusted client certificate
  fails the handshake, there is no verify callback to accept it).
"""

from __future__ import annotations

import contextvars
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.registry import (
    ONEMORE,
    TAKE12,
    Context,
    Registry,
    flag_slot,
    number_slot,
    str_slot,
    time_slot,
)
from pyngx.conf.variables import VariableTable, compile_complex, has_variables

_VERSIONS = {
    "SSLv2": None,  # no TLSVersion for it: accepted as nginx accepts it, never enabled
    "SSLv3": ssl.TLSVersion.SSLv3,
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
VERIFY_MODES = {
    "off": ssl.CERT_NONE,
    "on": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "optional_no_ca": ssl.CERT_OPTIONAL,
}


@dataclass(frozen=True, slots=True)
class ServerSsl:
    """The TLS side of a server's `listen ... ssl` sockets."""

    ctx: ssl.SSLContext
    handshake_timeout: float
    verify: str


@dataclass(slots=True)
class ProxySsl:
    """`proxy_ssl on`: how a server speaks TLS to its upstreams."""

    ctx: ssl.SSLContext
    server_name: bool
    name: str | None  # None: the proxy_pass host
    session_reuse: bool
    # Last session per upstream peer ("host:port"), per worker (filled after fork).
    sessions: dict[str, ssl.SSLSession] = field(default_factory=dict)


# -- directives --------------------------------------------------------------------------


def _resolve(node: Node, path: str) -> str:
    # nginx resolves these against the configuration prefix; the file's directory is ours.
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(node.file), path)


def _path_list(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        ctx.append(slot, _resolve(node, node.args[0]), node)

    return handler


def _path_slot(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, _resolve(node, node.args[0]), node)

    return handler


def _protocols(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        for arg in node.args:
            if arg not in _VERSIONS:
                raise node.error(f'invalid value "{arg}" in "{node.name}" directive')
        ctx.set_once(slot, tuple(node.args), node)

    return handler


def _session_cache(ctx: Context, node: Node) -> None:
    for arg in node.args:
        if arg in ("off", "none") or arg == "builtin":
            continue
        if arg.startswith("builtin:") and arg[8:].isdigit():
            continue
        if arg.startswith("shared:"):
            name, _, size = arg[7:].partition(":")
            if name and size:
                continue
        raise node.error(f'invalid session cache "{arg}"')
    ctx.set_once("ssl_session_cache", tuple(node.args), node)


def _verify_client(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in VERIFY_MODES:
        raise node.error(f'invalid value "{arg}" in "{node.name}" directive')
    ctx.set_once("ssl_verify_client", arg, node)


def _alpn(ctx: Context, node: Node) -> None:
    for arg in node.args:
        if not arg or len(arg) > 255:
            raise node.error(f'invalid value "{arg}" in "{node.name}" directive')
    ctx.set_once("ssl_alpn", list(node.args), node)


def register(reg: Registry, contexts: tuple[str, ...]) -> None:
    add = reg.add
    add("ssl_certificate", contexts, _path_list("ssl_certificate"))
    add("ssl_certificate_key", contexts, _path_list("ssl_certificate_key"))
    add("ssl_protocols", contexts, _protocols("ssl_protocols"), ONEMORE)
    add("ssl_ciphers", contexts, str_slot("ssl_ciphers"))
    add("ssl_prefer_server_ciphers", contexts, flag_slot("ssl_prefer_server_ciphers"))
    add("ssl_session_cache", contexts, _session_cache, TAKE12)
    add("ssl_session_timeout", contexts, time_slot("ssl_session_timeout"))
    add("ssl_session_tickets", contexts, flag_slot("ssl_session_tickets"))
    add("ssl_handshake_timeout", contexts, time_slot("ssl_handshake_timeout"))
    add("ssl_alpn", contexts, _alpn, ONEMORE)
    add("ssl_client_certificate", contexts, _path_slot("ssl_client_certificate"))
    add("ssl_trusted_certificate", contexts, _path_slot("ssl_trusted_certificate"))
    add("ssl_verify_client", contexts, _verify_client)
    add("ssl_verify_depth", contexts, number_slot("ssl_verify_depth"))
    add("proxy_ssl", contexts, flag_slot("proxy_ssl"))
    add("proxy_ssl_server_name", contexts, flag_slot("proxy_ssl_server_name"))
    add("proxy_ssl_name", contexts, str_slot("proxy_ssl_name"))
    add("proxy_ssl_verify", contexts, flag_slot("proxy_ssl_verify"))
    add("proxy_ssl_verify_depth", contexts, number_slot("proxy_ssl_verify_depth"))
    add("proxy_ssl_trusted_certificate", contexts, _path_slot("proxy_ssl_trusted_certificate"))
    add("proxy_ssl_certificate", contexts, _path_slot("proxy_ssl_certificate"))
    add("proxy_ssl_certificate_key", contexts, _path_slot("proxy_ssl_certificate_key"))
    add("proxy_ssl_protocols", contexts, _protocols("proxy_ssl_protocols"), ONEMORE)
    add("proxy_ssl_ciphers", contexts, str_slot("proxy_ssl_ciphers"))
    add("proxy_ssl_session_reuse", contexts, flag_slot("proxy_ssl_session_reuse"))


# -- building contexts ---------------------------------------------------------------------


def _ssl_reason(exc: BaseException) -> str:
    """OpenSSL's error, shaped like nginx's `(SSL: error:...:lib::reason)` suffix."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        lib = exc.library or "SSL"
        return f"(SSL: error:{lib} routines::{exc.reason.lower().replace('_', ' ')})"
    if isinstance(exc, OSError) and exc.errno:
        return f"(SSL: error:system library::{os.strerror(exc.errno)})"
    return f"(SSL: {exc})"


def _set_protocols(ctx: ssl.SSLContext, tokens: tuple[str, ...]) -> None:
    versions = [v for v in (_VERSIONS[t] for t in tokens) if v is not None]
    if not versions:
        return
    ctx.minimum_version = min(versions)
    ctx.maximum_version = max(versions)


def _set_ciphers(ctx: ssl.SSLContext, ciphers: str, node: Node | None) -> None:
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise ConfigError(
            f'SSL_CTX_set_cipher_list("{ciphers}") failed {_ssl_reason(exc)}'
        ) from None


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """load_cert_chain with nginx's wording for the file that is at fault."""
    for path, what in ((cert, "certificate"), (key, "certificate key")):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f'cannot load {what} "{path}": BIO_new_file() failed {_ssl_reason(exc)}'
            ) from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f'SSL_CTX_use_PrivateKey("{key}") failed {_ssl_reason(exc)}'
            ) from None
        if exc.library == "PEM" or "KEY" in (exc.reason or ""):
            raise ConfigError(
                f'cannot load certificate key "{key}": PEM_read_bio_PrivateKey() failed '
                f"{_ssl_reason(exc)}"
            ) from None
        raise ConfigError(
            f'cannot load certificate "{cert}": PEM_read_bio_X509_AUX() failed {_ssl_reason(exc)}'
        ) from None


def _on_sni(obj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
    # Server-side SSLObjects report no server_hostname: keep the name for $ssl_server_name.
    obj.pyngx_sni = name


class _CertificateBySni:
    """`ssl_certificate` with variables (`$ssl_server_name`): the certificate is chosen when
    the client's server name is known, loaded once per resulting file pair and cached, as
    nginx loads such certificates at handshake time."""

    def __init__(
        self,
        make_context: Callable[[], ssl.SSLContext],
        static: list[tuple[str, str]],
        dynamic: list[tuple[str, str]],
    ) -> None:
        table = VariableTable()
        table.add("ssl_server_name", lambda name: name)
        self.make_context = make_context
        self.static = static
        self.dynamic = [(compile_complex(c, table), compile_complex(k, table)) for c, k in dynamic]
        self.cache: dict[tuple[tuple[str, str], ...], ssl.SSLContext | None] = {}

    def __call__(self, obj: Any, name: str | None, ctx: ssl.SSLContext) -> int | None:
        _on_sni(obj, name, ctx)
        server_name = name or ""
        files = tuple((cert(server_name), key(server_name)) for cert, key in self.dynamic)
        chosen = self.cache.get(files, ctx)
        if chosen is ctx:
            chosen = self.make_context()
            try:
                for cert, key in [*self.static, *files]:
                    _load_pair(chosen, cert, key)
            except ConfigError:
                chosen = None
            if len(self.cache) < SNI_CONTEXT_CACHE:
                self.cache[files] = chosen
        if chosen is None:
            # nginx fails the handshake when the certificate cannot be loaded.
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        obj.context = chosen
        return None


SNI_CONTEXT_CACHE = 1024


def build_server(srv: Context, has_ssl_listen: bool, where: str) -> ServerSsl | None:
    """ngx_stream_ssl_merge_conf: a context for a server with certificates or `listen ssl`."""
    certs: list[str] = srv.get("ssl_certificate", [])
    keys: list[str] = srv.get("ssl_certificate_key", [])
    if not has_ssl_listen:
        return None
    if not certs:
        raise ConfigError(
            f'no "ssl_certificate" is defined for the "listen ... ssl" directive in {where}'
        )
    if len(keys) < len(certs):
        raise ConfigError(
            f'no "ssl_certificate_key" is defined for certificate "{certs[len(keys)]}" and '
            f'the "listen ... ssl" directive in {where}'
        )

    def make_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _set_protocols(ctx, srv.get("ssl_protocols", DEFAULT_PROTOCOLS))
        _set_ciphers(ctx, srv.get("ssl_ciphers", "HIGH:!aNULL:!MD5"), srv.where("ssl_ciphers"))
        if srv.get("ssl_prefer_server_ciphers", False):
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        if not srv.get("ssl_session_tickets", True):
            ctx.options |= ssl.OP_NO_TICKET
        alpn = srv.get("ssl_alpn", None)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if verify != "off":
            ctx.verify_mode = VERIFY_MODES[verify]
            for path in (client_ca, srv.get("ssl_trusted_certificate", None)):
                if path is None:
                    continue
                try:
                    ctx.load_verify_locations(path)
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(
                        f'SSL_CTX_load_verify_locations("{path}") failed {_ssl_reason(exc)}'
                    ) from None
        return ctx

    verify = srv.get("ssl_verify_client", "off")
    client_ca = srv.get("ssl_client_certificate", None)
    if verify != "off" and client_ca is None and verify != "optional_no_ca":
        raise ConfigError(f"no ssl_client_certificate for ssl_verify_client in {where}")
    pairs = list(zip(certs, keys, strict=False))
    static = [(c, k) for c, k in pairs if not has_variables(c) and not has_variables(k)]
    dynamic = [(c, k) for c, k in pairs if (c, k) not in static]
    ctx = make_context()
    for cert, key in static:
        _load_pair(ctx, cert, key)
    if dynamic:
        ctx.sni_callback = _CertificateBySni(make_context, static, dynamic)
    else:
        ctx.sni_callback = _on_sni
    return ServerSsl(ctx, srv.get("ssl_handshake_timeout", 60.0), verify)


class _ClientContext(ssl.SSLContext):
    """asyncio's start_tls has no `session=`: the session to offer is passed to wrap_bio,
    which runs in a callback scheduled from the connecting task, through a context variable
    (each task runs its callbacks in its own copy of the context)."""

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        session = NEXT_SESSION.get()
        if session is not None and kwargs.get("session") is None:
            kwargs["session"] = session
        return super().wrap_bio(*args, **kwargs)


NEXT_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "pyngx_next_tls_session", default=None
)


def build_proxy(srv: Context) -> ProxySsl | None:
    if not srv.get("proxy_ssl", False):
        return None
    ctx = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _set_protocols(ctx, srv.get("proxy_ssl_protocols", DEFAULT_PROTOCOLS))
    _set_ciphers(ctx, srv.get("proxy_ssl_ciphers", "DEFAULT"), srv.where("proxy_ssl_ciphers"))
    if srv.get("proxy_ssl_verify", False):
        trusted = srv.get("proxy_ssl_trusted_certificate", None)
        if trusted is None:
            node = srv.where("proxy_ssl_verify")
            where = f"{node.file}:{node.line}" if node is not None else "?"
            raise ConfigError(f"no proxy_ssl_trusted_certificate for proxy_ssl_verify in {where}")
        try:
            ctx.load_verify_locations(trusted)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f'SSL_CTX_load_verify_locations("{trusted}") failed {_ssl_reason(exc)}'
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True  # nginx checks the name (proxy_ssl_name) too
    else:
        ctx.verify_mode = ssl.CERT_NONE
    cert = srv.get("proxy_ssl_certificate", None)
    if cert is not None:
        key = srv.get("proxy_ssl_certificate_key", None)
        if key is None:
            raise ConfigError(f'no "proxy_ssl_certificate_key" is defined for certificate "{cert}"')
        _load_pair(ctx, cert, key)
    return ProxySsl(
        ctx,
        server_name=srv.get("proxy_ssl_server_name", False),
        name=srv.get("proxy_ssl_name", None),
        session_reuse=srv.get("proxy_ssl_session_reuse", True),
    )


# -- run time --------------------------------------------------------------------------------


def handshake_error(exc: BaseException) -> str | None:
    """nginx's words for a failed server-side handshake (without ` while SSL handshaking`);
    None where nginx logs nothing: a handshake timeout is silent at `info` in nginx 1.22."""
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        return None
    if isinstance(exc, ssl.SSLError):
        if exc.reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"):
            return "client sent no required SSL certificate"
        return f"SSL_do_handshake() failed {_ssl_reason(exc)}"
    if isinstance(exc, OSError) and exc.errno:
        return f"SSL_do_handshake() failed ({exc.errno}: {os.strerror(exc.errno)})"
    return "peer closed connection in SSL handshake"


def peer_subject_dn(obj: ssl.SSLObject) -> str | None:
    """$ssl_client_s_dn in RFC 2253 order (nginx's default since 1.11.6)."""
    cert = obj.getpeercert()
    if not cert:
        return None
    rdns = cert.get("subject", ())
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "stateOrProvinceName": "ST",
        "localityName": "L",
    }
    parts = []
    for rdn in reversed(rdns):
        parts.append("+".join(f"{short.get(k, k)}={v}" for k, v in rdn))
    return ",".join(parts)
