"""The lean HTTP/1.1 transport on real sockets: keep-alive reuse, stale connections, framing, limits, errors."""

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from attnbench.measure.http11 import LoopbackTransport

sys.path.insert(0, str(Path(__file__).parent))
from loopback import LoopbackServer, read_request  # noqa: E402


class Origin(LoopbackServer):
    """A raw HTTP/1.1 server; `reply(n)` gives the bytes for the n-th request on a connection (None: close at once;
    a 1-tuple: send its bytes, then close)."""

    def __init__(self, reply):
        self.reply = reply
        self.connections = 0
        self.requests = []

    async def handle(self, reader, writer):
        self.connections += 1
        n = 0
        try:
            while True:
                self.requests.append(await read_request(reader))
                out = self.reply(n)
                n += 1
                if out is None:
                    break
                close = isinstance(out, tuple)  # (bytes,): send, then close the connection
                writer.write(out[0] if close else out)
                await writer.drain()
                if close:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
)
SIZED = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"


def client(max_connections=2):
    return httpx.AsyncClient(transport=LoopbackTransport(max_connections), timeout=5)


def test_chunked_and_sized_bodies_on_one_kept_alive_connection():
    async def go():
        async with Origin(lambda n: [CHUNKED, SIZED][n % 2]) as origin, client() as c:
            r1 = await c.post(origin.url + "/v1/x?q=1", json={"a": 1})
            r2 = await c.get(origin.url + "/")
            return origin, r1, r2

    origin, r1, r2 = asyncio.run(go())
    assert (r1.status_code, r1.content) == (200, b"hello world")
    assert (r2.status_code, r2.content, r2.headers["x-a"]) == (201, b"abc", "b")
    assert origin.connections == 1
    head, body = origin.requests[0]
    assert head.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n") and b"Content-Length: 7" in head and body == b'{"a":1}'


def test_stale_keep_alive_connection_is_retried_on_a_fresh_one():
    # The server answers one request per connection, then closes without saying so.
    async def go():
        async with Origin(lambda n: SIZED if n == 0 else None) as origin, client() as c:
            a = await c.get(origin.url + "/")
            await asyncio.sleep(0.05)
            b = await c.get(origin.url + "/")
            return origin, a, b

    origin, a, b = asyncio.run(go())
    assert a.content == b.content == b"abc"
    assert origin.connections == 2


def test_connections_are_limited():
    async def go():
        async with Origin(lambda n: SIZED) as origin, client(max_connections=3) as c:
            await asyncio.gather(*(c.get(origin.url + "/") for _ in range(20)))
            return origin

    assert asyncio.run(go()).connections <= 3


def test_refused_and_truncated_raise_httpx_errors():
    async def go_refused():
        async with client() as c:
            await c.get("http://127.0.0.1:9/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go_refused())

    truncated = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"

    async def go_truncated():
        async with Origin(lambda n: (truncated,)) as origin, client() as c:
            async with c.stream("GET", origin.url + "/") as r:
                await r.aread()

    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(go_truncated())


def test_https_is_refused_clearly():
    async def go():
        async with client() as c:
            await c.get("https://127.0.0.1:9/")

    with pytest.raises(httpx.UnsupportedProtocol):
        asyncio.run(go())


class Trickle(LoopbackServer):
    """Answers with a chunked body whose chunks come `gap` seconds apart (`head_delay` before the head)."""

    def __init__(self, gap, count, head_delay=0.0):
        self.gap, self.count, self.head_delay = gap, count, head_delay

    async def handle(self, reader, writer):
        await read_request(reader)
        await asyncio.sleep(self.head_delay)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(self.count):
            await asyncio.sleep(self.gap)
            writer.write(b"1\r\nx\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()


def _read_body(server, timeout):
    async def go():
        async with server as srv, httpx.AsyncClient(transport=LoopbackTransport(1), timeout=timeout) as c:
            return (await c.get(srv.url + "/")).content

    return asyncio.run(go())


def test_read_timeout_is_per_read_not_per_body():
    # 6 reads 0.15 s apart take longer than the 0.4 s limit in all, but no single read waits that long.
    assert _read_body(Trickle(0.15, 6), timeout=0.4) == b"x" * 6
    with pytest.raises(httpx.ReadTimeout):
        _read_body(Trickle(0.6, 2), timeout=0.3)  # a body read that waits too long
    with pytest.raises(httpx.ReadTimeout):
        _read_body(Trickle(0.0, 1, head_delay=0.6), timeout=0.3)  # the response head waits too long


def test_a_callers_cancel_is_not_taken_for_a_timeout():
    async def go():
        async with Trickle(0.0, 1, head_delay=2) as srv, httpx.AsyncClient(transport=LoopbackTransport(1)) as c:
            task = asyncio.create_task(c.get(srv.url + "/", timeout=5))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
