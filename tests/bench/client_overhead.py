"""Client overhead benchmark: our client against vLLM's benchmark client, on the same local load source.

    python tests/bench/client_overhead.py [--engine-python PY] [--concurrency 1,32,256] [--seconds 8] [--rounds 3]
                                          [--baseline OTHER_CHECKOUT]

The load source is a small asyncio HTTP/1.1 server (its own process) that answers every chat request with an SSE
stream shaped like vLLM's: one `data:` event per token, each written on its own as a server does, a usage event,
`data: [DONE]`. It is not a stand-in for vLLM in correctness tests; it only produces tokens as fast as asked (it
waits for the socket only when the client falls behind), so the client is the bottleneck.

Two figures per client and concurrency level:
  max tokens/s  the source streams 256 tokens per request with no delay; the client runs a closed loop of C
                requests for a fixed time; tokens/s = completion tokens received / wall time.
  TTFT error    the source waits TTFT_DELAY_S after a request arrives before the first token and then paces tokens
                every PACED_ITL_S; error = client-measured TTFT - TTFT_DELAY_S (median and p99, ms). It includes
                sending the request and reading the reply through the loopback, which is what a client adds, and
                the source's own lateness (its timer's overshoot, reading the request), printed as "source lag":
                a floor under every client's figure that no client can remove.
Ours runs under this interpreter (the project venv), in one process ("ours") and spread over two client processes
("ours2p", attnbench.measure.multiproc; it runs a request count calibrated to --seconds, so its figure includes the
tail of the last wave, which the one-process loop's deadline does not); with --baseline, another checkout's client
runs as "base" in the same rounds (a change measured against what it changes). vLLM's
(vllm.benchmarks.lib.endpoint_request_func, aiohttp, a session configured as vllm/benchmarks/serve.py does) runs
under --engine-python. Numbers are printed, not asserted, with the host's load average beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

WORKFLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "workflow")
FAST_TOKENS = 256
PACED_TOKENS = 32
TTFT_DELAY_S = 0.050
PACED_ITL_S = 0.020
WARMUP_TOKENS = 4  # each driver's untimed first wave, on the client it then measures: connection set-up and
# imports are not in the figures (a sweep's warm-up requests do the same for its levels)

# --- the load source --------------------------------------------------------------------------------------------


def _event(obj: dict) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"  # one HTTP chunk per SSE event


TOKEN = _event(
    {
        "id": "x",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}],
    }
)
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
)
DONE = _event(
    {
        "id": "x",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
    }
)


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, paced: bool, lags: list[float]
) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = writer.transport
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /source-lag "):  # the orchestrator's question, see _source_lag
                _answer_lag(writer, lags)
                continue
            arrived = time.perf_counter()
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = json.loads(await reader.readexactly(length)) if length else {}
            n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
            writer.write(HEAD)
            if paced:
                await asyncio.sleep(TTFT_DELAY_S)
                writer.write(TOKEN)
                lags.append(time.perf_counter() - arrived - TTFT_DELAY_S)
                await writer.drain()
            for _ in range(1 if paced else 0, n):
                if paced:
                    await asyncio.sleep(PACED_ITL_S)
                writer.write(TOKEN)  # one write (a send, while the socket keeps up) per token, as a server does
                if transport.get_write_buffer_size():  # drain only when the client falls behind: it costs per token
                    await writer.drain()
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            writer.write(
                _event({"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": usage})
            )
            writer.write(_event_raw(b"[DONE]") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _answer_lag(writer: asyncio.StreamWriter, lags: list[float]) -> None:
    """The source's own lateness since the last question (median ms): how much later than TTFT_DELAY_S after a
    request arrived its first token was written. It is in every client's TTFT error, so it is a floor under both."""
    body = json.dumps({"median_ms": statistics.median(lags) * 1000 if lags else None, "n": len(lags)}).encode()
    lags.clear()
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def _event_raw(payload: bytes) -> bytes:
    data = b"data: " + payload + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def serve(port: int, paced: bool) -> None:
    async def main() -> None:
        lags: list[float] = []
        server = await asyncio.start_server(
            lambda r, w: _serve_connection(r, w, paced, lags), "127.0.0.1", port, backlog=1024
        )
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- drivers: a closed loop of C requests for `seconds`, or `count` requests -------------------------------------


async def _closed_loop(send, concurrency: int, seconds: float | None, count: int | None) -> dict:
    results: list[tuple[bool, int, float]] = []  # (ok, tokens, ttft)
    started = time.perf_counter()
    deadline = started + seconds if seconds else None
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while True:
            if deadline and time.perf_counter() >= deadline:
                return
            if count is not None and issued >= count:
                return
            issued += 1
            results.append(await send())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ok = [r for r in results if r[0]]
    ttfts = sorted(r[2] for r in ok)
    return {
        "requests": len(results),
        "failed": len(results) - len(ok),
        "tokens": sum(r[1] for r in ok),
        "wall_s": wall,
        "tokens_per_s": sum(r[1] for r in ok) / wall,
        "ttft_ms_median": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_ms_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1000 if ttfts else None,
    }


async def drive_ours(url: str, concurrency: int, tokens: int, seconds: float | None, count: int | None) -> dict:
    from attnbench.measure.client import Client, Sampling

    ids = dict(
        experiment="b",
        arm="b",
        repeat=0,
        workload="b",
        concurrency=concurrency,
        phase="measure",
        index=0,
        request_id="b",
        prompt_seed=0,
    )
    async with Client(url, "m", concurrency=concurrency, timeout_s=120) as client:

        def sender(max_tokens: int):
            sampling = Sampling(max_tokens=max_tokens, ignore_eos=True, system_prompt=None)

            async def send():
                rec = await client.request("hi", sampling, ids)
                return rec.ok, rec.completion_tokens or 0, rec.ttft or 0.0

            return send

        await _closed_loop(sender(WARMUP_TOKENS), concurrency, None, concurrency)  # untimed: connections opened
        return await _closed_loop(sender(tokens), concurrency, seconds, count)


class _Discard:
    def append(self, record) -> None:
        pass


async def drive_ours_mp(
    url: str, concurrency: int, tokens: int, seconds: float | None, count: int | None, processes: int = 2
) -> dict:
    """Ours spread over `processes` client processes (attnbench.measure.multiproc). The pool runs a level of a
    given request count, not a time: in --seconds mode a first level calibrates the count to about `seconds` of work."""
    from attnbench.measure.client import Sampling
    from attnbench.measure.level import Level
    from attnbench.measure.multiproc import ClientPool

    sampling = Sampling(max_tokens=tokens, ignore_eos=True, system_prompt=None)
    ids = {"experiment": "b", "arm": "b", "repeat": 0, "workload": "b"}
    async with ClientPool(processes, base_url=url, model="m", concurrency=concurrency, timeout_s=120) as pool:

        async def level(n: int):
            lv = Level(ids, [("hi", 0)] * n, "measure", concurrency)
            t0 = time.perf_counter()
            await pool.run(lv, sampling, _Discard(), None, lambda: None, 1e9)
            return lv.records, time.perf_counter() - t0

        await level(2 * concurrency)  # waits for the workers to be up (spawn imports take a second or two)
        if count is None:
            records, wall = await level(max(8 * concurrency, 256))
            count = max(int(len(records) / wall * seconds), 8 * concurrency)
        records, wall = await level(count)
    ok = [r for r in records if r.ok]
    ttfts = sorted(r.ttft for r in ok)
    return {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "tokens": sum(r.completion_tokens or 0 for r in ok),
        "wall_s": wall,
        "tokens_per_s": sum(r.completion_tokens or 0 for r in ok) / wall,
        "ttft_ms_median": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_ms_p99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1000 if ttfts else None,
    }


async def drive_vllm(url: str, concurrency: int, tokens: int, seconds: float | None, count: int | None) -> dict:
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_chat_completions

    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=concurrency,
        ttl_dns_cache=300,
        use_dns_cache=True,
        keepalive_timeout=60,
        enable_cleanup_closed=True,
        force_close=False,
        ssl=False,
    )  # as vllm/benchmarks/serve.py
    async with aiohttp.ClientSession(
        connector=connector, trust_env=True, timeout=aiohttp.ClientTimeout(total=6 * 60 * 60)
    ) as session:

        def sender(max_tokens: int):
            inp = RequestFuncInput(
                prompt="hi",
                api_url=url + "/v1/chat/completions",
                prompt_len=1,
                output_len=max_tokens,
                model="m",
                ignore_eos=True,
            )

            async def send():
                out = await async_request_openai_chat_completions(inp, session)
                return out.success, out.output_tokens or 0, out.ttft

            return send

        await _closed_loop(sender(WARMUP_TOKENS), concurrency, None, concurrency)  # untimed: connections opened
        return await _closed_loop(sender(tokens), concurrency, seconds, count)


def drive(args: argparse.Namespace) -> None:
    fn = {"ours": drive_ours, "ours2p": drive_ours_mp, "vllm": drive_vllm}[args.client]
    sys.path.insert(0, args.workflow)  # whose attnbench "ours" is: this checkout's, or --baseline's
    seconds = args.seconds if args.seconds > 0 else None
    count = args.count if args.count > 0 else None
    print(json.dumps(asyncio.run(fn(args.url, args.concurrency, args.tokens, seconds, count))))


# --- orchestration ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_source(paced: bool) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    argv = [sys.executable, __file__, "serve", "--port", str(port)] + (["--paced"] if paced else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, f"http://127.0.0.1:{port}"


def _source_lag(url: str) -> float | None:
    """The source's median lateness (ms) since the last call, see _answer_lag."""
    with urllib.request.urlopen(url + "/source-lag", timeout=30) as reply:
        return json.loads(reply.read())["median_ms"]


def _run_driver(
    python: str, client: str, url: str, concurrency: int, tokens: int, seconds: float, count: int, workflow: str
) -> dict:
    argv = [
        python,
        __file__,
        "drive",
        "--workflow",
        workflow,
        "--client",
        client,
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--tokens",
        str(tokens),
        "--seconds",
        str(seconds),
        "--count",
        str(count),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{client} driver failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    # (name in the table, driver, interpreter, attnbench's workflow folder)
    clients = [("ours", "ours", sys.executable, WORKFLOW), ("ours2p", "ours2p", sys.executable, WORKFLOW)]
    if args.baseline:
        clients.append(("base", "ours", sys.executable, os.path.join(os.path.abspath(args.baseline), "workflow")))
    if args.engine_python:
        clients.append(("vllm", "vllm", args.engine_python, WORKFLOW))
    rows = []
    for paced in (False, True):
        source, url = _start_source(paced)
        try:
            for c in levels:
                for _ in range(args.rounds):  # clients alternate, so a change of machine load hits both
                    for name, driver, python, workflow in clients:
                        if paced:  # enough requests for a stable median at every level
                            _source_lag(url)  # forget what earlier runs left
                            res = _run_driver(python, driver, url, c, PACED_TOKENS, 0, max(2 * c, 32), workflow)
                            res["source_lag_ms"] = _source_lag(url)
                        else:
                            res = _run_driver(python, driver, url, c, FAST_TOKENS, args.seconds, 0, workflow)
                        res["load"] = os.getloadavg()[0]
                        rows.append((paced, c, name, res))
                        print(f"  {'paced' if paced else 'max  '} c={c:<4} {name:6} {json.dumps(res)}", file=sys.stderr)
        finally:
            os.killpg(source.pid, 9)
            source.wait()
    _print_table(rows, levels, [name for name, *_ in clients], args.rounds)


def _print_table(rows: list, levels: list[int], names: list[str], rounds: int) -> None:
    print(
        f"\nclient overhead (load source: {FAST_TOKENS} tokens/request unpaced; "
        f"paced: TTFT {TTFT_DELAY_S * 1000:.0f} ms, "
        f"ITL {PACED_ITL_S * 1000:.0f} ms, {PACED_TOKENS} tokens)"
    )
    loads = [r["load"] for *_, r in rows]
    print(
        f"medians over {rounds} alternating rounds; host load average (1 min) while it ran: "
        f"{min(loads):.1f} to {max(loads):.1f}, now {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'conc':>5} {'client':>7} {'max tok/s':>11} {'failed':>7} {'TTFT err med ms':>16} {'TTFT err p99 ms':>16}"
        f" {'source lag ms':>14}"
    )
    table: dict[tuple[int, str], tuple[float, float]] = {}
    for c in levels:
        for name in names:
            fast = [r for p, cc, n, r in rows if not p and cc == c and n == name]
            paced = [r for p, cc, n, r in rows if p and cc == c and n == name]
            tps = statistics.median(r["tokens_per_s"] for r in fast)
            failed = sum(r["failed"] for r in fast + paced)
            err_med = statistics.median(r["ttft_ms_median"] for r in paced) - TTFT_DELAY_S * 1000
            err_p99 = statistics.median(r["ttft_ms_p99"] for r in paced) - TTFT_DELAY_S * 1000
            lag = statistics.median(r["source_lag_ms"] for r in paced)
            table[c, name] = (tps, err_med)
            print(f"{c:>5} {name:>7} {tps:>11.0f} {failed:>7} {err_med:>16.2f} {err_p99:>16.2f} {lag:>14.2f}")
    if "vllm" not in names:
        return
    print("\nagainst vLLM's client (target: tok/s >= 1.5x at 32 and 256, TTFT error <= 1/3 at every level)")
    for name in names:
        if name != "vllm":
            cells = []
            for c in levels:
                (tps, err), (vtps, verr) = table[c, name], table[c, "vllm"]
                cells.append(f"c={c}: tok/s {tps / vtps:.2f}x, TTFT err {err / verr:.2f}x")
            print(f"{name:>7}  " + "; ".join(cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--paced", action="store_true")
    d = sub.add_parser("drive")
    d.add_argument("--client", choices=["ours", "ours2p", "vllm"], required=True)
    d.add_argument("--url", required=True)
    d.add_argument("--concurrency", type=int, required=True)
    d.add_argument("--tokens", type=int, required=True)
    d.add_argument("--seconds", type=float, default=0)
    d.add_argument("--count", type=int, default=0)
    d.add_argument("--workflow", default=WORKFLOW)
    parser.add_argument("--engine-python", default=os.environ.get("ATTNBENCH_ENGINE_PYTHON"))
    parser.add_argument("--concurrency", default="1,32,256")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per client and level (median printed)")
    parser.add_argument(
        "--baseline",
        help="another checkout of this project (e.g. from git worktree or git archive): its client runs as 'base' "
        "beside this one's, in the same alternating rounds",
    )
    a = parser.parse_args()
    if a.cmd == "serve":
        serve(a.port, a.paced)
    elif a.cmd == "drive":
        drive(a)
    else:
        main(a)
