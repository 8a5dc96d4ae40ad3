"""One redaction policy for logs (redact_text / redact_file), run.json (redact) and bundles (bundle.scrub): values of
secret-named environment variables and headers go; ordinary words, booleans, numbers, paths and non-secret config keys
(model.tokenizer, api_key_env, max_tokens) stay, whichever writer handles them."""

from __future__ import annotations

import json

from attnbench.bundles import bundle
from attnbench.engines import provenance
from attnbench.engines.provenance import REDACTED

ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_TOKEN": "hf_Zz9Yy8Xx7Ww6Vv5Uu4",
    "VLLM_API_KEY": "k-0a1b2c3d4e5f",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENG",
    "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1",
    "MAX_TOKENS": "512",
    "MY_PASSWORD": "hunter22",
    "SHORT_TOKEN": "ab12",
    "SERVICE_TOKEN": "true",
}
SECRETS = ["hf_Zz9Yy8Xx7Ww6Vv5Uu4", "k-0a1b2c3d4e5f", "wJalrXUtnFEMIK7MDENG", "hunter22"]


def test_secret_values_are_the_secret_looking_values_of_secret_named_variables():
    assert sorted(provenance.secret_values(ENV)) == sorted(SECRETS)


def test_names_by_their_last_part():
    for name in ("HF_TOKEN", "VLLM_API_KEY", "api_key", "AWS_SECRET_ACCESS_KEY", "Authorization", "db.password"):
        assert provenance.is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "tokenizer", "api_key_env", "max_tokens", "SSH_AUTH_SOCK", "keys_seen"):
        assert not provenance.is_secret_name(name), name


def test_run_json_log_and_bundle_apply_the_same_policy(tmp_path):
    secrets = provenance.secret_values(ENV)
    cfg = {
        "model": {"tokenizer": "models/tok", "name": "m"},
        "sweep": {"api_key_env": "VLLM_API_KEY"},
        "flags": [True, False],
        "ignore_eos": False,
    }
    run = {"config": cfg, "server": {"env": dict(ENV), "argv": ["vllm", "--api-key", "k-0a1b2c3d4e5f"]}}
    red = provenance.redact(run, secrets)
    assert red["config"] == cfg  # non-secret keys and every false survive
    env = red["server"]["env"]
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["SSH_AUTH_SOCK"] == ENV["SSH_AUTH_SOCK"]
    assert env["MAX_TOKENS"] == "512" and env["SERVICE_TOKEN"] == "true"
    assert all(env[k] == REDACTED for k in ("HF_TOKEN", "VLLM_API_KEY", "AWS_SECRET_ACCESS_KEY", "MY_PASSWORD"))
    assert red["server"]["argv"][-1] == REDACTED

    log = (
        "INFO args: --api-key k-0a1b2c3d4e5f TOKENIZERS_PARALLELISM=false ignore_eos=False\n"
        "DEBUG header Authorization: Bearer abc.def-123\nDEBUG X-Api-Key: zzzzzzzz99\n"
        'DEBUG {"HF_TOKEN": "hf_Zz9Yy8Xx7Ww6Vv5Uu4", "ok": false, "tokenizer": "models/tok"}\n'
    )
    path = tmp_path / "server.log"
    path.write_text(log)
    provenance.redact_file(path, secrets)
    by_writer = {
        "log": path.read_text(),
        "bundle": bundle.scrub(log, bundle.secret_values({}, ENV)),
        "text": provenance.redact_text(log, secrets),
    }
    assert len(set(by_writer.values())) == 1, by_writer  # one policy: every writer gives the same text
    clean = by_writer["log"]
    for leaked in SECRETS + ["abc.def-123", "zzzzzzzz99"]:
        assert leaked not in clean
    for kept in ("TOKENIZERS_PARALLELISM=false", "ignore_eos=False", '"ok": false', '"tokenizer": "models/tok"'):
        assert kept in clean


def test_json_stays_valid_and_false_is_never_blanked():
    text = json.dumps({"a": False, "b": "false", "TOKENIZERS_PARALLELISM": "false", "SOME_TOKEN": "false"})
    out = provenance.redact_text(text, provenance.secret_values(ENV))
    assert json.loads(out) == json.loads(text)
