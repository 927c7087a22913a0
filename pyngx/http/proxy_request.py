"""A request to the upstream: the URI nginx sends, the head, the body, the content handler.

The URI (ngx_http_proxy_create_request):
- `proxy_pass` with variables and a URI part: that URI, as evaluated;
- no URI part and the request's URI untouched: the client's URI exactly as it sent it;
- otherwise the (normalised) $uri with the location's prefix replaced by the URI part (no
  replacement after `rewrite ... break`, nor in regex/named locations or `if` blocks),
  re-escaped when it was escaped or the request was redirected internally, plus `?args`.

The head is one pass over the location's header plan (pyngx/http/proxy.py) and the client's
headers, encoded once. The body: read whole first (proxy_request_buffering on, then sent with
its length, a chunked one too), or streamed as it comes (off; chunked on to an HTTP/1.1
upstream when the client sent it chunked). A body read once is kept on the request for
$request_body and for proxying it again (error_page, X-Accel-Redirect), as nginx does.
"""

from __future__ import annotations

import re
from typing import Any

from pyngx.core.log import ERROR
from pyngx.http import proxy_lane
from pyngx.http.proxy_conf import BODY_LENGTH, CHUNKED, VALUE, ProxyConf, Target
from pyngx.http.proxy_run import Exchange
from pyngx.http.request import DONE
from pyngx.http.upstream_groups import (
    Groups,
    HttpGroup,
    ProxyUrlError,
    literal_group,
    parse_proxy_url,
)

# -- the URI ----------------------------------------------------------------------------------

# NGX_ESCAPE_URI: " ", "#", "%", "?", controls and non-ASCII bytes.
_ESCAPE = re.compile(rb"[\x00-\x20#%?\x7f-\xff]")


def escape_uri(data: bytes) -> bytes:
    if _ESCAPE.search(data) is None:
        return data
    return _ESCAPE.sub(lambda m: b"%%%02X" % m.group()[0], data)


def _unparsed(r: Any) -> str:
    """nginx's r->unparsed_uri: the request target without an absolute-form's scheme://host."""
    target: str = r.request_uri
    if target[:1] != "/" and "://" in target[:10]:
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        q = rest.find("?")
        if slash < 0 or (0 <= q < slash):
            return "/" + rest[q:] if q >= 0 else "/"
        return rest[slash:]
    return target


def upstream_uri(r: Any, conf: ProxyConf, uri_part: str, from_variables: bool) -> str:
    """The request line's URI (ngx_http_proxy_create_request).

    Text as the request head was read (its characters are its bytes, latin-1); the parts nginx
    re-escapes are escaped from $uri's bytes (UTF-8), so the result is ASCII there.
    """
    if from_variables and uri_part:
        return uri_part
    if not uri_part and r.valid_unparsed_uri:
        return _unparsed(r)
    valid_location = r.valid_location
    loc_len = len(conf.location) if (valid_location and uri_part) else 0
    rest = r.uri[loc_len:]
    if r.internal or "%" in _unparsed(r).partition("?")[0]:
        rest = escape_uri(rest.encode("utf-8", "surrogateescape")).decode("ascii")
    out = uri_part + rest if valid_location and uri_part else rest
    if r.args:
        return f"{out}?{r.args}"
    return out


# -- the content handler ---------------------------------------------------------------------


def handler(r: Any) -> int | None:
    """The location's content handler (ngx_http_proxy_handler)."""
    conf: ProxyConf = r.loc.proxy
    target = conf.target
    framing = r.framing
    if (
        target is not None
        and not target.uri
        and r.valid_unparsed_uri
        and conf.method is None
        and conf.body is None
        and framing is not None
        and framing.content_length is None
        and not framing.chunked
        and r.loc.cache is None
    ):
        # The common case, as the general path below does it: no body, the client's URI
        # as it sent it (origin-form; the absolute form goes the long way).
        uri = r.request_uri
        if uri[:1] == "/":
            ex = Exchange(r, conf, target, uri)
            r.upstream = ex
            method = r.method
            # build_head's cache probe, for a request without a body or a cache lookup.
            hl = r.header_list
            hit = _HEADS.get((method, uri, id(conf), id(hl))) if r.extra is None else None
            if hit is not None and hit[0] is hl and hit[1] is conf:
                ex.head_bytes = hit[2]
            else:
                ex.head_bytes = build_head(r, conf, method, uri)
            record = r.record
            if record is not None and record.replay is None:
                proxy_lane.install(r, conf, target, build_head, ex.head_bytes)
            ex.start()
            return DONE
    from_variables = False
    if target is None:
        target = _eval_target(r, conf)
        if isinstance(target, int):
            return target
        from_variables = True
    uri = upstream_uri(r, conf, target.uri, from_variables)
    if not uri:
        r.log(ERROR, "zero length URI to proxy")
        return 500
    method = conf.method(r) if conf.method is not None else r.method
    ex = Exchange(r, conf, target, uri)
    ex.method = method
    r.upstream = ex
    if r.loc.cache is not None:
        from pyngx.http import proxy_cache

        return proxy_cache.start(r, ex, lambda: _go(r, conf, ex, uri))  # type: ignore[no-any-return]
    return _go(r, conf, ex, uri)


def _go(r: Any, conf: ProxyConf, ex: Exchange, uri: str) -> int | None:
    """The request goes upstream (after the cache, if any): the body, then the exchange."""
    method = ex.method
    framing = r.framing
    has_body = framing is not None and (framing.chunked or bool(framing.content_length))
    body_value = None
    if conf.body is not None:
        body_value = conf.body(r).encode("utf-8", "surrogateescape")
    streaming = (
        has_body
        and not conf.request_buffering
        and body_value is None
        and conf.pass_request_body
        and (not framing.chunked or conf.http11)
    )
    ex.streaming = streaming
    # $proxy_internal_body_length / $proxy_internal_chunked live in r.extra (made when needed).
    extra = r.extra
    if body_value is not None:
        ex.body = [body_value] if body_value else []
        extra = _extra(r)
        extra["proxy_body_length"] = len(body_value)
    elif conf.pass_request_body and has_body:
        ex.body = []
    if streaming and not framing.chunked:
        extra = _extra(r)
        extra["proxy_body_length"] = framing.content_length
    if not has_body:
        if body_value is None and framing is not None and framing.content_length == 0:
            _extra(r)["proxy_body_length"] = 0
        ex.head_bytes = build_head(r, conf, method, uri)
        ex.start()
        return DONE
    extra = _extra(r)
    kept = extra.get("proxy_body")
    if kept is not None:
        # Proxied again (error_page, X-Accel-Redirect): nginx sends the body it read again.
        if ex.body is not None and body_value is None:
            ex.body = list(kept)
        if body_value is None:
            extra["proxy_body_length"] = sum(len(p) for p in kept)
        extra.pop("proxy_chunked", None)
        ex.head_bytes = build_head(r, conf, method, uri)
        ex.start()
        return DONE
    if streaming:
        ex.body_done = False
        r.conn.read_body(ex.body_piece, r.loc.client_max_body_size)
        if r.done:
            return DONE
        if framing.chunked:
            if ex.body_done:
                # All of it came with the head: nginx sends it with its length.
                extra["proxy_body_length"] = sum(len(p) for p in ex.body or ())
            else:
                extra["proxy_chunked"] = True
                ex.chunk_body = True
        ex.head_bytes = build_head(r, conf, method, uri)
        ex.start()
        return DONE
    # proxy_request_buffering on: the whole body first, then the upstream.
    ex.body_done = False
    reader = _BodyCollector(r, conf, ex, method, uri, body_value)
    r.conn.read_body(reader.piece, r.loc.client_max_body_size)
    return DONE


def _extra(r: Any) -> dict[str, Any]:
    extra = r.extra
    if extra is None:
        extra = r.extra = {}
    return extra  # type: ignore[no-any-return]


class _BodyCollector:
    """Reads the whole client body (proxy_request_buffering on), then starts the exchange."""

    __slots__ = ("r", "conf", "ex", "method", "uri", "size", "set_body", "pieces")

    def __init__(
        self,
        r: Any,
        conf: ProxyConf,
        ex: Exchange,
        method: str,
        uri: bytes,
        set_body: bytes | None,
    ) -> None:
        self.r = r
        self.conf = conf
        self.ex = ex
        self.method = method
        self.uri = uri
        self.size = 0
        self.set_body = set_body
        self.pieces: list[bytes] = []

    def piece(self, data: bytes | None) -> None:
        ex = self.ex
        if data is None:
            r = self.r
            if r.done:
                return
            pieces = self.pieces
            r.extra["proxy_body"] = pieces
            if self.size <= r.loc.client_body_buffer_size:
                r.body = b"".join(pieces)  # $request_body: nginx has it when in memory
            if self.set_body is None:
                # A chunked body was read whole: it goes on with its length.
                r.extra["proxy_body_length"] = self.size
            if ex.body is not None and self.set_body is None:
                ex.body = pieces
            ex.head_bytes = build_head(r, self.conf, self.method, self.uri)
            ex.body_done = True
            ex.start()
            return
        if not data:
            return
        self.size += len(data)
        self.pieces.append(data)


def _eval_target(r: Any, conf: ProxyConf) -> Target | int:
    """ngx_http_proxy_eval: a proxy_pass with variables, for this request."""
    assert conf.dynamic is not None
    text = conf.dynamic(r)
    try:
        url = parse_proxy_url(text)
    except ProxyUrlError as exc:
        msg = str(exc)
        if msg == "invalid URL prefix":
            r.log(ERROR, f'invalid URL prefix in "{text}"')
        else:
            r.log(ERROR, msg)
        return 500
    uri = url.uri
    if uri.startswith("?"):
        uri = "/" + uri
    groups = conf.groups
    group = groups.find(url.host, url.port, url.default_port) if not url.unix else None
    if group is None:
        cache = _runtime_groups(groups)
        key = (url.host.lower(), url.port if url.port is not None else url.default_port)
        group = cache.get(key)
        if group is None:
            group = literal_group(url)
            if group is None:
                r.log(ERROR, f"no resolver defined to resolve {url.host}")
                return 502
            if len(cache) < 1024:
                cache[key] = group
    return Target(
        url.schema, url.ssl, group, url.host_header, url.port_text, uri, url.unix, url.text
    )


def _runtime_groups(groups: Groups) -> dict[Any, HttpGroup]:
    cache: dict[Any, HttpGroup] | None = getattr(groups, "runtime", None)
    if cache is None:
        cache = {}
        groups.runtime = cache  # type: ignore[attr-defined]
    return cache


# Whole request heads, for a location whose header plan has no variables, by what they are
# made of: the method, the URI, and the client's header list, which is the same object for
# identical client heads (connection.py's head cache; treated as read-only everywhere).
# Entries hold the list and the conf, so the ids in a key stay theirs while it is cached.
HEAD_CACHE_ENTRIES = 256
_HEADS: dict[tuple[str, str, int, int], tuple[Any, ProxyConf, bytes]] = {}


def build_head(r: Any, conf: ProxyConf, method: str, uri: str, lk: Any = None) -> bytes:
    """The request head to the upstream, as one bytes object (one encode).

    With a cache lookup that may store the response (nginx's headers_cache), the client's
    conditional and Range headers stay behind and the revalidation headers go instead."""
    if lk is None:
        ex = getattr(r, "upstream", None)
        lk = ex.cache if ex is not None else None
    if lk is not None and lk.cacheable:
        return _build_head(r, conf, method, uri, lk)
    extra = r.extra
    if extra is None or ("proxy_body_length" not in extra and "proxy_chunked" not in extra):
        # No body length, no chunked: a plan without variables gives the same bytes.
        hl = r.header_list
        key = (method, uri, id(conf), id(hl))
        hit = _HEADS.get(key)
        if hit is not None and hit[0] is hl and hit[1] is conf:
            return hit[2]
        data = _build_head(r, conf, method, uri, None)
        if all(item[0] != VALUE for item in conf.plan):
            if len(_HEADS) >= HEAD_CACHE_ENTRIES:
                _HEADS.clear()
            _HEADS[key] = (hl, conf, data)
        return data
    return _build_head(r, conf, method, uri, None)


def _build_head(r: Any, conf: ProxyConf, method: str, uri: str, lk: Any = None) -> bytes:
    skip = conf.skip
    parts = [method, " ", uri, conf.version_text, conf.head_const]
    append = parts.append
    if conf.plan:
        extra = r.extra
        for kind, name, fn in conf.plan:
            if kind == VALUE:
                v = fn(r)
            elif kind == BODY_LENGTH:
                n = extra.get("proxy_body_length") if extra else None
                if n is None:
                    continue
                v = str(n)
            elif kind == CHUNKED:
                if not (extra and extra.get("proxy_chunked")):
                    continue
                v = "chunked"
            else:
                append(name)  # a constant line after variable ones
                continue
            if v:
                append(f"{name}: {v}\r\n")
    if lk is not None and lk.cacheable:
        from pyngx.http.cache import UNFORWARDED_HEADERS

        skip = skip | UNFORWARDED_HEADERS
        for name, value in lk.revalidation_headers():
            if name.lower() not in conf.skip:
                append(f"{name}: {value}\r\n")
    if conf.pass_request_headers:
        for name, value in r.header_list:
            if name.lower() not in skip:
                append(f"{name}: {value}\r\n")
    append("\r\n")
    text = "".join(parts)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


__all__ = ["build_head", "escape_uri", "handler", "upstream_uri"]
