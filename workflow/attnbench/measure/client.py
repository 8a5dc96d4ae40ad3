"""Streaming client for OpenAI-compatible servers: one request in, one `RequestRecord` out, never an exception.

Every request ends as a record: a success with its timings and the server's token counts, or a failure whose
`error` says precisely what went wrong (HTTP status, timeout, connection reset, malformed SSE line, stream without
usage...). A benchmark that silently drops failures reports flattering numbers, so nothing is dropped here.

Timing: intervals use time.perf_counter (monotonic, high resolution); `start` is a time.time() wall stamp taken when
the request is sent and `end` = start + measured duration, so the two clocks cannot disagree inside a record.
TTFT is the time to the first chunk carrying non-empty content (the role-only first chunk of a chat stream is not a
token); `itl` holds the gaps between successive content chunks (a chunk may carry more than one token when the
server batches its writes, which is why TPOT is computed from usage, not from the number of gaps).

The SSE stream is split into lines by hand from raw bytes: it is the hot loop of the client at high concurrency,
and httpx's generic line iterator costs more per chunk than the few byte operations needed here. For the same
reason plain-http servers are reached through attnbench.measure.http11.LoopbackTransport (see there why).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from attnbench.measure.http11 import LoopbackTransport
from attnbench.measure.records import RequestRecord

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # what llmapibenchmark sends
API_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
ERROR_TEXT_LIMIT = 300  # characters of a server's error body kept in a record
_decode_json = json.JSONDecoder().decode  # on str: skips json.loads' encoding sniffing, once per token


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


def _error_message(payload: object) -> str:
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(payload)


class StreamState:
    """Parses SSE lines of one response and keeps its timings (perf_counter seconds relative to the send)."""

    __slots__ = ("api", "t0", "first", "last", "gaps", "usage", "done", "chunks")

    def __init__(self, api: str, t0: float):
        self.api = api
        self.t0 = t0
        self.first: float | None = None  # perf_counter of the first content chunk
        self.last: float | None = None  # perf_counter of the latest content chunk
        self.gaps: list[float] = []
        self.usage: dict | None = None
        self.done = False  # saw "data: [DONE]"
        self.chunks = 0

    def feed_line(self, line: bytes, now: float) -> None:
        """One line of the stream (without its newline). Raises StreamError on a malformed line."""
        line = line.rstrip(b"\r")
        if not line or line.startswith(b":"):  # event separator / SSE comment (keep-alive)
            return
        if not line.startswith(b"data:"):
            if line.startswith((b"event:", b"id:", b"retry:")):
                return
            raise StreamError(f"malformed SSE line: {_short(line)!r}")
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
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
        self.chunks += 1
        usage = payload.get("usage")
        if usage:
            self.usage = usage
        choices = payload.get("choices")
        if choices:
            choice = choices[0]
            content = (choice.get("delta") or {}).get("content") if self.api == "chat" else choice.get("text")
            if content:
                if self.first is None:
                    self.first = now
                else:
                    self.gaps.append(round(now - self.last, 6))
                self.last = now


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
        transport = LoopbackTransport(concurrency) if self.base_url.startswith("http://") else None
        self._http = httpx.AsyncClient(
            headers=headers,
            transport=transport,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, prompt: str, sampling: Sampling, ids: dict) -> RequestRecord:
        """Send one streaming request; `ids` are the RequestRecord identity fields (experiment, arm, repeat,
        workload, concurrency, phase, index, request_id, prompt_seed)."""
        body = request_body(self.api, self.model, prompt, sampling)
        start = time.time()
        t0 = time.perf_counter()
        state = StreamState(self.api, t0)
        status = None
        error = None
        try:
            async with self._http.stream("POST", self.url, json=body) as response:
                status = response.status_code
                if status != 200:
                    text = (await response.aread()).decode("utf-8", errors="replace")
                    try:
                        text = _error_message(json.loads(text))
                    except ValueError:
                        pass
                    error = f"HTTP {status}: {_short(text, ERROR_TEXT_LIMIT)}"
                else:
                    await self._read_stream(response, state, t0)
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
            http_status=status,
            ok=error is None,
            error=error,
        )

    async def _read_stream(self, response: httpx.Response, state: StreamState, t0: float) -> None:
        deadline = t0 + self.timeout_s
        buffer = b""
        async for raw in response.aiter_raw():
            now = time.perf_counter()
            buffer += raw
            if b"\n" not in raw:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line and line != b"\r":  # every other line is an event separator
                    state.feed_line(line, now)
            if now > deadline:
                raise httpx.ReadTimeout("request exceeded its total time limit")
        if buffer.strip():
            state.feed_line(buffer, time.perf_counter())
