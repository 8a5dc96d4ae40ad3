"""A lean HTTP/1.1 transport for httpx, for streaming many token events over plain-http loopback connections.

Why: httpx's default transport (httpcore + h11) handles every HTTP chunk as a separate Python-level event, and an
LLM server sends one chunk per token; its pool also scans every connection with a readability syscall on each
request. At tens of thousands of tokens per second that made our client several times slower than vLLM's aiohttp
client and added tens of ms of TTFT error under load (tests/bench/client_overhead.py measures both). This transport
reads whatever bytes the socket has, strips the chunked framing in one pass and hands httpx the payload in bulk, so
the cost is per network read, not per token. httpx stays the API (requests, responses, timeouts, exceptions).

Scope: http:// only (the client uses httpx's default transport for https), HTTP/1.1 keep-alive, Content-Length or
chunked bodies. Errors are raised as the httpx exceptions the default transport would raise (ConnectError,
ConnectTimeout, ReadTimeout, ReadError, RemoteProtocolError), so callers handle both transports alike.
"""

from __future__ import annotations

import asyncio
import socket

import httpx

READ_SIZE = 1 << 16


class _Connection:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    t = request.extensions.get("timeout") or {}
    return t.get("connect"), t.get("read")


async def _with_timeout(coro, seconds: float | None, exc: type[httpx.TimeoutException], request: httpx.Request):
    try:
        return await asyncio.wait_for(coro, seconds) if seconds else await coro
    except asyncio.TimeoutError:
        raise exc(f"no data within {seconds:g} s", request=request) from None


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Keep-alive pool of at most `max_connections` plain-http connections (LIFO reuse)."""

    def __init__(self, max_connections: int):
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"LoopbackTransport serves http:// only, not {request.url.scheme}://")
        await self._slots.acquire()
        try:
            conn, head_line, headers = await self._exchange(request)
        except BaseException:
            self._slots.release()
            raise
        status = int(head_line.split(b" ", 2)[1])
        stream = _Body(self, conn, request, headers)
        return httpx.Response(status, headers=headers, stream=stream, extensions={"http_version": b"HTTP/1.1"})

    async def _exchange(self, request: httpx.Request):
        """Send the request and read the response head, on an idle connection if any (retrying once on a fresh one
        if the idle one turns out closed by the server, which keep-alive allows at any time)."""
        key = (request.url.host, request.url.port or 80)
        connect_timeout, read_timeout = _timeouts(request)
        payload = self._serialize(request, await request.aread())
        idle = self._idle.get(key)
        conn = idle.pop() if idle else None
        while True:
            fresh = conn is None
            if fresh:
                conn = await self._connect(key, connect_timeout, request)
            try:
                conn.writer.write(payload)
                head = await _with_timeout(conn.reader.readuntil(b"\r\n\r\n"), read_timeout, httpx.ReadTimeout, request)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                conn.close()
                if not fresh:  # a stale keep-alive connection: nothing was received, so resend once
                    conn = None
                    continue
                if isinstance(exc, asyncio.IncompleteReadError):
                    raise httpx.RemoteProtocolError(
                        "server closed the connection before the response head", request=request
                    ) from None
                raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None
            except BaseException:
                conn.close()
                raise
            lines = head[:-4].split(b"\r\n")
            headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:] if b":" in line]
            return conn, lines[0], headers

    async def _connect(self, key: tuple[str, int], timeout: float | None, request: httpx.Request) -> _Connection:
        try:
            reader, writer = await _with_timeout(
                asyncio.open_connection(*key, limit=READ_SIZE), timeout, httpx.ConnectTimeout, request
            )
        except OSError as exc:
            raise httpx.ConnectError(exc.strerror or str(exc), request=request) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    @staticmethod
    def _serialize(request: httpx.Request, body: bytes) -> bytes:
        target = request.url.raw_path
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
        host_seen = False
        for name, value in request.headers.raw:
            lname = name.lower()
            if lname == b"host":
                host_seen = True
            if lname in (b"transfer-encoding", b"content-length", b"connection"):
                continue
            lines.append(name + b": " + value)
        if not host_seen:
            lines.append(b"Host: " + request.url.netloc)
        if body or request.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _release(self, conn: _Connection | None, key: tuple[str, int], reusable: bool) -> None:
        if conn is not None:
            if reusable:
                conn.reused = True
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()
        self._slots.release()

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


class _Body(httpx.AsyncByteStream):
    """A response body: chunked or Content-Length; the connection returns to the pool once fully read."""

    def __init__(self, transport: LoopbackTransport, conn: _Connection, request: httpx.Request, headers):
        self.transport = transport
        self.conn = conn
        self.request = request
        self.key = (request.url.host, request.url.port or 80)
        values = {k.lower(): v.lower() for k, v in headers}
        self.chunked = b"chunked" in values.get(b"transfer-encoding", b"")
        length = values.get(b"content-length")
        self.length = int(length) if length is not None and not self.chunked else None
        self.keep_alive = values.get(b"connection") != b"close" and (self.chunked or self.length is not None)
        self.done = False
        self.released = False

    async def __aiter__(self):
        read_timeout = _timeouts(self.request)[1]
        reader = self.conn.reader
        try:
            if self.chunked:
                async for data in self._chunked(reader, read_timeout):
                    yield data
            elif self.length is not None:
                left = self.length
                while left:
                    data = await self._read(reader, min(left, READ_SIZE), read_timeout)
                    left -= len(data)
                    yield data
            else:  # body delimited by connection close
                while data := await self._read(reader, READ_SIZE, read_timeout, eof_ok=True):
                    yield data
            self.done = True
        finally:
            self._finish()

    async def _read(self, reader, n: int, timeout: float | None, eof_ok: bool = False) -> bytes:
        try:
            data = await _with_timeout(reader.read(n), timeout, httpx.ReadTimeout, self.request)
        except ConnectionError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self.request) from None
        if not data and not eof_ok:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=self.request
            )
        return data

    async def _chunked(self, reader, timeout: float | None):
        """Decode chunked framing from bulk reads; yield the payload of everything read so far."""
        buf = b""
        pos = 0
        need = 0  # payload bytes still owed by the current chunk (then its CRLF)
        while True:
            out = []
            while True:
                if need > 0:
                    take = min(need, len(buf) - pos)
                    if take <= 0:
                        break
                    out.append(buf[pos : pos + take])
                    pos += take
                    need -= take
                    if need:
                        break
                    need = -2  # the CRLF after the chunk data
                if need == -2:
                    if len(buf) - pos < 2:
                        break
                    pos += 2
                    need = 0
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size_field = buf[pos:eol].split(b";", 1)[0].strip()
                try:
                    size = int(size_field, 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(
                        f"bad chunk size {size_field[:20]!r}", request=self.request
                    ) from None
                pos = eol + 2
                if size == 0:  # last chunk; skip (empty) trailers up to the final CRLF
                    while True:
                        eol = buf.find(b"\r\n", pos)
                        if eol < 0:
                            buf = buf[pos:] + await self._read(reader, READ_SIZE, timeout)
                            pos = 0
                            continue
                        line, pos = buf[pos:eol], eol + 2
                        if not line:
                            break
                    if out:
                        yield b"".join(out)
                    return
                need = size
            if out:
                yield b"".join(out)
            buf = buf[pos:] + await self._read(reader, READ_SIZE, timeout)
            pos = 0

    def _finish(self) -> None:
        if not self.released:
            self.released = True
            self.transport._release(self.conn, self.key, self.done and self.keep_alive)

    async def aclose(self) -> None:
        if not self.released:
            self.released = True
            self.transport._release(self.conn, self.key, False)  # body not read to the end: the connection is spent
