"""A lean HTTP/1.1 transport for streaming many token events over plain-http loopback connections.

Why: httpx's default transport (httpcore + h11) handles every HTTP chunk as a separate Python-level event, and an
LLM server sends one chunk per token; its pool also scans every connection with a readability syscall on each
request. At tens of thousands of tokens per second that made our client several times slower than vLLM's aiohttp
client and added tens of ms of TTFT error under load (tests/bench/client_overhead.py measures both). This transport
reads whatever bytes the socket has, strips the chunked framing in one pass and hands over the payload in bulk, so
the cost is per network read, not per token. A read's timeout is one re-armed timer per exchange, not
asyncio.wait_for, which starts a task for every read.

Two entry points: `handle_async_request` makes it an httpx transport (httpx requests, responses and timeouts), and
`send` takes request bytes prepared once by the caller (`request_head` + `request_bytes`) and returns the response
`_Body` itself, which the streaming client uses to skip httpx's per-request URL, header and response machinery.

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


class _ReadTimer:
    """The read timeout of one exchange: any read that waits `seconds` without data raises httpx.ReadTimeout.

    One timer serves all reads: it fires at the earliest moment a read could be overdue, and re-arms itself from
    the start of the read in progress (or stops while none is), so a read costs two attribute stores. On expiry it
    cancels the task that sent the request, which must be the one that reads its body (as in the streaming client
    and httpx's send/stream), and `wait` turns that cancellation into the timeout."""

    __slots__ = ("seconds", "loop", "task", "since", "handle", "fired", "request")

    def __init__(self, seconds: float | None, request: httpx.Request | None):
        self.seconds = seconds
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.since: float | None = None  # loop time the read in progress started
        self.handle: asyncio.TimerHandle | None = None
        self.fired = False

    async def wait(self, awaitable):
        if not self.seconds:
            return await awaitable
        self.since = self.loop.time()
        if self.handle is None:
            self.handle = self.loop.call_at(self.since + self.seconds, self._check)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self.fired:
                raise
            self.fired = False
            uncancel = getattr(self.task, "uncancel", None)  # Python >= 3.11: the cancel was ours, not the caller's
            if uncancel:
                uncancel()
            raise httpx.ReadTimeout(f"no data within {self.seconds:g} s", request=self.request) from None
        finally:
            self.since = None

    def _check(self) -> None:
        self.handle = None
        if self.since is None:  # no read waiting: the next one re-arms
            return
        due = self.since + self.seconds
        if due - self.loop.time() > 1e-3:
            self.handle = self.loop.call_at(due, self._check)
        else:
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    t = request.extensions.get("timeout") or {}
    return t.get("connect"), t.get("read")


def request_head(request: httpx.Request) -> bytes:
    """The request line and headers of `request`, without Content-Length and the blank line (see request_bytes)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
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
    return b"\r\n".join(lines) + b"\r\n"


def request_bytes(head: bytes, body: bytes, with_length: bool = True) -> bytes:
    """A request on the wire: `head` (from request_head) plus Content-Length and the body."""
    return head + (b"Content-Length: %d\r\n\r\n" % len(body) if with_length else b"\r\n") + body


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Keep-alive pool of at most `max_connections` plain-http connections (LIFO reuse)."""

    def __init__(self, max_connections: int):
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"LoopbackTransport serves http:// only, not {request.url.scheme}://")
        body = await request.aread()
        payload = request_bytes(request_head(request), body, bool(body) or request.method in ("POST", "PUT", "PATCH"))
        connect_timeout, read_timeout = _timeouts(request)
        stream = await self.send(
            (request.url.host, request.url.port or 80), payload, connect_timeout, read_timeout, request
        )
        return httpx.Response(
            stream.status, headers=stream.headers, stream=stream, extensions={"http_version": b"HTTP/1.1"}
        )

    async def send(
        self,
        key: tuple[str, int],
        payload: bytes,
        connect_timeout: float | None,
        read_timeout: float | None,
        request: httpx.Request | None = None,
    ) -> _Body:
        """Send request bytes to (host, port) and read the response head; the body is read by iterating the
        returned _Body (which gives the connection back once read to the end, or on aclose). `request`, if given,
        is attached to the httpx exceptions raised."""
        await self._slots.acquire()
        timer = _ReadTimer(read_timeout, request)
        try:
            conn, head_line, headers = await self._exchange(key, payload, connect_timeout, timer)
            status = int(head_line.split(b" ", 2)[1])
        except BaseException:
            timer.close()
            self._slots.release()
            raise
        return _Body(self, conn, key, status, headers, timer)

    async def _exchange(self, key: tuple[str, int], payload: bytes, connect_timeout: float | None, timer: _ReadTimer):
        """Send the request and read the response head, on an idle connection if any (retrying once on a fresh one
        if the idle one turns out closed by the server, which keep-alive allows at any time)."""
        request = timer.request
        idle = self._idle.get(key)
        conn = idle.pop() if idle else None
        while True:
            fresh = conn is None
            if fresh:
                conn = await self._connect(key, connect_timeout, request)
            try:
                conn.writer.write(payload)
                head = await timer.wait(conn.reader.readuntil(b"\r\n\r\n"))
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

    async def _connect(self, key: tuple[str, int], timeout: float | None, request: httpx.Request | None) -> _Connection:
        try:
            opening = asyncio.open_connection(*key, limit=READ_SIZE)
            reader, writer = await (asyncio.wait_for(opening, timeout) if timeout else opening)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {timeout:g} s", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(exc.strerror or str(exc), request=request) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

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
    """A response: `status`, `headers`, and the body as an async iterator of bytes (chunked or Content-Length);
    the connection returns to the pool once the body is fully read."""

    def __init__(self, transport: LoopbackTransport, conn: _Connection, key, status: int, headers, timer: _ReadTimer):
        self.transport = transport
        self.conn = conn
        self.key = key
        self.status = status
        self.headers = headers
        self.timer = timer
        self.request = timer.request
        values = {k.lower(): v.lower() for k, v in headers}
        self.chunked = b"chunked" in values.get(b"transfer-encoding", b"")
        length = values.get(b"content-length")
        self.length = int(length) if length is not None and not self.chunked else None
        self.keep_alive = values.get(b"connection") != b"close" and (self.chunked or self.length is not None)
        self.done = False
        self.released = False

    async def __aiter__(self):
        reader = self.conn.reader
        try:
            if self.chunked:
                async for data in self._chunked(reader):
                    yield data
            elif self.length is not None:
                left = self.length
                while left:
                    data = await self._read(reader, min(left, READ_SIZE))
                    left -= len(data)
                    yield data
            else:  # body delimited by connection close
                while data := await self._read(reader, READ_SIZE, eof_ok=True):
                    yield data
            self.done = True
        finally:
            self._finish()

    async def read_all(self) -> bytes:
        return b"".join([data async for data in self])

    async def _read(self, reader: asyncio.StreamReader, n: int, eof_ok: bool = False) -> bytes:
        try:
            data = await self.timer.wait(reader.read(n))
        except ConnectionError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self.request) from None
        if not data and not eof_ok:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=self.request
            )
        return data

    def _size(self, field: bytes) -> int:
        """A chunk-size line with extensions or junk (the common bare hex size is parsed inline)."""
        field = field.split(b";", 1)[0].strip()
        try:
            return int(field, 16)
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad chunk size {field[:20]!r}", request=self.request) from None

    async def _chunked(self, reader: asyncio.StreamReader):
        """Decode chunked framing from bulk reads; yield the payload of everything read so far. The common case, a
        whole chunk in the buffer, costs one find, one int and two slices; a chunk split across reads is handed
        on in parts as its bytes arrive."""
        buf = b""
        pos = 0
        need = 0  # payload bytes still owed by a chunk split across reads
        crlf = False  # the CRLF after a split chunk's payload is still owed
        while True:
            out = []
            end_of_buf = len(buf)
            while True:
                if need:
                    take = min(need, end_of_buf - pos)
                    if take > 0:
                        out.append(buf[pos : pos + take])
                        pos += take
                        need -= take
                    if need:
                        break
                    crlf = True
                if crlf:
                    if end_of_buf - pos < 2:
                        break
                    pos += 2
                    crlf = False
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    size = int(buf[pos:eol], 16)
                except ValueError:
                    size = self._size(buf[pos:eol])
                start = eol + 2
                if size == 0:  # last chunk; skip (empty) trailers up to the final CRLF
                    pos = start
                    while True:
                        eol = buf.find(b"\r\n", pos)
                        if eol < 0:
                            buf = buf[pos:] + await self._read(reader, READ_SIZE)
                            pos = 0
                            continue
                        line, pos = buf[pos:eol], eol + 2
                        if not line:
                            break
                    if out:
                        yield b"".join(out)
                    return
                end = start + size
                if end + 2 <= end_of_buf:  # the whole chunk and its CRLF are here
                    out.append(buf[start:end])
                    pos = end + 2
                else:
                    pos = start
                    need = size
            if out:
                yield b"".join(out)
            buf = buf[pos:] + await self._read(reader, READ_SIZE)
            pos = 0

    def _finish(self) -> None:
        if not self.released:
            self.released = True
            self.timer.close()
            self.transport._release(self.conn, self.key, self.done and self.keep_alive)

    async def aclose(self) -> None:
        if not self.released:
            self.released = True
            self.timer.close()
            self.transport._release(self.conn, self.key, False)  # body not read to the end: the connection is spent
