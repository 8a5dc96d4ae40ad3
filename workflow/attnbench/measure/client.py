"""Streaming client for OpenAI-compatible servers: one request in, one `RequestRecord` out, never an exception.

Every request ends as a record: a success with its timings and the server's token counts, or a failure whose
`error` says precisely what went wrong (HTTP status, timeout, connection reset, malformed SSE line, stream without
usage...). A benchmark that silently drops failures reports flattering numbers, so nothing is dropped here.

Timing: intervals use time.perf_counter (monotonic, high resolution); `start` is a time.time() wall stamp taken when
the request is sent and `end` = start + measured duration, so the two clocks cannot disagree inside a record.
TTFT is the time to the first chunk carrying non-empty content (the role-only first chunk of a chat stream is not a
token); `itl` holds the gaps between successive content chunks (a chunk may carry more than one token when the
server batches its writes, which is why TPOT is computed from usage, not from the number of gaps).

The SSE stream is the hot loop of the client at high concurrency, so it is parsed in bulk: every network read is
split into lines at once, and a well-formed `data: {...}` line is decoded by the C JSON scanner directly (one call,
no wrapper); anything else (comments, other fields, CRLF endings, errors, [DONE]) takes the general per-line path,
so both give the same records. Every event of one read gets that read's arrival time. For the same reason
plain-http servers are reached through attnbench.measure.http11.LoopbackTransport with request bytes built once per
client (see there why); https goes through httpx's own transport.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from attnbench.measure.http11 import LoopbackTransport, request_bytes, request_head
from attnbench.measure.records import RequestRecord

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # what llmapibenchmark sends
API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
JSON_HEADERS = {"Content-Type": "application/json"}
ERROR_TEXT_LIMIT = 300  # characters of a server's error body kept in a record
_JSON = json.JSONDecoder()
_decode_json = _JSON.decode  # on str: skips json.loads' encoding sniffing
_scan_json = _JSON.scan_once  # the C scanner: (value, end) from a start index, StopIteration if none there


@dataclass
class Sampling:
    """What every request of a workload asks for."""

    max_tokens: int
    ignore_eos: bool = True
    temperature: float = 1.0
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT


def chat_messages(prompt: str, system_prompt: str | None) -> list[dict]:
    """The chat messages for a user prompt; workload.py counts tokens on exactly this list."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return messages


def request_body(api: str, model: str, prompt: str, sampling: Sampling) -> dict:
    body: dict = {
        "model": model,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sampling.ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: generate exactly max_tokens
    if api == "chat":
        body["messages"] = chat_messages(prompt, sampling.system_prompt)
    elif api == "completions":
        # The completions API has no system role; the prompt is sent as is.
        body["prompt"] = prompt
    else:
        raise ValueError(f"api must be one of {sorted(API_PATHS)}, not {api!r}")
    return body


class StreamError(Exception):
    """The stream broke the protocol; the message becomes the record's error."""


def _short(text: str | bytes, limit: int = 120) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def encode_json(body: dict) -> bytes:
    """A request body as httpx's `json=` encodes it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _http_error(status: int, body: bytes) -> str:
    """A record's error for a non-200 answer: the status and the server's message."""
    text = body.decode("utf-8", errors="replace")
    try:
        text = _error_message(json.loads(text))
    except ValueError:
        pass
    return f"HTTP {status}: {_short(text, ERROR_TEXT_LIMIT)}"


def _error_message(payload: object) -> str:
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(payload)


class StreamState:
    """Parses the SSE stream of one response and keeps its timings (perf_counter seconds relative to the send)."""

    __slots__ = ("api", "t0", "first", "last", "gaps", "usage", "done", "chunks", "tail", "status")

    def __init__(self, api: str, t0: float):
        self.api = api
        self.t0 = t0
        self.first: float | None = None  # perf_counter of the first content chunk
        self.last: float | None = None  # perf_counter of the latest content chunk
        self.gaps: list[float] = []
        self.usage: dict | None = None
        self.done = False  # saw "data: [DONE]"
        self.chunks = 0
        self.tail = b""  # an incomplete last line, waiting for the next read
        self.status: int | None = None  # the response's HTTP status

    def feed(self, data: bytes, now: float) -> None:
        """Bytes as read from the body, split anywhere; its complete lines are parsed with arrival time `now`
        (an incomplete last line waits for the next read). Raises StreamError on a malformed line."""
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.tail = data
            return
        self.tail = data[cut + 1 :]
        chat = self.api == "chat"
        content = 0  # content events in this read
        try:
            for line in data[:cut].split(b"\n"):
                payload = None
                if line[:7] == b"data: {" and not self.done:  # the common case, decoded inline
                    try:
                        text = line[6:].decode()
                        payload, end = _scan_json(text, 0)
                        if end != len(text) or "error" in payload or payload.get("object") == "error":
                            payload = None  # _parse_line says what is wrong, or strips what is around it
                    except (ValueError, StopIteration):  # also UnicodeDecodeError
                        payload = None
                if payload is None:
                    if not line or line == b"\r":  # every other line is an event separator
                        continue
                    payload = self._parse_line(line)
                    if payload is None:
                        continue
                self.chunks += 1
                usage = payload.get("usage")
                if usage:
                    self.usage = usage
                choices = payload.get("choices")
                if choices:
                    choice = choices[0]
                    if (choice.get("delta") or {}).get("content") if chat else choice.get("text"):
                        content += 1
        finally:  # what arrived before a malformed line is kept
            if content:
                self._arrived(content, now)

    def feed_line(self, line: bytes, now: float) -> None:
        """One complete line of the stream (without its newline)."""
        self.feed(line + b"\n", now)

    def finish(self, now: float) -> None:
        """The body ended: a last line without its newline still counts."""
        tail, self.tail = self.tail, b""
        if tail.strip():
            self.feed_line(tail, now)

    def _arrived(self, count: int, now: float) -> None:
        """`count` content events read at `now`: the first sets TTFT or a gap, the rest are gaps of 0."""
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(round(now - self.last, 6))
        if count > 1:
            self.gaps.extend([0.0] * (count - 1))
        self.last = now

    def _parse_line(self, line: bytes) -> dict | None:
        """The general path for one line: the event's payload, or None for a line that carries none (comment,
        other SSE field, [DONE]). Raises StreamError on a malformed line."""
        line = line.rstrip(b"\r")
        if not line or line.startswith(b":"):  # event separator / SSE comment (keep-alive)
            return None
        if not line.startswith(b"data:"):
            if line.startswith((b"event:", b"id:", b"retry:")):
                return None
            raise StreamError(f"malformed SSE line: {_short(line)!r}")
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return None
        if self.done:
            raise StreamError(f"data after [DONE]: {_short(data)!r}")
        try:
            payload = _decode_json(data.decode())
        except ValueError:  # also UnicodeDecodeError
            raise StreamError(f"malformed SSE data (not JSON): {_short(data)!r}") from None
        if not isinstance(payload, dict):
            raise StreamError(f"malformed SSE data (not an object): {_short(data)!r}")
        if "error" in payload or payload.get("object") == "error":  # new and old vLLM error shapes
            raise StreamError(f"server error in stream: {_short(_error_message(payload), 200)}")
        return payload


class Client:
    """One shared httpx.AsyncClient for a whole sweep; `async with Client(...) as c: rec = await c.request(...)`.

    The connection pool is sized to the highest concurrency so a closed loop of N never waits for a connection."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: str = "chat",
        concurrency: int = 1,
        timeout_s: float = 600.0,
        api_key: str | None = None,
    ):
        if api not in API_PATHS:
            raise ValueError(f"api must be one of {sorted(API_PATHS)}, not {api!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.url = self.base_url + API_PATHS[api]
        self.timeout_s = timeout_s
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"  # kept only in the client's headers, never recorded
        # Plain-http servers (the benchmark case) get the lean transport; https keeps httpx's default one.
        self._loopback = LoopbackTransport(concurrency) if self.base_url.startswith("http://") else None
        self._connect_timeout = min(timeout_s, 30.0)
        self._http = httpx.AsyncClient(
            headers=headers,
            transport=self._loopback,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=httpx.Timeout(timeout_s, connect=self._connect_timeout),
        )
        if self._loopback is not None:
            # The request head is the same for every request (only Content-Length and the body differ): built once
            # by httpx, with exactly the headers it would send, then reused as bytes.
            template = self._http.build_request("POST", self.url, content=b"", headers=JSON_HEADERS)
            self._head = request_head(template)
            self._origin = (template.url.host, template.url.port or 80)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, prompt: str, sampling: Sampling, ids: dict) -> RequestRecord:
        """Send one streaming request; `ids` are the RequestRecord identity fields (experiment, arm, repeat,
        workload, concurrency, phase, index, request_id, prompt_seed)."""
        payload = encode_json(request_body(self.api, self.model, prompt, sampling))
        start = time.time()
        t0 = time.perf_counter()
        state = StreamState(self.api, t0)
        try:
            if self._loopback is not None:
                error = await self._post_loopback(payload, state)
            else:
                error = await self._post_httpx(payload, state)
        except StreamError as exc:
            error = str(exc)
        except httpx.TimeoutException as exc:
            error = f"timeout ({type(exc).__name__}, limit {self.timeout_s:g} s)"
        except httpx.ConnectError as exc:
            error = f"cannot connect to {self.base_url} ({_short(str(exc)) or type(exc).__name__})"
        except httpx.RemoteProtocolError as exc:
            error = f"connection closed by the server mid-response after {state.chunks} chunks ({_short(str(exc))})"
        except httpx.ReadError as exc:
            error = f"connection reset after {state.chunks} chunks ({_short(str(exc)) or type(exc).__name__})"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {_short(str(exc))}"
        t_end = time.perf_counter()
        if error is None:
            if not state.done:
                error = f"stream ended without [DONE] after {state.chunks} chunks"
            elif state.usage is None:
                error = "stream carried no usage (server ignored stream_options.include_usage)"
            elif state.first is None:
                error = "stream carried no content"
        usage = state.usage or {}
        return RequestRecord(
            **ids,
            start=start,
            end=start + (t_end - t0),
            ttft=None if state.first is None else round(state.first - t0, 6),
            itl=state.gaps,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            http_status=state.status,
            ok=error is None,
            error=error,
        )

    async def _post_loopback(self, payload: bytes, state: StreamState) -> str | None:
        """The request over the lean transport; returns the error of a non-200 answer, None after a 200 stream."""
        response = await self._loopback.send(
            self._origin, request_bytes(self._head, payload), self._connect_timeout, self.timeout_s
        )
        chunks = response.__aiter__()
        try:
            state.status = response.status
            if response.status != 200:
                return _http_error(response.status, b"".join([data async for data in chunks]))
            await self._read_stream(chunks, state)
        finally:
            await chunks.aclose()  # a body left unread gives its connection up (it cannot be reused)
            await response.aclose()
        return None

    async def _post_httpx(self, payload: bytes, state: StreamState) -> str | None:
        """The request through httpx (https); as _post_loopback."""
        async with self._http.stream("POST", self.url, content=payload, headers=JSON_HEADERS) as response:
            state.status = response.status_code
            if response.status_code != 200:
                return _http_error(response.status_code, await response.aread())
            await self._read_stream(response.aiter_raw(), state)
        return None

    async def _read_stream(self, chunks: AsyncIterator[bytes], state: StreamState) -> None:
        deadline = state.t0 + self.timeout_s
        clock = time.perf_counter
        async for data in chunks:
            now = clock()  # the arrival time of every event in this read
            state.feed(data, now)
            if now > deadline:
                raise httpx.ReadTimeout("request exceeded its total time limit")
        state.finish(clock())
