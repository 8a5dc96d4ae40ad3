"""The streaming client: SSE parsing rules and that every failure becomes a failed record with a precise reason.

The failure cases need a server that misbehaves on purpose (bad status, malformed line, no usage, reset, silence);
a real vLLM does not do that on demand, so these use a small raw-socket HTTP server that replays scripted bytes.
The well-behaved path against a real vLLM is covered in tests/integration/test_engine_sweep.py."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

from attnbench.measure.client import Client, Sampling, StreamError, StreamState, chat_messages, request_body

sys.path.insert(0, str(Path(__file__).parent))
from loopback import LoopbackServer, read_request  # noqa: E402

IDS = dict(
    experiment="e",
    arm="a",
    repeat=0,
    workload="w",
    concurrency=1,
    phase="measure",
    index=0,
    request_id="e-a-r0-w-c1-0",
    prompt_seed=1,
)


def chunk(content=None, usage=None, role=False):
    delta = {"role": "assistant", "content": ""} if role else {"content": content}
    body = {"choices": [] if usage else [{"index": 0, "delta": delta}]}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
GOOD = chunk(role=True) + chunk(" a") + chunk(" b") + chunk(" c") + chunk(usage=USAGE) + b"data: [DONE]\n\n"


def http_head(status=200, chunked=True, extra=b""):
    reason = {200: b"OK", 400: b"Bad Request", 500: b"Internal Server Error"}[status]
    te = b"Transfer-Encoding: chunked\r\n" if chunked else b""
    return (
        b"HTTP/1.1 "
        + str(status).encode()
        + b" "
        + reason
        + b"\r\nContent-Type: text/event-stream\r\n"
        + te
        + extra
        + b"\r\n"
    )


def as_chunks(*parts: bytes, last: bool = True) -> bytes:
    """HTTP chunked encoding of parts; `last` adds the terminating zero-length chunk."""
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p) + (b"0\r\n\r\n" if last else b"")


class Scripted(LoopbackServer):
    """Answers every request with scripted bytes: a list of (bytes, delay_s) pieces; 'CLOSE' aborts the socket."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.bodies = []

    async def handle(self, reader, writer):
        _, body = await read_request(reader)
        self.bodies.append(json.loads(body))
        for piece, delay in self.pieces:
            await asyncio.sleep(delay)
            if piece == "CLOSE":
                writer.transport.abort()
                return
            writer.write(piece)
            await writer.drain()
        writer.close()


def run(pieces, *, api="chat", timeout_s=5.0, api_key=None, sampling=None):
    async def go():
        async with Scripted(pieces) as srv, Client(srv.url, "m", api=api, timeout_s=timeout_s, api_key=api_key) as c:
            rec = await c.request("hello world", sampling or Sampling(max_tokens=3), dict(IDS))
            return rec, srv.bodies

    return asyncio.run(go())


def test_good_stream_gives_timings_and_usage():
    rec, bodies = run(
        [
            (http_head(), 0),
            (as_chunks(chunk(role=True), chunk(" a"), last=False), 0),
            (as_chunks(chunk(" b"), last=False), 0.05),
            (as_chunks(chunk(" c"), last=False), 0.05),
            (as_chunks(chunk(usage=USAGE), b"data: [DONE]\n\n"), 0),
        ]
    )
    assert rec.ok and rec.error is None and rec.http_status == 200
    assert (rec.prompt_tokens, rec.completion_tokens) == (7, 3)
    assert len(rec.itl) == 2 and all(0.03 < g < 0.5 for g in rec.itl)
    assert 0 <= rec.ttft < rec.end - rec.start
    body = bodies[0]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 3 and body["ignore_eos"] is True and body["temperature"] == 1.0
    assert body["messages"] == chat_messages("hello world", "You are a helpful assistant.")
    assert rec.request_id == IDS["request_id"]


def test_bytes_split_anywhere_parse_the_same():
    # One byte per HTTP chunk: lines are split across reads.
    rec, _ = run([(http_head(), 0), (as_chunks(*[GOOD[i : i + 1] for i in range(len(GOOD))]), 0)])
    assert rec.ok and rec.completion_tokens == 3 and len(rec.itl) == 2


def test_http_error_status_is_recorded_with_message():
    body = json.dumps({"error": {"message": "max_tokens is too large", "type": "BadRequestError"}}).encode()
    rec, _ = run([(http_head(400, chunked=False, extra=b"Content-Length: %d\r\n" % len(body)) + body, 0)])
    assert not rec.ok and rec.http_status == 400
    assert rec.error == "HTTP 400: max_tokens is too large"


@pytest.mark.parametrize(
    "stream, reason",
    [
        (chunk(" a") + b"this is not sse\n\n", "malformed SSE line: 'this is not sse'"),
        (chunk(" a") + b"data: {not json\n\n", "malformed SSE data (not JSON): '{not json'"),
        (chunk(" a") + b'data: {"error": {"message": "engine dead"}}\n\n', "server error in stream: engine dead"),
        (chunk(" a") + b"data: [DONE]\n\n", "stream carried no usage (server ignored stream_options.include_usage)"),
        (chunk(" a") + chunk(usage=USAGE), "stream ended without [DONE] after 2 chunks"),
        (chunk(role=True) + chunk(usage=USAGE) + b"data: [DONE]\n\n", "stream carried no content"),
    ],
)
def test_protocol_violations_fail_with_reason(stream, reason):
    rec, _ = run([(http_head(), 0), (as_chunks(stream), 0)])
    assert not rec.ok and rec.http_status == 200
    assert rec.error == reason


def test_connection_reset_mid_stream():
    rec, _ = run([(http_head(), 0), (b"%x\r\n" % len(chunk(" a")) + chunk(" a") + b"\r\n", 0), ("CLOSE", 0.05)])
    assert not rec.ok
    assert rec.error.startswith("connection closed by the server mid-response after 1 chunks") or rec.error.startswith(
        "connection reset after 1 chunks"
    )
    assert rec.ttft is not None  # what was measured before the break is kept


def test_silent_server_times_out():
    rec, _ = run([(http_head(), 0), (b"", 3)], timeout_s=0.5)
    assert not rec.ok and rec.error == "timeout (ReadTimeout, limit 0.5 s)"


def test_nothing_listening_is_cannot_connect():
    async def go():
        async with Client("http://127.0.0.1:9", "m", timeout_s=2) as c:
            return await c.request("x", Sampling(max_tokens=1), dict(IDS))

    rec = asyncio.run(go())
    assert not rec.ok and rec.error.startswith("cannot connect to http://127.0.0.1:9")
    assert rec.http_status is None and rec.end >= rec.start


def test_completions_api_reads_text_and_sends_prompt():
    def c(text):
        return b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode() + b"\n\n"

    stream = c(" a") + c(" b") + chunk(usage=USAGE) + b"data: [DONE]\n\n"
    rec, bodies = run([(http_head(), 0), (as_chunks(stream), 0)], api="completions")
    assert rec.ok and len(rec.itl) == 1
    assert bodies[0]["prompt"] == "hello world" and "messages" not in bodies[0]


def test_api_key_goes_in_header_only():
    rec, bodies = run([(http_head(), 0), (as_chunks(GOOD), 0)], api_key="sk-secret-123")
    assert rec.ok
    assert "sk-secret-123" not in json.dumps(bodies[0])
    assert "sk-secret-123" not in json.dumps(rec.__dict__)


def test_sse_state_rules():
    st = StreamState("chat", 0.0)
    st.feed_line(b": keep-alive", 0.1)
    st.feed_line(b"event: message", 0.1)
    st.feed_line(b"", 0.1)
    st.feed_line(chunk(role=True).strip(), 0.2)
    assert st.first is None  # a role-only chunk is not a token
    st.feed_line(chunk(" x").strip() + b"\r", 0.3)
    assert st.first == 0.3
    st.feed_line(b"data: [DONE]", 0.4)
    with pytest.raises(StreamError, match="data after"):
        st.feed_line(chunk(" y").strip(), 0.5)


def test_request_body_without_system_prompt():
    body = request_body("chat", "m", "p", Sampling(max_tokens=5, ignore_eos=False, system_prompt=None))
    assert body["messages"] == [{"role": "user", "content": "p"}] and "ignore_eos" not in body
    with pytest.raises(ValueError):
        request_body("embeddings", "m", "p", Sampling(max_tokens=5))


def _state_after(reads, api="chat"):
    """A StreamState fed `reads` (bytes, arrival time) in order; its outcome as comparable values."""
    st = StreamState(api, 0.0)
    for data, now in reads:
        st.feed(data, now)
    st.finish(9.0)
    return st.chunks, st.usage, st.done, st.first, st.last, st.gaps


MIXED = (
    b": keep-alive\r\n\r\n"
    + b"event: message\ndata: "
    + json.dumps({"choices": [{"index": 0, "delta": {"content": " \u00e9t\u00e9 \u2603"}}]}).encode()
    + b"\r\n\r\n"
    + chunk(role=True)
    + b"data:"
    + json.dumps({"choices": [{"index": 0, "delta": {"content": " b"}}]}).encode()
    + b"  \n\n"
    + chunk(" c")
    + chunk(" d")
    + chunk(usage=USAGE)
    + b"data: [DONE]"  # no newline at the end: finish() still counts it
)


def test_bulk_reads_parse_like_single_lines():
    # The same bytes in one read, line by line, and byte by byte give the same events; every event of a read
    # gets that read's arrival time, so events read together have gaps of 0.
    lines = [line + b"\n" for line in MIXED.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    one = _state_after([(MIXED, 1.0)])
    per_line = _state_after([(line, 1.0) for line in lines])
    per_byte = _state_after([(MIXED[i : i + 1], 1.0) for i in range(len(MIXED))])
    assert one == per_line == per_byte
    chunks, usage, done, first, last, gaps = one
    assert (chunks, usage, done, first, last, gaps) == (6, USAGE, True, 1.0, 1.0, [0.0, 0.0, 0.0])
    timed = _state_after([(line, 1.0 + 0.25 * i) for i, line in enumerate(lines)])
    assert timed[3] < timed[4] and len(timed[5]) == 3 and all(g > 0 for g in timed[5])


def test_malformed_line_in_a_bulk_read_keeps_what_came_before():
    st = StreamState("chat", 0.0)
    with pytest.raises(StreamError, match="not JSON"):
        st.feed(chunk(" a") + chunk(" b") + b"data: {broken\n\n" + chunk(" c"), 2.0)
    assert (st.first, st.chunks, st.gaps) == (2.0, 2, [0.0])
    err = StreamState("completions", 0.0)
    with pytest.raises(StreamError, match="server error in stream: overloaded"):
        err.feed(b'data: {"choices": [{"text": "x"}]}\n\ndata: {"error": {"message": "overloaded"}}\n\n', 1.0)
    assert err.first == 1.0
