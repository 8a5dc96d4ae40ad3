"""A scripted HTTP server on 127.0.0.1 for the client and transport tests: subclasses say what to answer
(`handle`); this base reads requests and starts and stops the asyncio server."""

from __future__ import annotations

import asyncio


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 request; the body is as long as its Content-Length (0 without one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
    return head, await reader.readexactly(length)


class LoopbackServer:
    """`async with Sub(...) as srv:` serves on a free loopback port; `srv.url` is its base URL."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
