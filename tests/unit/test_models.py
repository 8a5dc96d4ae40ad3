"""The synthetic model writer: file layout, vocabulary shape, determinism, clear errors."""

import json
from pathlib import Path

import pytest

from attnbench.engines.models import SPECIAL_TOKENS, synthetic_word, word_vocab, write_synthetic_model
from attnbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "config" / "models" / "tiny-qwen2.json"


def test_writes_model_config_and_tokenizer_without_config_json(tmp_path):
    write_synthetic_model(TINY, tmp_path / "model", tmp_path / "tok")
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == json.loads(TINY.read_text())
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tok = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    assert len(vocab) == 32000 and sorted(vocab.values()) == list(range(32000))
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert [a["content"] for a in tok["added_tokens"]] == SPECIAL_TOKENS
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_end|>" and "<|im_start|>" in cfg["chat_template"]


def test_output_is_deterministic(tmp_path):
    write_synthetic_model(TINY, tmp_path / "a" / "m", tmp_path / "a" / "t")
    write_synthetic_model(TINY, tmp_path / "b" / "m", tmp_path / "b" / "t")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / "t" / name).read_bytes() == (tmp_path / "b" / "t" / name).read_bytes()


def test_extra_overrides_config_keys(tmp_path):
    write_synthetic_model(TINY, tmp_path / "m", tmp_path / "t", extra={"max_position_embeddings": 1234})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["max_position_embeddings"] == 1234
    assert json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())["model_max_length"] == 1234


def test_words_are_unique_and_whitespace_free():
    words = word_vocab(5000)
    assert len(set(words)) == 5000
    assert not any(ch.isspace() for w in words for ch in w)
    assert synthetic_word(0) != synthetic_word(1)


def test_missing_or_bad_architecture_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_synthetic_model(tmp_path / "nope.json", tmp_path / "m", tmp_path / "t")
    bad = tmp_path / "bad.json"
    bad.write_text('{"architectures": ["X"]}')
    with pytest.raises(ConfigError, match="vocab_size"):
        write_synthetic_model(bad, tmp_path / "m", tmp_path / "t")
    with pytest.raises(ConfigError, match="must differ"):
        write_synthetic_model(TINY, tmp_path / "same", tmp_path / "same")
