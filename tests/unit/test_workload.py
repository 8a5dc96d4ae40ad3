"""Exact-length prompt fitting against fake token counters (the real /tokenize path is an integration test)."""

import asyncio

import pytest

from attnbench.errors import SweepError
from attnbench.measure.workload import FILLER_WORD, WORD_POOL, fit_prompt, prompt_seed, prompt_words


def counter(template: int, per_word=lambda w: 1):
    """A fake server count: template tokens plus per-word tokens; records each call."""
    calls = []

    async def count(text: str) -> int:
        calls.append(text)
        return template + sum(per_word(w) for w in text.split())

    return count, calls


def fit(count, target, pseed=7):
    return asyncio.run(fit_prompt(count, target, pseed))


def test_one_word_one_token_hits_target_in_few_calls():
    count, calls = counter(14)
    text = fit(count, 45)
    assert len(text.split()) == 31
    assert len(calls) <= 3
    assert text.split() == prompt_words(7, 31)  # deterministic from the seed


def test_multi_token_words_converge_exactly():
    # A BPE-like tokenizer: words cost 1-3 tokens by their length.
    count, _ = counter(20, per_word=lambda w: 1 if w == FILLER_WORD else 1 + len(w) % 3)
    for target in (25, 45, 500, 2771):
        text = fit(count, target, pseed=target)
        assert asyncio.run(count(text)) == target


def test_target_below_template_is_a_clear_error():
    count, _ = counter(14)
    with pytest.raises(SweepError, match=r"target 14 tokens is below the minimum 15 .*take 14 tokens"):
        fit(count, 14)


def test_tokenizer_that_jumps_over_target_is_an_error():
    count, _ = counter(10, per_word=lambda w: 2)  # every word, even the filler, is 2 tokens: odd targets unreachable
    with pytest.raises(SweepError, match="cannot build a prompt of exactly 21 tokens"):
        fit(count, 21)


def test_prompts_differ_between_requests_and_seeds():
    assert prompt_words(prompt_seed(0, "short", 0), 8) != prompt_words(prompt_seed(0, "short", 1), 8)
    assert prompt_seed(0, "short", 0) != prompt_seed(1, "short", 0)
    assert prompt_seed(0, "short", 0) != prompt_seed(0, "long", 0)
    assert prompt_seed(3, "short", 5) == prompt_seed(3, "short", 5)
    # a longer prompt extends a shorter one of the same seed
    assert prompt_words(99, 10)[:4] == prompt_words(99, 4)


def test_word_pool_is_two_syllable_synthetic_words():
    from attnbench.engines.models import word_vocab

    vocab = set(word_vocab(4842))
    assert all(w in vocab for w in WORD_POOL)
