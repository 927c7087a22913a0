"""The `proxy_cache_path redis://host:port/db keys_zone=name:size` extension: entries kept in
Redis, so that several pyngx instances share their hits.

An entry is one Redis string, `pyngx:cache:<zone>:<md5 hex>`, holding exactly what the file
store would write (nginx's binary header, "\\nKEY: ...\\n", the response head, the body), with
a time to live of `inactive`, renewed when the entry is read from Redis (nginx's inactive
removal; max_size/min_free are Redis's `maxmemory` business). The keys zone stays local to
each instance (uses, proxy_cache_min_uses, the cache lock, updating flags) and every worker
keeps its HotCache of small entries, so a hit on a hot key costs no round trip; a key an
instance has not seen, or whose copy it lacks, is looked up in Redis before the upstream
(the zone is always "cold" for a shared store). A worker's copy is used until it expires or
the worker stores a newer one: across instances, a newer entry is seen once the local copy
expires (each instance's own hits stay consistent with what it stored).

The client is a minimal RESP2 one over asyncio (GET, SET ... PX, PEXPIRE, SELECT), one
connection per worker, commands serialized on it. Any Redis failure reads as a miss (logged
once a second); writes are fire-and-forget tasks. Entries larger than `max_entry` are not
stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pyngx.core.log import ERROR
from pyngx.http.cache import store

MAX_ENTRY = 8 * 1024 * 1024
TIMEOUT = 1.0


class RespError(Exception):
    """A `-ERR ...` reply, or a broken connection."""


def encode(*args: bytes | str | int) -> bytes:
    """A RESP2 command: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = str(arg).encode()
        else:
            data = arg
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader) -> Any:
    """One RESP2 reply: str (simple), int, bytes | None (bulk), list; raises RespError."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise RespError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("latin-1")
    if kind == b"-":
        raise RespError(rest.decode("latin-1"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = await reader.readexactly(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [await read_reply(reader) for _ in range(n)]
    raise RespError(f"bad reply {line[:32]!r}")


class RedisClient:
    """One connection, opened on first use and again after a failure."""

    def __init__(self, host: str, port: int, db: int = 0, timeout: float = TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock: asyncio.Lock | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        if self.db:
            self._writer.write(encode("SELECT", self.db))
            await read_reply(self._reader)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def pipeline(self, *commands: tuple[bytes | str | int, ...]) -> list[Any]:
        """Send the commands in one write and read their replies (errors as RespError
        objects in the list)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                return await asyncio.wait_for(self._exchange(commands), self.timeout)
            except (OSError, EOFError, RespError, TimeoutError, ValueError) as exc:
                self.close()
                raise RespError(str(exc) or type(exc).__name__) from None

    async def _exchange(self, commands: tuple[tuple[bytes | str | int, ...], ...]) -> list[Any]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(encode(*c) for c in commands))
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(await read_reply(self._reader))
            except RespError as exc:
                if str(exc) == "connection closed":
                    raise
                out.append(exc)
        return out

    async def command(self, *args: bytes | str | int) -> Any:
        reply = (await self.pipeline(args))[0]
        if isinstance(reply, RespError):
            raise reply
        return reply


class RedisStore:
    """A zone's entries in Redis (see the module docstring)."""

    def __init__(
        self,
        zone: str,
        host: str,
        port: int,
        db: int,
        inactive: int = 600,
        log: Callable[[int, str], None] | None = None,
        *,
        max_entry: int = MAX_ENTRY,
    ) -> None:
        self.client = RedisClient(host, port, db)
        self.inactive_ms = max(1, inactive) * 1000
        self.prefix = f"pyngx:cache:{zone}:"
        self.url = f"redis://{host}:{port}/{db}"
        self.log = log
        self.max_entry = max_entry
        self._failed_at = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    def _name(self, digest: bytes) -> str:
        return self.prefix + digest.hex()

    def _failed(self, what: str, exc: Exception) -> None:
        now = int(time.time())
        if self.log is not None and now != self._failed_at:
            self._failed_at = now
            self.log(ERROR, f'cache store "{self.url}" {what} failed: {exc}')

    async def fetch(self, path: str, key: bytes, digest: bytes) -> store.Entry:
        """The entry of `key`, or ReadError (missing when absent or Redis fails)."""
        name = self._name(digest)
        try:
            replies = await self.client.pipeline(
                ("GET", name), ("PEXPIRE", name, self.inactive_ms)
            )
        except RespError as exc:
            self._failed("read", exc)
            raise store.ReadError("info", "", missing=True) from None
        data = replies[0]
        if not isinstance(data, bytes):
            raise store.ReadError("info", "", missing=True)
        entry = store.parse_entry(data, len(data), key, digest, path)
        entry.extra["head"] = data[entry.header.header_start : entry.header.body_start]
        return entry

    def publish(self, digest: bytes, data: bytes) -> None:
        """Store an entry's bytes (in the background)."""
        if len(data) > self.max_entry:
            return
        self._spawn(self._set(self._name(digest), data, self.inactive_ms))

    def update_header(self, digest: bytes, entry: store.Entry, header: store.FileHeader) -> bool:
        """A revalidated entry: the same bytes under a new header."""
        head = entry.extra.get("head")
        if entry.body is None or head is None:
            return False
        raw = b"".join((header.pack(), store.KEY_PREFIX, store.key_bytes(entry.key), b"\n"))
        self.publish(digest, raw + head + entry.body)
        return True

    async def _set(self, name: str, data: bytes, ttl_ms: int) -> None:
        try:
            await self.client.command("SET", name, data, "PX", ttl_ms)
        except RespError as exc:
            self._failed("write", exc)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


__all__ = ["RedisClient", "RedisStore", "RespError", "encode", "read_reply"]
