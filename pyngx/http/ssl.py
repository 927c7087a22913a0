"""ngx_http_ssl_module: `listen ... ssl`, and the start of a connection before its first request
(the PROXY header of `listen ... proxy_protocol`, then TLS).

Configuration
-------------
Every server with certificates (its own or inherited) gets SSLContexts when the configuration
is loaded (in the master, so a broken certificate fails `-t`, start-up and reload as in nginx;
workers inherit them). Servers with the same settings share one context. A server can need two
variants, with and without `h2` in its ALPN list (`listen ... http2` on one of its addresses,
`http2 on` in it); each variant is built once. `ServerConf.ssl` holds a `ServerTls`.
`HttpPort.ssl` stays None: the listening socket is a plain one (the worker must not wrap it),
because TLS starts only after the PROXY header and after the first bytes have shown whether the
client speaks TLS at all.

The connection (the preface)
----------------------------
`start_preface(conn)` is called by HttpConnection.connection_made on an ssl or proxy_protocol
port. The Preface protocol takes the transport until the request-reading part can begin:
1. the PROXY header, read from the first bytes as nginx does (a header that is not complete in
   them is broken), kept as `conn.pp`;
2. on an ssl port, the first byte: 0x16 or one with the high bit set is TLS, anything else is
   plain HTTP, which goes to the connection as it is (the request is then answered with 497,
   "400 The plain HTTP request was sent to HTTPS port", as nginx answers it);
3. the ClientHello is read whole (scan_hello: only what the selection needs, cheaply) to pick
   the server its SNI names, as nginx's servername callback does; the handshake then starts
   with that server's context, so its certificate, its ssl_verify_client and its ALPN apply.
   (Python cannot change the verify mode of a handshake once it has started, which nginx's
   callback does.) ssl_reject_handshake and an ALPN list with nothing in common are refused
   from the hello, with the alert OpenSSL would send. A hello the reader does not take is
   left to OpenSSL with the default server's context; the SNI callback then switches the
   certificate the way nginx does if it runs while the bytes we read are being fed.
4. `loop.start_tls`, driven synchronously (core/stepper.py's Stepper) so the transport changes
   hands before more bytes arrive; the bytes read so far are fed to the SSL protocol. Then the
   TLS transport goes to the connection (`conn.transport`, `conn.is_ssl`); with `h2` chosen by
   ALPN, `pyngx.http.h2.upgrade(conn)` takes over if that module exists.
client_header_timeout runs from the accept through all of this, as nginx's
post_accept_timeout does, with nginx's log lines for each stage.

Requests (POST_READ)
--------------------
`post_read(r)` does nginx's checks before the server rewrite phase: 497 for plain HTTP on an
ssl port; 421 when the SNI selected a server and the Host names another one that wants client
certificates; 496 when the server has `ssl_verify_client on` and the client sent none.

Client certificates follow nginx: the handshake never fails on them (nginx's verify callback
is installed through libssl, see LibSSL), and the request is answered with 495 or 496 by the
server's ssl_verify_client, with $ssl_client_verify saying why.

What Python's ssl cannot do, and is accepted but not honoured:
- no CA names are sent in the certificate request. Without LibSSL (if its checks of Python's
  objects fail), a bad client certificate fails the handshake and ssl_verify_depth is not
  enforced.
- ssl_session_cache, ssl_session_timeout, ssl_session_ticket_key, ssl_buffer_size: OpenSSL's
  per-process session cache, its 300 s timeout and per-context ticket keys (the same in every
  worker, which inherit them) apply.
- ssl_ecdh_curve with a list: the names are checked, OpenSSL's default groups stay in use.
- ssl_stapling*, ssl_ocsp*, ssl_conf_command, ssl_early_data: accepted; stapling, OCSP and
  conf commands are warned about when switched on; early data is never accepted.
- a handshake that OpenSSL fails is closed without its alert (asyncio drops a failed
  handshake's output); the refusals decided from the ClientHello send nginx's alert.
- $ssl_curves is not provided (no access to the client's groups).
- certificate paths with variables may use $ssl_server_name only.
- `ssl on` is an unknown directive, as in nginx since 1.25.1.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import hashlib
import importlib
import os
import re
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.registry import (
    ONEMORE,
    TAKE2,
    TAKE12,
    TAKE123,
    Context,
    Registry,
    flag_slot,
    number_slot,
    size_slot,
    str_slot,
    time_slot,
)
from pyngx.conf.variables import VariableTable, has_variables
from pyngx.core.log import CRIT, ERROR, INFO
from pyngx.core.stepper import Stepper
from pyngx.http import request as request_mod
from pyngx.http.module import HTTP, SRV
from pyngx.protocols import proxy_protocol as pp
from pyngx.stream import tls as stream_tls
from pyngx.stream.pass_module import feed_tls
from pyngx.stream.session import _broken_header_message

MAIN_SRV = (HTTP, SRV)

DEFAULT_PROTOCOLS = ("TLSv1.2", "TLSv1.3")  # nginx's default since 1.23.4
DEFAULT_CIPHERS = "HIGH:!aNULL:!MD5"
VERIFY = ("off", "on", "optional", "optional_no_ca")
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_PROTOCOL_NAMES = ("SSLv2", "SSLv3", *_TLS_VERSIONS)

# nginx's ngx_http_ssl_alpn_select list, in its order of preference.
ALPN_HTTP1 = ("http/1.1", "http/1.0", "http/0.9")
ALPN_H2 = ("h2", *ALPN_HTTP1)

ALERT_UNRECOGNIZED_NAME = 112
ALERT_NO_APPLICATION_PROTOCOL = 120
# A fatal alert record before the handshake has a version (TLS 1.2 framing, as OpenSSL's).
_ALERT_RECORD = b"\x15\x03\x03\x00\x02\x02"

# The reader gives up on a ClientHello this large and lets OpenSSL handle it.
HELLO_LIMIT = 16384

_ETIMEDOUT = "110: Connection timed out"


# -- OpenSSL error texts, as nginx prints them --------------------------------------------

_LIB_TEXT = {
    "SSL": "SSL routines",
    "PEM": "PEM routines",
    "X509": "x509 certificate routines",
    "BIO": "BIO routines",
    "DECODER": "DECODER routines",
    "EVP": "digital envelope routines",
    "ASN1": "asn1 encoding routines",
    "RSA": "rsa routines",
    "EC": "elliptic curve routines",
    "SYS": "system library",
}

# Reasons nginx logs at `info` (ngx_ssl_connection_error), the rest at `crit`.
_INFO_REASONS_TEXT = """
    BAD_CHANGE_CIPHER_SPEC NO_SUITABLE_KEY_SHARE BAD_ALERT BAD_KEY_SHARE BAD_EXTENSION
    BAD_DIGEST_LENGTH MISSING_SIGALGS_EXTENSION BAD_PACKET_LENGTH
    NO_SUITABLE_SIGNATURE_ALGORITHM BAD_KEY_UPDATE BLOCK_CIPHER_PAD_IS_WRONG CCS_RECEIVED_EARLY
    DECODE_ERROR DATA_BETWEEN_CCS_AND_FINISHED DATA_LENGTH_TOO_LONG DIGEST_CHECK_FAILED
    ENCRYPTED_LENGTH_TOO_LONG ERROR_IN_RECEIVED_CIPHER_LIST EXCESSIVE_MESSAGE_SIZE
    GOT_A_FIN_BEFORE_A_CCS HTTPS_PROXY_REQUEST HTTP_REQUEST LENGTH_MISMATCH LENGTH_TOO_SHORT
    NO_RENEGOTIATION NO_CIPHERS_PASSED NO_CIPHERS_SPECIFIED BAD_CIPHER NO_COMPRESSION_SPECIFIED
    NO_SHARED_CIPHER PACKET_LENGTH_TOO_LONG RECORD_LENGTH_MISMATCH TOO_MANY_WARNING_ALERTS
    CLIENTHELLO_TLSEXT PARSE_TLSEXT CALLBACK_FAILED NO_APPLICATION_PROTOCOL UNEXPECTED_MESSAGE
    UNEXPECTED_RECORD UNKNOWN_ALERT_TYPE UNKNOWN_PROTOCOL NO_COMMON_SIGNATURE_ALGORITHMS
    INVALID_COMPRESSION_LIST MISSING_KEY_SHARE UNSUPPORTED_PROTOCOL NO_SHARED_GROUP
    WRONG_VERSION_NUMBER TOO_MUCH_SKIPPED_EARLY_DATA BAD_LENGTH
    DECRYPTION_FAILED_OR_BAD_RECORD_MAC APPLICATION_DATA_AFTER_CLOSE_NOTIFY BAD_LEGACY_VERSION
    MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA RECORD_TOO_SMALL SSL3_SESSION_ID_TOO_LONG BAD_ECPOINT
    RENEGOTIATE_EXT_TOO_LONG RENEGOTIATION_ENCODING_ERR RENEGOTIATION_MISMATCH
    UNSAFE_LEGACY_RENEGOTIATION_DISABLED SCSV_RECEIVED_WHEN_RENEGOTIATING INAPPROPRIATE_FALLBACK
    NO_SHARED_SIGNATURE_ALGORITHMS CERT_CB_ERROR VERSION_TOO_LOW TOO_MANY_WARN_ALERTS
    BAD_RECORD_TYPE SSLV3_ALERT_CLOSE_NOTIFY SSLV3_ALERT_UNEXPECTED_MESSAGE
    SSLV3_ALERT_BAD_RECORD_MAC TLSV1_ALERT_DECRYPTION_FAILED TLSV1_ALERT_RECORD_OVERFLOW
    SSLV3_ALERT_DECOMPRESSION_FAILURE SSLV3_ALERT_HANDSHAKE_FAILURE SSLV3_ALERT_NO_CERTIFICATE
    SSLV3_ALERT_BAD_CERTIFICATE SSLV3_ALERT_UNSUPPORTED_CERTIFICATE
    SSLV3_ALERT_CERTIFICATE_REVOKED SSLV3_ALERT_CERTIFICATE_EXPIRED
    SSLV3_ALERT_CERTIFICATE_UNKNOWN SSLV3_ALERT_ILLEGAL_PARAMETER TLSV1_ALERT_UNKNOWN_CA
    TLSV1_ALERT_ACCESS_DENIED TLSV1_ALERT_DECODE_ERROR TLSV1_ALERT_DECRYPT_ERROR
    TLSV1_ALERT_EXPORT_RESTRICTION TLSV1_ALERT_PROTOCOL_VERSION
    TLSV1_ALERT_INSUFFICIENT_SECURITY TLSV1_ALERT_INTERNAL_ERROR TLSV1_ALERT_USER_CANCELLED
    TLSV1_ALERT_NO_RENEGOTIATION"""
INFO_REASONS = frozenset(_INFO_REASONS_TEXT.split())

_REASON_TEXT = re.compile(r"^\[[^\]]*\] (.*?)(?: \(_ssl\.c:\d+\))?$")


def _lib_code(lib: str) -> int | None:
    import _ssl

    for code, name in _ssl.lib_codes_to_names.items():  # type: ignore[attr-defined]
        if name == lib:
            return int(code)
    return None


def openssl_error_text(exc: ssl.SSLError) -> str:
    """`(SSL: error:0A0000F4:SSL routines::unexpected message)`, nginx's suffix."""
    import _ssl

    lib = getattr(exc, "library", None) or ""
    reason = getattr(exc, "reason", None) or ""
    message = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    m = _REASON_TEXT.match(message)
    text = m.group(1) if m else reason.lower().replace("_", " ")
    codes = _ssl.err_names_to_codes.get(reason)  # type: ignore[attr-defined]
    lib_code = _lib_code(lib)
    if codes is not None and lib_code is not None:
        code = (lib_code & 0xFF) << 23 | (codes[1] & 0x7FFFFF)
        return f"(SSL: error:{code:08X}:{_LIB_TEXT.get(lib, lib + ' routines')}::{text})"
    return f"(SSL: error:{_LIB_TEXT.get(lib, lib + ' routines')}::{text})"


def _fopen_error(path: str, exc: OSError) -> str:
    """What OpenSSL 3 reports when BIO_new_file cannot open `path`."""
    errno = exc.errno or 0
    bio = (
        "10000080:BIO routines::no such file" if errno == 2 else "10000002:BIO routines::system lib"
    )
    return (
        f"(SSL: error:{0x80000000 | errno:08X}:system library::{os.strerror(errno)}:"
        f"calling fopen({path}, r) error:{bio})"
    )


def handshake_failure(exc: BaseException) -> tuple[int, str]:
    """nginx's level and words for a failed handshake (without ` while SSL handshaking`)."""
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        return INFO, f"client timed out ({_ETIMEDOUT})"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        level = INFO if exc.reason in INFO_REASONS else CRIT
        return level, f"SSL_do_handshake() failed {openssl_error_text(exc)}"
    if isinstance(exc, OSError) and exc.errno:
        return INFO, f"SSL_do_handshake() failed ({exc.errno}: {os.strerror(exc.errno)})"
    return INFO, "peer closed connection in SSL handshake"


# -- what Python's ssl does not expose ----------------------------------------------------

# X509_V_ERR_* that `ssl_verify_client optional_no_ca` lets through (ngx_ssl_verify_error_optional).
_OPTIONAL_ERRORS = frozenset((2, 18, 19, 20, 21))
_SSL_VERIFY_PEER = 1
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VerifyCallback
def _accept(preverify_ok: int, store: int | None) -> int:
    # nginx's ngx_ssl_verify_callback: OpenSSL records the verdict, the handshake goes on.
    return 1


class LibSSL:
    """Two things nginx does that Python's ssl module has no call for, asked of libssl itself
    (the library _ssl is linked with): a verify callback that never fails the handshake, so
    that a bad client certificate is answered with 495 as in nginx, with its verify depth; and
    SSL_get_verify_result, for that answer and $ssl_client_verify. The OpenSSL pointers are
    read from the start of Python's own objects, and that reading is checked against libssl
    on throwaway objects first; if anything does not match, `ok` is False and pyngx does
    without (a bad client certificate then fails the handshake)."""

    CTX_OFFSET = 16  # PySSLContext: PyObject_HEAD, then SSL_CTX *ctx
    SSL_OFFSET = 24  # PySSLSocket: PyObject_HEAD, the socket weakref, then SSL *ssl

    def __init__(self) -> None:
        self.ok = False
        try:
            self._bind()
            self.ok = self._check()
        except (OSError, AttributeError, ValueError, TypeError):
            self.ok = False

    def _bind(self) -> None:
        name = ctypes.util.find_library("ssl")
        crypto_name = ctypes.util.find_library("crypto")
        if name is None or crypto_name is None:
            raise OSError("libssl not found")
        lib = ctypes.CDLL(name)
        crypto = ctypes.CDLL(crypto_name)
        vp = ctypes.c_void_p
        lib.SSL_CTX_get_verify_mode.argtypes = [vp]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_set_verify.argtypes = [vp, ctypes.c_int, _VerifyCallback]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_set_verify_depth.argtypes = [vp, ctypes.c_int]
        lib.SSL_CTX_set_verify_depth.restype = None
        lib.SSL_CTX_get_verify_depth.argtypes = [vp]
        lib.SSL_CTX_get_verify_depth.restype = ctypes.c_int
        lib.SSL_CTX_get_options.argtypes = [vp]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_get_SSL_CTX.argtypes = [vp]
        lib.SSL_get_SSL_CTX.restype = vp
        lib.SSL_get_verify_result.argtypes = [vp]
        lib.SSL_get_verify_result.restype = ctypes.c_long
        crypto.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
        crypto.X509_verify_cert_error_string.restype = ctypes.c_char_p
        self.lib = lib
        self.crypto = crypto

    def _ctx_ptr(self, ctx: ssl.SSLContext) -> int | None:
        value: int | None = ctypes.c_void_p.from_address(id(ctx) + self.CTX_OFFSET).value
        return value

    def _ssl_ptr(self, obj: ssl.SSLObject) -> int | None:
        inner = obj._sslobj  # type: ignore[attr-defined]
        value: int | None = ctypes.c_void_p.from_address(id(inner) + self.SSL_OFFSET).value
        return value

    def _check(self) -> bool:
        lib = self.lib
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ptr = self._ctx_ptr(probe)
        if not ptr:
            return False
        for mode, bits in ((ssl.CERT_NONE, 0), (ssl.CERT_OPTIONAL, 1), (ssl.CERT_REQUIRED, 3)):
            probe.verify_mode = mode
            if lib.SSL_CTX_get_verify_mode(ptr) != bits:
                return False
        for options in (probe.options | ssl.OP_NO_TICKET, probe.options & ~ssl.OP_NO_TICKET):
            probe.options = options
            if lib.SSL_CTX_get_options(ptr) != int(probe.options):
                return False
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        obj = probe.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
        sslp = self._ssl_ptr(obj)
        if not sslp or lib.SSL_get_SSL_CTX(sslp) != ptr:
            return False
        obj.context = other
        return bool(lib.SSL_get_SSL_CTX(sslp) == self._ctx_ptr(other))

    def accept_any_certificate(self, ctx: ssl.SSLContext, depth: int) -> None:
        if self.ok:
            ptr = self._ctx_ptr(ctx)
            self.lib.SSL_CTX_set_verify(ptr, _SSL_VERIFY_PEER, _accept)
            self.lib.SSL_CTX_set_verify_depth(ptr, depth)

    def verify_result(self, obj: ssl.SSLObject) -> int:
        """X509_V_OK (0) or the error that verifying the client's certificate found."""
        if not self.ok:
            return 0
        return int(self.lib.SSL_get_verify_result(self._ssl_ptr(obj)))

    def verify_error(self, code: int) -> str:
        text: bytes = self.crypto.X509_verify_cert_error_string(code)
        return text.decode("latin-1")


LIBSSL = LibSSL()


# -- directives ----------------------------------------------------------------------------


def _protocols(ctx: Context, node: Node) -> None:
    for arg in node.args:
        if arg not in _PROTOCOL_NAMES:
            raise node.error(f'invalid value "{arg}"')
    ctx.set_once("ssl_protocols", tuple(node.args), node)


def _verify_client(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in VERIFY:
        raise node.error(f'invalid value "{arg}"')
    ctx.set_once("ssl_verify_client", arg, node)


def _ocsp(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in ("on", "off", "leaf"):
        raise node.error(f'invalid value "{arg}"')
    if arg != "off":
        ctx.warn(node, '"ssl_ocsp" is not supported by pyngx, client certificates are not checked')
    ctx.set_once("ssl_ocsp", arg, node)


def _stapling(ctx: Context, node: Node) -> None:
    flag_slot("ssl_stapling")(ctx, node)
    if ctx.slots["ssl_stapling"]:
        ctx.warn(node, '"ssl_stapling" ignored, not supported by pyngx')


def _conf_command(ctx: Context, node: Node) -> None:
    ctx.warn(node, f'"ssl_conf_command {node.args[0]}" ignored, not supported by pyngx')
    ctx.append("ssl_conf_command", tuple(node.args), node)


def _password_file(ctx: Context, node: Node) -> None:
    path = stream_tls._resolve(node, node.args[0])
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise node.error(f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    passwords = tuple(line.rstrip(b"\r") for line in lines if line.rstrip(b"\r"))
    if not passwords:
        raise node.error(f'no passphrases found in "{path}"')
    ctx.set_once("ssl_password_file", passwords, node)


def _ignore_args(ctx: Context, node: Node) -> None:
    return None


def register(reg: Registry) -> None:
    add = reg.add
    add("ssl_certificate", MAIN_SRV, stream_tls._path_list("ssl_certificate"))
    add("ssl_certificate_key", MAIN_SRV, stream_tls._path_list("ssl_certificate_key"))
    add("ssl_password_file", MAIN_SRV, _password_file)
    add("ssl_dhparam", MAIN_SRV, stream_tls._path_slot("ssl_dhparam"))
    add("ssl_ecdh_curve", MAIN_SRV, str_slot("ssl_ecdh_curve"))
    add("ssl_protocols", MAIN_SRV, _protocols, ONEMORE)
    add("ssl_ciphers", MAIN_SRV, str_slot("ssl_ciphers"))
    add("ssl_buffer_size", MAIN_SRV, size_slot("ssl_buffer_size"))
    add("ssl_verify_client", MAIN_SRV, _verify_client)
    add("ssl_verify_depth", MAIN_SRV, number_slot("ssl_verify_depth"))
    add("ssl_client_certificate", MAIN_SRV, stream_tls._path_slot("ssl_client_certificate"))
    add("ssl_trusted_certificate", MAIN_SRV, stream_tls._path_slot("ssl_trusted_certificate"))
    add("ssl_prefer_server_ciphers", MAIN_SRV, flag_slot("ssl_prefer_server_ciphers"))
    add("ssl_session_cache", MAIN_SRV, stream_tls._session_cache, TAKE12)
    add("ssl_session_tickets", MAIN_SRV, flag_slot("ssl_session_tickets"))
    add("ssl_session_ticket_key", MAIN_SRV, stream_tls._path_list("ssl_session_ticket_key"))
    add("ssl_session_timeout", MAIN_SRV, time_slot("ssl_session_timeout"))
    add("ssl_crl", MAIN_SRV, stream_tls._path_slot("ssl_crl"))
    add("ssl_ocsp", MAIN_SRV, _ocsp)
    add("ssl_ocsp_responder", MAIN_SRV, str_slot("ssl_ocsp_responder"))
    add("ssl_ocsp_cache", MAIN_SRV, _ignore_args)
    add("ssl_stapling", MAIN_SRV, _stapling)
    add("ssl_stapling_file", MAIN_SRV, stream_tls._path_slot("ssl_stapling_file"))
    add("ssl_stapling_responder", MAIN_SRV, str_slot("ssl_stapling_responder"))
    add("ssl_stapling_verify", MAIN_SRV, flag_slot("ssl_stapling_verify"))
    add("ssl_early_data", MAIN_SRV, flag_slot("ssl_early_data"))
    add("ssl_conf_command", MAIN_SRV, _conf_command, TAKE2)
    add("ssl_reject_handshake", MAIN_SRV, flag_slot("ssl_reject_handshake"))
    add("ssl_certificate_cache", MAIN_SRV, _ignore_args, TAKE123)
    # nginx removed `ssl on` in 1.25.1: it is an unknown directive, as there.
    if post_read not in request_mod.POST_READ:
        # Before realip's post-read handler: nginx checks TLS before the phases start.
        request_mod.POST_READ.insert(0, post_read)


# -- contexts ------------------------------------------------------------------------------

# The preface whose ClientHello OpenSSL is reading right now. Its handshake is fed the whole
# ClientHello at once (Preface._feed), so the SNI callback runs within that call.
_FEEDING: list[Preface | None] = [None]


class ServerContext(ssl.SSLContext):
    """A server's SSLContext."""

    pyngx_dynamic: Any = None  # certificates chosen by SNI ($ssl_server_name in paths)


def _sni_callback(obj: Any, name: str | None, ctx: ssl.SSLContext) -> int | None:
    obj.pyngx_sni = name
    pre = _FEEDING[0]
    if pre is not None:
        alert = pre.on_sni(obj, name)
        if alert is not None:
            return alert
    dynamic = getattr(obj.context, "pyngx_dynamic", None)
    if dynamic is not None:
        result: int | None = dynamic(obj, name, obj.context)
        return result
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a server's SSLContext is made from (the key contexts are shared by)."""

    certs: tuple[tuple[str, str], ...]
    passwords: tuple[bytes, ...]
    protocols: tuple[str, ...]
    ciphers: str
    prefer_server_ciphers: bool
    tickets: bool
    dhparam: str | None
    ecdh_curve: str
    verify: str
    verify_depth: int
    client_certificate: str | None
    trusted_certificate: str | None
    crl: str | None


@dataclass(slots=True)
class ServerTls:
    """A server's TLS side (`ServerConf.ssl`)."""

    verify: str
    reject: bool
    h2: bool  # `http2 on` here, and pyngx has HTTP/2
    settings: Settings | None  # None: no certificates and no ssl_reject_handshake
    contexts: dict[bool, ServerContext] = field(default_factory=dict)  # by "h2 offered"

    def context(self, h2: bool) -> ServerContext | None:
        return self.contexts.get(h2)


def _no_password() -> bytes:
    # Never let OpenSSL prompt on the terminal for an encrypted key (nginx does not either).
    return b""


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str, passwords: tuple[bytes, ...]) -> None:
    for path, what in ((cert, "certificate"), (key, "certificate key")):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f'cannot load {what} "{path}": BIO_new_file() failed {_fopen_error(path, exc)}'
            ) from None
    error: ssl.SSLError | None = None
    for password in passwords or (None,):
        try:
            ctx.load_cert_chain(cert, key, password if password is not None else _no_password)
            return
        except ssl.SSLError as exc:
            error = exc
    assert error is not None
    if error.reason == "KEY_VALUES_MISMATCH":
        raise ConfigError(
            f'SSL_CTX_use_PrivateKey("{key}") failed {openssl_error_text(error)}'
        ) from None
    # Python reports both as "PEM lib": which file it was, and OpenSSL's words for a file
    # that has no PEM object of the kind expected.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cert)
    except (ssl.SSLError, OSError):
        raise ConfigError(
            f'cannot load certificate "{cert}": PEM_read_bio_X509_AUX() failed (SSL: '
            "error:0480006C:PEM routines::no start line:Expecting: TRUSTED CERTIFICATE)"
        ) from None
    raise ConfigError(
        f'cannot load certificate key "{key}": PEM_read_bio_PrivateKey() failed (SSL: '
        "error:1E08010C:DECODER routines::unsupported:No supported data to decode. "
        "Input type: PEM)"
    ) from None


def _set_protocols(ctx: ssl.SSLContext, tokens: tuple[str, ...]) -> None:
    versions = [_TLS_VERSIONS[t] for t in tokens if t in _TLS_VERSIONS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if not versions:
            # Only SSLv2/SSLv3, which OpenSSL 3 cannot speak: no handshake can succeed.
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            return
        ctx.minimum_version = min(versions)
        ctx.maximum_version = max(versions)


def _load_verify(ctx: ssl.SSLContext, path: str) -> None:
    try:
        ctx.load_verify_locations(path)
    except ssl.SSLError as exc:
        text = openssl_error_text(exc)
        raise ConfigError(f'SSL_CTX_load_verify_locations("{path}") failed {text}') from None
    except OSError as exc:
        # X509_STORE_load_locations adds its own line after BIO_new_file's.
        text = (
            _fopen_error(path, exc)[:-1] + " error:05880002:x509 certificate routines::system lib)"
        )
        raise ConfigError(f'SSL_CTX_load_verify_locations("{path}") failed {text}') from None


def make_context(s: Settings, alpn: tuple[str, ...], *, certificates: bool = True) -> ServerContext:
    """One SSLContext for `s` (ngx_http_ssl_merge_srv_conf's work)."""
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    _set_protocols(ctx, s.protocols)
    try:
        ctx.set_ciphers(s.ciphers)
    except ssl.SSLError:
        # Python keeps no OpenSSL error here; SSL_R_NO_CIPHER_MATCH is the only way it fails.
        raise ConfigError(
            f'SSL_CTX_set_cipher_list("{s.ciphers}") failed '
            "(SSL: error:0A0000B9:SSL routines::no cipher match)"
        ) from None
    # Python prefers the server's order by default; nginx only with ssl_prefer_server_ciphers.
    options = ctx.options & ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if s.prefer_server_ciphers:
        options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if not s.tickets:
        options |= ssl.OP_NO_TICKET
    options |= ssl.OP_NO_RENEGOTIATION
    ctx.options = options
    if s.dhparam is not None:
        try:
            ctx.load_dh_params(s.dhparam)
        except ssl.SSLError as exc:
            text = openssl_error_text(exc)
            if exc.reason == "NO_START_LINE":
                text = text[:-1] + ":Expecting: DH PARAMETERS)"
            raise ConfigError(f'PEM_read_bio_DHparams("{s.dhparam}") failed {text}') from None
        except OSError as exc:
            raise ConfigError(
                f'BIO_new_file("{s.dhparam}") failed {_fopen_error(s.dhparam, exc)}'
            ) from None
    _set_curves(ctx, s.ecdh_curve)
    ctx.set_alpn_protocols(list(alpn))
    if s.verify != "off":
        # nginx requests a certificate and never fails the handshake over it: the request is
        # answered with 495 or 496 instead (post_read).
        ctx.verify_mode = ssl.CERT_OPTIONAL
        for path in (s.client_certificate, s.trusted_certificate):
            if path is not None:
                _load_verify(ctx, path)
        if s.crl is not None:
            _load_verify(ctx, s.crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        # After the last change of verify_mode, which resets OpenSSL's callback.
        LIBSSL.accept_any_certificate(ctx, s.verify_depth)
    if certificates:
        for cert, key in s.certs:
            if not has_variables(cert) and not has_variables(key):
                _load_pair(ctx, cert, key, s.passwords)
    ctx.sni_callback = _sni_callback
    return ctx


def _set_curves(ctx: ssl.SSLContext, value: str) -> None:
    if value == "auto":
        return
    names = value.split(":")
    for name in names:
        try:
            (ctx if len(names) == 1 else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).set_ecdh_curve(
                name
            )
        except ValueError:
            raise ConfigError(
                f'SSL_CTX_set1_curves_list("{value}") failed (SSL: error:0A080106:SSL routines::'
                f"passed invalid argument:group '{name}' cannot be set)"
            ) from None


class _Builder:
    """Contexts for one configuration, shared between servers with the same settings."""

    def __init__(self) -> None:
        self.cache: dict[tuple[Settings, tuple[str, ...]], ServerContext] = {}

    def context(self, s: Settings, alpn: tuple[str, ...]) -> ServerContext:
        key = (s, alpn)
        ctx = self.cache.get(key)
        if ctx is None:
            ctx = self.cache[key] = make_context(s, alpn)
            dynamic = [(c, k) for c, k in s.certs if has_variables(c) or has_variables(k)]
            if dynamic:
                static = [p for p in s.certs if p not in dynamic]
                ctx.pyngx_dynamic = stream_tls._CertificateBySni(
                    functools.partial(make_context, s, alpn, certificates=False),
                    static,
                    dynamic,
                )
        return ctx


def _settings(sctx: Context) -> tuple[Settings | None, str, bool]:
    """(settings or None without certificates, verify, reject), with nginx's checks."""
    certs: list[str] = sctx.get("ssl_certificate", [])
    keys: list[str] = sctx.get("ssl_certificate_key", [])
    verify: str = sctx.get("ssl_verify_client", "off")
    reject = bool(sctx.get("ssl_reject_handshake", False))
    if certs:
        if len(keys) < len(certs):
            raise ConfigError(f'no "ssl_certificate_key" is defined for certificate "{certs[-1]}"')
    elif not reject:
        return None, verify, reject
    client_ca = sctx.get("ssl_client_certificate", None)
    if verify != "off" and client_ca is None and verify != "optional_no_ca":
        raise ConfigError("no ssl_client_certificate for ssl_verify_client")
    if sctx.get("ssl_ocsp", "off") != "off" and verify == "optional_no_ca":
        raise ConfigError('"ssl_ocsp" is incompatible with "ssl_verify_client optional_no_ca"')
    settings = Settings(
        certs=tuple(zip(certs, keys, strict=False)),
        passwords=sctx.get("ssl_password_file", ()),
        protocols=sctx.get("ssl_protocols", DEFAULT_PROTOCOLS),
        ciphers=sctx.get("ssl_ciphers", DEFAULT_CIPHERS),
        prefer_server_ciphers=bool(sctx.get("ssl_prefer_server_ciphers", False)),
        tickets=bool(sctx.get("ssl_session_tickets", True)),
        dhparam=sctx.get("ssl_dhparam", None),
        ecdh_curve=sctx.get("ssl_ecdh_curve", "auto"),
        verify=verify,
        verify_depth=int(sctx.get("ssl_verify_depth", 1)),
        client_certificate=client_ca,
        trusted_certificate=sctx.get("ssl_trusted_certificate", None),
        crl=sctx.get("ssl_crl", None),
    )
    return settings, verify, reject


@functools.cache
def h2_available() -> bool:
    """Whether pyngx speaks HTTP/2 (pyngx.http.h2 with its `upgrade(conn)`): only then is
    `h2` offered by ALPN."""
    try:
        module = importlib.import_module("pyngx.http.h2")
    except ImportError:
        return False
    return callable(getattr(module, "upgrade", None))


def finish(http: Context, conf: Any) -> None:
    """Build every server's TLS side, then check the ssl ports (ngx_http_ssl_init)."""
    builder = _Builder()
    for server in conf.servers:
        sctx = server.ctx
        settings, verify, reject = _settings(sctx)
        h2 = h2_available() and bool(sctx.get("h2_enable", False))
        tls = ServerTls(verify, reject, h2, settings)
        if settings is not None:
            # Loaded for every server that has certificates, as nginx loads them, so that a
            # broken file fails the configuration even off ssl ports.
            tls.contexts[False] = builder.context(settings, ALPN_HTTP1)
        server.ssl = tls
    for port in conf.ports:
        if not port.listens[0].ssl:
            continue
        default = port.default
        dtls: ServerTls = default.ssl
        if dtls.settings is None or (not dtls.settings.certs and not dtls.reject):
            raise ConfigError(
                f'no "ssl_certificate" is defined for the "listen ... ssl" directive in '
                f"{default.where}"
            )
        if not dtls.settings.certs:
            # A default server that rejects handshakes: every other one needs certificates.
            for server in port.servers:
                stls: ServerTls = server.ssl
                if stls.settings is None:
                    raise ConfigError(
                        f'no "ssl_certificate" is defined for the "listen ... ssl" directive '
                        f"in {server.where}"
                    )
        for server in port.servers:
            stls = server.ssl
            offer_h2 = h2_available() and (port.http2 or stls.h2)
            owner: ServerTls = stls if stls.settings is not None else dtls
            assert owner.settings is not None
            if offer_h2 not in owner.contexts:
                owner.contexts[offer_h2] = builder.context(
                    owner.settings, ALPN_H2 if offer_h2 else ALPN_HTTP1
                )


# -- server names --------------------------------------------------------------------------


def validate_host(name: str) -> str | None:
    """ngx_http_validate_host for an SNI name: lower case, no port, no trailing dot."""
    host = name.lower()
    if not host.startswith("["):
        host = host.split(":", 1)[0]
    if "/" in host or "\\" in host or "\x00" in host or ".." in host:
        return None
    if host.endswith("."):
        host = host[:-1]
    return host or None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern[1:])
    except re.error:
        return None


def _named(server: Any, host: str) -> bool:
    """Whether one of the server's names matches `host` (for the default server only: the
    port's lookup answers it both for a match and for no match)."""
    for name in server.names:
        if not name:
            continue
        if name.startswith("~"):
            rx = _regex(name)
            if rx is not None and rx.search(host):
                return True
        elif name.startswith("*."):
            if host.endswith(name[1:]):
                return True
        elif name.startswith("."):
            if host == name[1:] or host.endswith(name):
                return True
        elif name.endswith(".*"):
            if host.startswith(name[:-1]):
                return True
        elif name == host:
            return True
    return False


def sni_server(port: Any, name: str | None) -> tuple[Any, str | None]:
    """The server the SNI name selects and the validated name, or (None, None) when no
    server has that name (nginx then keeps the default server and remembers no name)."""
    if not name:
        return None, None
    host = validate_host(name)
    if host is None:
        return None, None
    server, _match = port.names.find(host)
    if server is port.default and not _named(server, host):
        return None, None
    return server, host


# -- reading the ClientHello ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """What the server selection needs from a ClientHello."""

    server_name: str | None
    alpn: tuple[str, ...]
    cipher_suites: bytes  # the raw list (two bytes each), decoded only for $ssl_ciphers


class Unreadable(Exception):
    """Not a ClientHello this reader takes: OpenSSL gets it as it is (and says what is wrong)."""


def scan_hello(buf: bytes, limit: int = HELLO_LIMIT) -> Hello | None:
    """The ClientHello at the start of `buf` (TLS records of type handshake), or None while it
    is incomplete. Only what selecting the server needs is read, with slices and no per-item
    calls (this runs for every TLS connection); any inconsistency raises Unreadable."""
    size = len(buf)
    # Records: usually one; join the fragments until the handshake message is whole.
    fragments = []
    have = 0
    need = -1
    pos = 0
    while True:
        if size - pos < 5:
            return None
        if buf[pos] != 0x16 or buf[pos + 1] != 3:
            raise Unreadable("not a handshake record")
        end = pos + 5 + (buf[pos + 3] << 8 | buf[pos + 4])
        if end > limit:
            raise Unreadable("too large")
        if end > size:
            return None
        fragments.append(buf[pos + 5 : end])
        have += end - pos - 5
        pos = end
        if need < 0 and have >= 4:
            hs = fragments[0] if len(fragments) == 1 else b"".join(fragments)
            if hs[0] != 1:
                raise Unreadable("not a ClientHello")
            need = 4 + (hs[1] << 16 | hs[2] << 8 | hs[3])
            if need + 5 > limit:
                raise Unreadable("too large")
        if need >= 0 and have >= need:
            break
    hs = fragments[0] if len(fragments) == 1 else b"".join(fragments)
    hs = hs[:need]
    try:
        p = 4 + 2 + 32
        p += 1 + hs[p]  # session_id
        n = hs[p] << 8 | hs[p + 1]
        suites = hs[p + 2 : p + 2 + n]
        p += 2 + n
        p += 1 + hs[p]  # compression methods
        if p == need:
            return Hello(None, (), suites)  # no extensions
        ext_end = p + 2 + (hs[p] << 8 | hs[p + 1])
        p += 2
        if ext_end != need or len(suites) != n:
            raise Unreadable("lengths disagree")
        name: str | None = None
        alpn: tuple[str, ...] = ()
        while p < ext_end:
            etype = hs[p] << 8 | hs[p + 1]
            elen = hs[p + 2] << 8 | hs[p + 3]
            p += 4
            if etype == 0:  # server_name: the first host_name
                if hs[p + 2] == 0:
                    nlen = hs[p + 3] << 8 | hs[p + 4]
                    name = hs[p + 5 : p + 5 + nlen].decode("ascii")
            elif etype == 16:  # application_layer_protocol_negotiation
                q, q_end = p + 2, p + 2 + (hs[p] << 8 | hs[p + 1])
                names = []
                while q < q_end:
                    plen = hs[q]
                    names.append(hs[q + 1 : q + 1 + plen].decode("latin-1"))
                    q += 1 + plen
                alpn = tuple(names)
            p += elen
        if p != ext_end:
            raise Unreadable("extensions overrun")
    except (IndexError, UnicodeDecodeError):
        raise Unreadable("truncated field") from None
    return Hello(name, alpn, suites)


# -- the connection's start ----------------------------------------------------------------

_PP, _DETECT, _HELLO, _HANDSHAKE, _DONE = range(5)


def start_preface(conn: Any) -> None:
    """Called from HttpConnection.connection_made on ssl / proxy_protocol ports."""
    if conn.is_ssl:
        return  # a listener that does TLS itself (HttpPort.ssl set): nothing left to do here
    Preface(conn)


class Preface(asyncio.Protocol):
    """The transport's protocol from the accept until the first request can be read."""

    __slots__ = (
        "conn",
        "transport",
        "loop",
        "stage",
        "buf",
        "timer",
        "deadline",
        "lost",
        "ssl_port",
        "decided",
        "alert",
        "server",
        "host",
        "hello",
        "stepper",
        "h2",
        "gone",
    )

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.transport = conn.transport
        self.loop = conn.loop
        port = conn.port
        self.ssl_port: bool = port.listens[0].ssl
        self.stage = _PP if port.proxy_protocol else _DETECT
        self.buf = b""
        self.lost = False
        self.decided = False
        self.alert: int | None = None
        self.server: Any = None
        self.host: str | None = None
        self.hello: Hello | None = None
        self.stepper: Stepper | None = None
        self.h2 = False
        self.gone = False
        # client_header_timeout counts from the accept (conn armed it): one deadline for the
        # PROXY header, the handshake and the request head.
        self.deadline: float = conn.deadline
        conn._cancel_timer()
        self.timer: asyncio.TimerHandle | None = self.loop.call_at(self.deadline, self._timed_out)
        self.transport.set_protocol(self)

    # -- asyncio callbacks -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        stage = self.stage
        if stage == _HANDSHAKE:
            # Application bytes the SSL protocol delivered before the handshake's end reached
            # us: they go to the connection with the transport.
            self.buf += data
            return
        if stage == _DONE:
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if stage == _PP:
            self._proxy_header(data)
        elif stage == _DETECT:
            self._detect(data)
        else:
            self._hello(data)

    def eof_received(self) -> bool | None:
        stage = self.stage
        if stage == _PP:
            if self.ssl_port:
                # nginx reads the header from a peek that returned nothing.
                self._log(ERROR, 'broken header: "" while reading PROXY protocol')
            else:
                self._log(INFO, "client closed connection while reading PROXY protocol")
        elif stage == _DETECT:
            self._log(INFO, "client closed connection while SSL handshaking")
        elif stage == _HELLO:
            self._log(INFO, "peer closed connection in SSL handshake while SSL handshaking")
        if stage != _HANDSHAKE:
            self.stage = _DONE
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self.stage == _HANDSHAKE and self.stepper is not None:
            return  # the handshake's end comes next and finishes the connection
        self.stage = _DONE
        self._lost(exc)

    # -- stages ----------------------------------------------------------------------------

    def _proxy_header(self, data: bytes) -> None:
        try:
            parsed = pp.parse(data)
        except pp.ProxyProtocolError:
            parsed = None
        if parsed is None:
            # nginx reads the header from the first bytes: incomplete there is broken.
            self._log(
                ERROR,
                f"{_broken_header_message(bytearray(data))} while reading PROXY protocol",
            )
            self._close()
            return
        header, used = parsed
        if header.command == pp.Command.PROXY and header.family in (
            pp.Family.INET,
            pp.Family.INET6,
        ):
            self.conn.pp = header
        rest = data[used:]
        if not self.ssl_port:
            self._plain(rest)
            return
        self.stage = _DETECT
        if rest:
            self._detect(rest)

    def _detect(self, data: bytes) -> None:
        first = data[0]
        if first == 0x16 or first & 0x80:
            self.stage = _HELLO
            self._hello(data)
        else:
            self._plain(data)

    def _hello(self, data: bytes) -> None:
        hello: Hello | None = None
        if data[0] == 0x16:
            try:
                hello = scan_hello(data)
            except Unreadable:
                self._start_tls(data, None)  # OpenSSL decides, and says why
                return
            if hello is None:
                self.buf = data  # more to come
                return
        # (SSLv2 framing, first byte with the high bit set: OpenSSL's to judge as well.)
        self._start_tls(data, hello)

    def _plain(self, data: bytes) -> None:
        """Plain HTTP (on an ssl port: answered with 497 once the request is read)."""
        self.stage = _DONE
        self._cancel_timer()
        conn = self.conn
        self.transport.set_protocol(conn)
        conn._arm("header", max(self.deadline - self.loop.time(), 0.0))
        if data:
            conn.data_received(data)

    # -- TLS -------------------------------------------------------------------------------

    def _choose(self, hello: Hello | None) -> ServerContext:
        """The server the ClientHello's SNI names, and the context to start with."""
        conn = self.conn
        port = conn.port
        default = port.default
        if hello is not None:
            self.decided = True
            self.hello = hello
            server, host = sni_server(port, hello.server_name)
            self.server, self.host = server, host
            chosen = server if server is not None else default
        else:
            chosen = default
        tls: ServerTls = chosen.ssl
        h2 = h2_available() and (port.http2 or tls.h2)
        self.h2 = h2
        if hello is None:
            pass  # OpenSSL reads it; the SNI callback decides, if it gets that far (on_sni)
        elif tls.reject:
            self.alert = ALERT_UNRECOGNIZED_NAME
        elif hello.alpn and not set(hello.alpn) & set(ALPN_H2 if h2 else ALPN_HTTP1):
            # nginx (since 1.21.4) refuses a client whose protocols it does not speak.
            self.alert = ALERT_NO_APPLICATION_PROTOCOL
        ctx = tls.context(h2)
        if ctx is None:
            ctx = default.ssl.context(h2)
        assert ctx is not None
        return ctx

    def on_sni(self, obj: Any, name: str | None) -> int | None:
        """From the SNI callback, during the handshake."""
        if self.decided:
            return None
        # The ClientHello was not ours to read: nginx's servername callback, by the name.
        port = self.conn.port
        server, host = sni_server(port, name)
        chosen = server if server is not None else port.default
        tls: ServerTls = chosen.ssl
        if tls.reject:
            self.alert = ALERT_UNRECOGNIZED_NAME
            return self.alert
        if server is not None:
            self.server, self.host = server, host
            ctx = tls.context(self.h2)
            if ctx is not None and ctx is not obj.context:
                obj.context = ctx
        return None

    def _start_tls(self, data: bytes, hello: Hello | None) -> None:
        ctx = self._choose(hello)
        self._cancel_timer()
        if self.alert is not None:
            # Refused from the ClientHello alone: the fatal alert OpenSSL would send (its own
            # would be lost, as asyncio drops a failed handshake's output), then close.
            self.stage = _DONE
            self.transport.write(_ALERT_RECORD + bytes((self.alert,)))
            self._log_failure(None)
            self.transport.close()
            return
        self.stage = _HANDSHAKE
        loop = self.loop
        timeout = max(self.deadline - loop.time(), 0.001)
        coro = loop.start_tls(
            self.transport, self, ctx, server_side=True, ssl_handshake_timeout=timeout
        )
        self.stepper = Stepper(coro, self._handshake_done)
        if self.stage == _HANDSHAKE:
            # start_tls put its SSL protocol on the transport and starts it in the next turn
            # of the loop; the bytes read so far go to it right after.
            loop.call_soon(self._feed, self.transport.get_protocol(), data)

    def _feed(self, protocol: Any, data: bytes) -> None:
        if self.stage != _HANDSHAKE:
            return
        _FEEDING[0] = self
        try:
            feed_tls(protocol, data)
        finally:
            _FEEDING[0] = None

    def _handshake_done(self, transport: Any, exc: BaseException | None) -> None:
        self.stepper = None
        conn = self.conn
        obj = transport.get_extra_info("ssl_object") if transport is not None else None
        if (
            obj is None
            or self.stage != _HANDSHAKE
            or self.lost
            or self.gone
            or transport.is_closing()
        ):
            # Failed, or closed under us (a graceful shutdown closing idle connections).
            if self.stage == _HANDSHAKE and not self.lost and exc is not None:
                self._log_failure(exc)
            self.stage = _DONE
            if transport is not None:
                transport.abort()
            self.transport.abort()
            self._lost(exc if isinstance(exc, Exception) else None)
            return
        self.stage = _DONE
        # What requests read later.
        obj.pyngx_server = self.server
        obj.pyngx_host = self.host
        obj.pyngx_ciphers = self.hello.cipher_suites if self.hello is not None else b""
        conn.transport = transport
        conn.is_ssl = True
        transport.set_protocol(conn)
        conn._arm("header", max(self.deadline - self.loop.time(), 0.0))
        if obj.selected_alpn_protocol() == "h2":
            _h2_upgrade(conn)
        held, self.buf = self.buf, b""
        if held:
            transport.get_protocol().data_received(held)

    def _log_failure(self, exc: BaseException | None) -> None:
        if isinstance(exc, asyncio.CancelledError):
            return
        if self.alert == ALERT_UNRECOGNIZED_NAME:
            level, text = INFO, "handshake rejected"
        elif self.alert == ALERT_NO_APPLICATION_PROTOCOL:
            level, text = (
                INFO,
                "SSL_do_handshake() failed "
                "(SSL: error:0A0000EB:SSL routines::no application protocol)",
            )
        elif exc is not None:
            level, text = handshake_failure(exc)
        else:
            return
        self._log(level, f"{text} while SSL handshaking")

    # -- ending ----------------------------------------------------------------------------

    def _timed_out(self) -> None:
        self.timer = None
        if self.stage in (_HANDSHAKE, _DONE):
            return
        action = "reading PROXY protocol" if self.stage == _PP else "SSL handshaking"
        self._log(INFO, f"client timed out ({_ETIMEDOUT}) while {action}")
        self._close()

    def _close(self) -> None:
        self.stage = _DONE
        self._cancel_timer()
        self.transport.close()

    def _cancel_timer(self) -> None:
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None

    def _lost(self, exc: Exception | None) -> None:
        """The connection is over before its first request: the HttpConnection ends too."""
        if self.lost:
            return
        self.lost = True
        self._cancel_timer()
        self.conn.connection_lost(exc)

    def _log(self, level: int, message: str) -> None:
        self.conn.worker_log(level, message)


def _h2_upgrade(conn: Any) -> None:
    """HTTP/2 was negotiated: pyngx.http.h2 takes the connection over (its `upgrade(conn)`
    swaps the TLS transport's protocol; bytes already received follow to whatever protocol
    the transport has when it returns)."""
    try:
        from pyngx.http import h2  # type: ignore[attr-defined]
    except ImportError:
        return
    upgrade = getattr(h2, "upgrade", None)
    if upgrade is not None:
        upgrade(conn)


def alpn_protocol(conn: Any) -> str | None:
    """The protocol ALPN chose for a TLS connection (None: plain, or no ALPN)."""
    if not conn.is_ssl:
        return None
    obj = conn.transport.get_extra_info("ssl_object")
    return None if obj is None else obj.selected_alpn_protocol()


# -- requests ------------------------------------------------------------------------------


def post_read(r: Any) -> int | None:
    """nginx's TLS checks between reading the request head and the phases."""
    conn = r.conn
    if not conn.port.listens[0].ssl:
        return None
    if not conn.is_ssl:
        r.log(
            INFO,
            "client sent plain HTTP request to HTTPS port while reading client request headers",
        )
        return 497
    obj = conn.transport.get_extra_info("ssl_object")
    tls: ServerTls | None = r.srv.ssl
    verify = tls.verify if tls is not None else "off"
    host = getattr(obj, "pyngx_host", None)
    if host is not None and r.host != host and verify != "off":
        # The request stays with the server the handshake was made for (nginx has not
        # switched yet): its error pages and logs.
        sni_srv = obj.pyngx_server
        r.srv = sni_srv
        r.loc = sni_srv.conf
        r.log(
            INFO,
            "client attempted to request the server name different from the one that was "
            "negotiated while reading client request headers",
        )
        return 421
    if verify != "off":
        rc = LIBSSL.verify_result(obj)
        if rc and (verify != "optional_no_ca" or rc not in _OPTIONAL_ERRORS):
            r.log(
                INFO,
                f"client SSL certificate verify error: ({rc}:{LIBSSL.verify_error(rc)}) "
                "while reading client request headers",
            )
            return 495
        if verify == "on" and not obj.getpeercert(True):
            r.log(
                INFO,
                "client sent no required SSL certificate while reading client request headers",
            )
            return 496
    return None


# A port without `ssl` has nothing to check (proxy_lane.py leaves the call out).
post_read.applies = lambda port, srv: bool(port.listens[0].ssl)  # type: ignore[attr-defined]


# -- variables -----------------------------------------------------------------------------


def _obj(r: Any) -> Any:
    conn = r.conn
    return conn.transport.get_extra_info("ssl_object") if conn.is_ssl else None


def _tls_var(fn: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def getter(r: Any) -> str | None:
        obj = _obj(r)
        return None if obj is None else fn(obj)

    return getter


def _cipher(obj: Any) -> str | None:
    c = obj.cipher()
    return c[0] if c else None


@functools.cache
def _cipher_names() -> dict[int, str]:
    """OpenSSL's name of every cipher suite it knows, by its two-byte id."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    names: dict[int, str] = {}
    for spec in ("ALL:COMPLEMENTOFALL:@SECLEVEL=0", "DEFAULT"):
        try:
            ctx.set_ciphers(spec)
        except ssl.SSLError:
            continue
        for c in ctx.get_ciphers():
            names.setdefault(c["id"] & 0xFFFF, c["name"])
    # Signalling values OpenSSL keeps in the client's list too (no context enables them).
    names[0x00FF] = "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
    names[0x5600] = "TLS_FALLBACK_SCSV"
    return names


def _ciphers(obj: Any) -> str | None:
    """$ssl_ciphers: the client's cipher suites that OpenSSL knows, by name."""
    raw: bytes = getattr(obj, "pyngx_ciphers", b"")
    if not raw:
        return None
    names = _cipher_names()
    ids = (raw[i] << 8 | raw[i + 1] for i in range(0, len(raw) - 1, 2))
    return ":".join(names[i] for i in ids if i in names) or None


def _server_name(obj: Any) -> str | None:
    return getattr(obj, "pyngx_sni", None) or None


def _session_id(obj: Any) -> str | None:
    session = obj.session
    return session.id.hex() if session is not None and session.id else None


def _client_verify(obj: Any) -> str:
    rc = LIBSSL.verify_result(obj)
    if rc:
        return f"FAILED:{LIBSSL.verify_error(rc)}"
    return "SUCCESS" if obj.getpeercert(True) else "NONE"


def _dn(which: str, legacy: bool) -> Callable[[Any], str | None]:
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "stateOrProvinceName": "ST",
        "localityName": "L",
        "emailAddress": "emailAddress",
        "domainComponent": "DC",
    }

    def getter(obj: Any) -> str | None:
        cert = obj.getpeercert()
        if not cert:
            return None
        rdns = cert.get(which, ())
        if legacy:
            return "".join("/" + "+".join(f"{short.get(k, k)}={v}" for k, v in rdn) for rdn in rdns)
        return ",".join(
            "+".join(f"{short.get(k, k)}={v}" for k, v in rdn) for rdn in reversed(rdns)
        )

    return getter


def _raw_cert(obj: Any) -> str | None:
    der = obj.getpeercert(True)
    return ssl.DER_cert_to_PEM_cert(der) if der else None


def _cert(obj: Any) -> str | None:
    raw = _raw_cert(obj)
    return None if raw is None else raw[:-1].replace("\n", "\n\t")


def _escaped_cert(obj: Any) -> str | None:
    raw = _raw_cert(obj)
    return None if raw is None else quote(raw, safe="")


def _fingerprint(obj: Any) -> str | None:
    der = obj.getpeercert(True)
    return hashlib.sha1(der).hexdigest() if der else None


def _cert_field(name: str) -> Callable[[Any], str | None]:
    def getter(obj: Any) -> str | None:
        cert = obj.getpeercert()
        value = cert.get(name) if cert else None
        return str(value) if value is not None else None

    return getter


def _v_remain(obj: Any) -> str | None:
    cert = obj.getpeercert()
    if not cert or "notAfter" not in cert:
        return None
    days = int((ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) / 86400)
    return str(max(days, 0))


_TLV_NAMES = {"alpn": 0x01, "authority": 0x02, "unique_id": 0x05, "ssl": 0x20, "netns": 0x30}
_SSL_TLV_NAMES = {"version": 0x21, "cn": 0x22, "cipher": 0x23, "sig_alg": 0x24, "key_alg": 0x25}


def _tlv_type(name: str, names: dict[str, int]) -> int | None:
    if name in names:
        return names[name]
    if name.startswith("0x"):
        try:
            return int(name[2:], 16)
        except ValueError:
            return None
    return None


def _proxy_protocol_tlv(name: str) -> Callable[[Any], str | None]:
    """$proxy_protocol_tlv_NAME: a TLV of the PROXY v2 header, by name or 0xNN; `ssl_NAME`
    and `ssl_verify` look into the SSL TLV."""
    name = name.lower()
    ssl_sub = name.startswith("ssl_")
    verify = name == "ssl_verify"
    type_ = _tlv_type(name[4:], _SSL_TLV_NAMES) if ssl_sub else _tlv_type(name, _TLV_NAMES)

    def getter(r: Any) -> str | None:
        header = r.conn.pp
        if header is None:
            return None
        if not ssl_sub:
            if type_ is None:
                return None
            value = header.tlv(type_)
            return None if value is None else bytes(value).decode("latin-1")
        raw = header.tlv(pp.PP2_TYPE_SSL)
        if raw is None:
            return None
        try:
            _client, verify_result, subs = pp.parse_ssl_tlv(raw)
        except pp.ProxyProtocolError:
            return None
        if verify:
            return str(verify_result)
        for sub_type, value in subs:
            if sub_type == type_:
                return bytes(value).decode("latin-1")
        return None

    return getter


def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
    add = table.add
    add("ssl_protocol", _tls_var(lambda o: o.version()))
    add("ssl_cipher", _tls_var(_cipher))
    add("ssl_ciphers", _tls_var(_ciphers))
    add("ssl_server_name", _tls_var(_server_name))
    add("ssl_alpn_protocol", _tls_var(lambda o: o.selected_alpn_protocol() or None))
    add("ssl_session_reused", _tls_var(lambda o: "r" if o.session_reused else "."))
    add("ssl_session_id", _tls_var(_session_id))
    add("ssl_early_data", _tls_var(lambda o: None))
    add("ssl_client_verify", _tls_var(_client_verify))
    add("ssl_client_s_dn", _tls_var(_dn("subject", False)))
    add("ssl_client_i_dn", _tls_var(_dn("issuer", False)))
    add("ssl_client_s_dn_legacy", _tls_var(_dn("subject", True)))
    add("ssl_client_i_dn_legacy", _tls_var(_dn("issuer", True)))
    add("ssl_client_serial", _tls_var(_cert_field("serialNumber")))
    add("ssl_client_fingerprint", _tls_var(_fingerprint))
    add("ssl_client_raw_cert", _tls_var(_raw_cert))
    add("ssl_client_cert", _tls_var(_cert))
    add("ssl_client_escaped_cert", _tls_var(_escaped_cert))
    add("ssl_client_v_start", _tls_var(_cert_field("notBefore")))
    add("ssl_client_v_end", _tls_var(_cert_field("notAfter")))
    add("ssl_client_v_remain", _tls_var(_v_remain))
    add("https", lambda r: "on" if r.conn.is_ssl else "")
    add("scheme", lambda r: "https" if r.conn.is_ssl else "http")
    table.prefixes["proxy_protocol_tlv_"] = _proxy_protocol_tlv
    return []


__all__ = [
    "ALPN_H2",
    "ALPN_HTTP1",
    "Preface",
    "ServerContext",
    "ServerTls",
    "Settings",
    "alpn_protocol",
    "declare",
    "finish",
    "handshake_failure",
    "make_context",
    "openssl_error_text",
    "post_read",
    "register",
    "sni_server",
    "start_preface",
    "validate_host",
]
