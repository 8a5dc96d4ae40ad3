"""/metrics scraping: parsing with prometheus-client, absent or malformed /metrics recorded (not fatal), and the
per-level summary. A small real HTTP server on 127.0.0.1 plays /metrics (the real vLLM one is scraped in
tests/integration/test_engine_openloop.py)."""

import http.server
import threading

import pytest

from attnbench.measure.servermetrics import Scraper, parse, read, run_summary, summarize

TEXT = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{{engine="0",model_name="m"}} {pre}
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {n}
vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {n}
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {s}
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 12.0
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    replies: list = []

    def do_GET(self):  # http.server's name
        status, body = self.replies.pop(0) if self.replies else (200, TEXT.format(running=0, kv=0, pre=0, n=0, s=0))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_parse_keeps_vllm_samples_without_buckets():
    values = parse(TEXT.format(running=3, kv=0.25, pre=2, n=4, s=0.8))
    assert values == {
        "vllm:num_requests_running": 3.0,
        "vllm:kv_cache_usage_perc": 0.25,
        "vllm:num_preemptions_total": 2.0,
        "vllm:time_to_first_token_seconds_count": 4.0,
        "vllm:time_to_first_token_seconds_sum": 0.8,
    }
    with pytest.raises(ValueError):
        parse("<html>not metrics</html>")


def test_absent_and_malformed_metrics_are_recorded_not_fatal(metrics_server, tmp_path):
    srv, url = metrics_server
    _Handler.replies = [
        (404, "no such page"),
        (200, "<html>{ not metrics</html>"),
        (200, TEXT.format(running=1, kv=0.1, pre=5, n=10, s=1.0)),
        (200, TEXT.format(running=4, kv=0.6, pre=7, n=30, s=5.0)),
        (200, TEXT.format(running=0, kv=0.2, pre=8, n=40, s=7.0)),
    ]
    path = tmp_path / "servermetrics.jsonl"
    level = {"workload": "short", "concurrency": 4}
    with Scraper(url, path, interval_s=0) as scraper:
        scraper.mark("start", {"workload": "bad", "concurrency": 1})
        scraper.mark("end", {"workload": "bad", "concurrency": 1})
        scraper.mark("start", level)
        scraper.scrape("interval")
        scraper.mark("end", level)
    scrapes = read(path)
    assert [s["ok"] for s in scrapes] == [False, False, True, True, True]
    assert scrapes[0]["error"].startswith("HTTP 404") and scrapes[1]["error"].startswith("malformed /metrics")
    bad, good = summarize(scrapes)
    assert bad["ok"] is False and "HTTP 404" in bad["error"]
    assert good["ok"] and good["running_max"] == 4 and good["kv_cache_usage_max"] == 0.6
    assert good["preemptions"] == 3  # counter: end - start
    assert good["server_ttft_ms_mean"] == pytest.approx(6.0 / 30 * 1000)  # (7.0 - 1.0) s over 30 requests
    assert run_summary(tmp_path) == {"scrapes": 5, "failed": 2, "first_error": scrapes[0]["error"]}


def test_unreachable_server_and_background_interval(tmp_path):
    path = tmp_path / "servermetrics.jsonl"
    with Scraper("http://127.0.0.1:9", path, interval_s=0.05) as scraper:
        scraper.mark("start", {"workload": "w", "concurrency": 1})
        threading.Event().wait(0.3)
    scrapes = read(path)
    assert len(scrapes) >= 3 and not any(s["ok"] for s in scrapes)  # the thread kept scraping, nothing raised
    assert {s["event"] for s in scrapes} == {"start", "interval"} and "ConnectError" in scrapes[0]["error"]


def test_disabled_scraper_writes_nothing(tmp_path):
    with Scraper("http://127.0.0.1:9", tmp_path / "s.jsonl", enabled=False) as scraper:
        scraper.mark("start", {"workload": "w", "concurrency": 1})
    assert not (tmp_path / "s.jsonl").exists()
