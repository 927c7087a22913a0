"""The redis:// cache store extension: the RESP client, and two pyngx "instances" sharing
entries through a (fake, in-process) Redis server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pyngx.http import cache
from pyngx.http.cache import redis_store as rs
from pyngx.http.cache.zone import KeysZone
from tests.unit._http_cache_fakes import load, request, response, store_response


class FakeRedis:
    """Enough of Redis for the store: GET, SET [PX], PEXPIRE, SELECT, DEL, with TTLs."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, tuple[bytes, float | None]]] = {}
        self.commands: list[list[bytes]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        db = 0
        try:
            while True:
                args = await rs.read_reply(reader)
                if not isinstance(args, list):
                    break
                self.commands.append(args)
                name = args[0].upper()
                store = self.data.setdefault(db, {})
                if name == b"SELECT":
                    db = int(args[1])
                    writer.write(b"+OK\r\n")
                elif name == b"GET":
                    item = store.get(args[1])
                    if item is not None and item[1] is not None and item[1] < time.time():
                        del store[args[1]]
                        item = None
                    if item is None:
                        writer.write(b"$-1\r\n")
                    else:
                        writer.write(b"$%d\r\n%s\r\n" % (len(item[0]), item[0]))
                elif name == b"SET":
                    ttl = None
                    if len(args) >= 5 and args[3].upper() == b"PX":
                        ttl = time.time() + int(args[4]) / 1000
                    store[args[1]] = (args[2], ttl)
                    writer.write(b"+OK\r\n")
                elif name == b"PEXPIRE":
                    item = store.get(args[1])
                    if item is None:
                        writer.write(b":0\r\n")
                    else:
                        store[args[1]] = (item[0], time.time() + int(args[2]) / 1000)
                        writer.write(b":1\r\n")
                elif name == b"DEL":
                    writer.write(b":%d\r\n" % int(store.pop(args[1], None) is not None))
                else:
                    writer.write(b"-ERR unknown command\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, rs.RespError, ConnectionError):
            pass
        finally:
            writer.close()


def test_encode() -> None:
    assert rs.encode("GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert rs.encode("SET", "k", b"\r\n", "PX", 5) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\r\n\r\n$2\r\nPX\r\n$1\r\n5\r\n"
    )


def test_read_reply_kinds() -> None:
    async def parse(data: bytes) -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await rs.read_reply(reader)

    assert asyncio.run(parse(b"+OK\r\n")) == "OK"
    assert asyncio.run(parse(b":42\r\n")) == 42
    assert asyncio.run(parse(b"$3\r\na\r\n\r\n")) == b"a\r\n"
    assert asyncio.run(parse(b"$-1\r\n")) is None
    assert asyncio.run(parse(b"*2\r\n:1\r\n$1\r\nx\r\n")) == [1, b"x"]
    assert asyncio.run(parse(b"*-1\r\n")) is None
    with pytest.raises(rs.RespError, match="WRONGTYPE"):
        asyncio.run(parse(b"-WRONGTYPE bad\r\n"))
    with pytest.raises(rs.RespError):
        asyncio.run(parse(b""))


def test_client_roundtrip_select_and_errors() -> None:
    async def scenario() -> None:
        server = FakeRedis()
        await server.start()
        client = rs.RedisClient("127.0.0.1", server.port, db=3)
        assert await client.command("SET", "k", b"v") == "OK"
        assert await client.command("GET", "k") == b"v"
        assert server.data[3][b"k"][0] == b"v"
        with pytest.raises(rs.RespError, match="unknown"):
            await client.command("FLUSHALL")
        replies = await client.pipeline(("GET", "k"), ("GET", "nope"))
        assert replies == [b"v", None]
        await server.stop()
        client.close()
        with pytest.raises(rs.RespError):
            await client.command("GET", "k")  # nobody there any more

    asyncio.run(scenario())


HTTP = (
    "proxy_cache_path redis://127.0.0.1:PORT/0 keys_zone=r:1m inactive=60s;\n"
    "server { listen 127.0.0.1:1; location / { proxy_cache r; proxy_cache_valid 1m;"
    " proxy_cache_key $uri; } }"
)


def test_two_instances_share_entries(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = FakeRedis()
        await server.start()
        one = load(tmp_path / "one", HTTP.replace("PORT", str(server.port)))
        two = load(tmp_path / "two", HTTP.replace("PORT", str(server.port)))
        for cp in two.http.caches:  # type: ignore[union-attr]
            cp.index = KeysZone(cp.name, cp.size)  # another host: its own keys zone
        # instance one: a miss, stored (in Redis, in the background)
        r = request(one, "/shared")
        lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
        while lk.action == cache.WAIT:  # it asks Redis first
            await lk.wait()
        assert lk.status == "MISS"
        assert store_response(r, lk, headers=[("X-From", "one")], body=b"payload")
        for cp in one.http.caches:  # type: ignore[union-attr]
            await asyncio.gather(*cp.store.tasks)
        name = b"pyngx:cache:r:" + lk.digest.hex().encode()
        assert name in server.data[0]
        assert server.data[0][name][1] is not None  # with a time to live
        # instance one again: from its own memory, no round trip
        sent = len(server.commands)
        r = request(one, "/shared")
        assert cache.start_lookup(r, r.loc.cache).status == "HIT"  # type: ignore[attr-defined]
        assert len(server.commands) == sent
        # instance two: never saw it; Redis has it
        r = request(two, "/shared")
        lk = await cache.lookup(r, r.loc.cache)  # type: ignore[attr-defined]
        assert lk.status == "HIT"
        assert cache.serve_entry(r, lk.entry, lk) == -1
        status, headers, body, _ = response(r)
        assert (status, headers["x-from"], body) == (200, "one", b"payload")
        sent = len(server.commands)
        r = request(two, "/shared")
        assert cache.start_lookup(r, r.loc.cache).status == "HIT"  # type: ignore[attr-defined]
        assert len(server.commands) == sent  # now in two's memory
        # not in Redis: a miss
        r = request(two, "/other")
        lk = await cache.lookup(r, r.loc.cache)  # type: ignore[attr-defined]
        assert lk.status == "MISS"
        lk.close()
        await server.stop()

    asyncio.run(scenario())


def test_redis_down_is_a_miss(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = FakeRedis()
        await server.start()
        port = server.port
        await server.stop()
        c = load(tmp_path, HTTP.replace("PORT", str(port)))
        r = request(c, "/x")
        lk = await cache.lookup(r, r.loc.cache)  # type: ignore[attr-defined]
        assert lk.status == "MISS"
        assert store_response(r, lk)  # kept locally; the write fails quietly
        for cp in c.http.caches:  # type: ignore[union-attr]
            await asyncio.gather(*cp.store.tasks)
        r = request(c, "/x")
        assert cache.start_lookup(r, r.loc.cache).status == "HIT"  # type: ignore[attr-defined]

    asyncio.run(scenario())
