"""Prompts with exact token counts, as the server counts them (chat template included).

A prompt is a deterministic sequence of words drawn from a seed, different for every request so that the server's
prefix cache cannot serve one request from another's blocks. Its length is adjusted by asking the server itself
(vLLM's `POST /tokenize`, which accepts chat `messages` and applies the served chat template) until the count
equals the target. With the synthetic one-word-one-token tokenizer this takes two calls; with a real BPE tokenizer a
few more, ending with one-token filler words to land exactly.

Words come from attnbench.engines.models.synthetic_word: they are whole tokens of the synthetic tokenizer (an
English word would be <unk> there, and prompts made of identical <unk> ids would defeat the point of unique prompts).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Awaitable, Callable

import httpx

from attnbench.engines.models import synthetic_word
from attnbench.errors import SweepError
from attnbench.measure.client import chat_messages

# Two-syllable synthetic words: ids 12..4841 of the synthetic vocabulary, so any vocab_size >= 4842 has them all.
WORD_POOL = [synthetic_word(i) for i in range(70 * 70 - 70)]
FILLER_WORD = "a"  # a single token in the synthetic tokenizer and in the common BPE vocabularies
MAX_ADJUST_STEPS = 12

CountTokens = Callable[[str], Awaitable[int]]


def prompt_seed(seed: int, workload: str, index: int) -> int:
    """The RNG seed of one prompt: a pure function of (run seed, workload, request index), stored in each record so
    a prompt can be rebuilt from the raw file."""
    return zlib.crc32(f"{seed}:{workload}:{index}".encode())


def prompt_words(pseed: int, n: int) -> list[str]:
    """The first n words of the prompt with this seed; a longer prompt extends a shorter one (same prefix)."""
    rng = random.Random(pseed)
    return [rng.choice(WORD_POOL) for _ in range(n)]


async def fit_prompt(count_tokens: CountTokens, target: int, pseed: int) -> str:
    """A prompt of words from `pseed` whose served token count (count_tokens) equals `target` exactly.

    Raises SweepError when the target cannot be met: below the template's own length plus one word, or when the
    tokenizer jumps over it."""
    empty = await count_tokens("")
    one = await count_tokens(" ".join(prompt_words(pseed, 1)))
    if target < one:
        raise SweepError(
            f"prompt target {target} tokens is below the minimum {one} (the chat template and system prompt take "
            f"{empty} tokens by themselves, plus one word)"
        )
    n = max(1, target - empty)  # exact for one-word-one-token tokenizers; a first guess otherwise
    counts: dict[int, int] = {}
    for _ in range(MAX_ADJUST_STEPS):
        if n not in counts:
            counts[n] = await count_tokens(" ".join(prompt_words(pseed, n)))
        c = counts[n]
        if c == target:
            return " ".join(prompt_words(pseed, n))
        # Words are at least one token, so stepping by the deficit never overshoots from below; from above, shrink.
        step = target - c
        nxt = max(1, n + step) if step > 0 else max(1, n - max(1, (-step) // 2))
        if nxt in counts or nxt == n:
            break
        n = nxt
    # Largest word count still below the target, then one-token fillers up to it.
    below = [k for k, c in counts.items() if c < target]
    n = max(below) if below else 1
    words = prompt_words(pseed, n)
    c = counts.get(n) or await count_tokens(" ".join(words))
    while c < target:
        words.append(FILLER_WORD)
        c = await count_tokens(" ".join(words))
    if c != target:
        raise SweepError(f"cannot build a prompt of exactly {target} tokens (the tokenizer jumps from below to {c})")
    return " ".join(words)


class PromptBuilder:
    """Builds exact-length prompts against one server and caches them per (model, api, target, seed, index)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        model: str,
        *,
        api: str = "chat",
        system_prompt: str | None = None,
        headers: dict | None = None,
    ):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.system_prompt = system_prompt
        self.headers = headers or {}
        self._cache: dict[tuple, str] = {}

    async def count_tokens(self, prompt: str) -> int:
        if self.api == "chat":
            body = {
                "model": self.model,
                "messages": chat_messages(prompt, self.system_prompt),
                "add_generation_prompt": True,
            }
        else:
            body = {"model": self.model, "prompt": prompt}
        try:
            reply = await self.http.post(f"{self.base_url}/tokenize", json=body, headers=self.headers, timeout=60)
        except httpx.HTTPError as exc:
            raise SweepError(f"cannot count prompt tokens: POST {self.base_url}/tokenize failed ({exc!r})") from None
        if reply.status_code != 200:
            raise SweepError(
                f"cannot count prompt tokens: POST {self.base_url}/tokenize answered HTTP {reply.status_code} "
                f"({reply.text[:200]})"
            )
        try:
            return int(reply.json()["count"])
        except (ValueError, KeyError, TypeError):
            raise SweepError(f"POST {self.base_url}/tokenize reply has no 'count': {reply.text[:200]}") from None

    async def prompt(self, target: int, seed: int, workload: str, index: int) -> tuple[str, int]:
        """(prompt text, its prompt_seed) for request `index` of `workload`."""
        pseed = prompt_seed(seed, workload, index)
        key = (self.model, self.api, self.system_prompt, target, pseed)
        if key not in self._cache:
            self._cache[key] = await fit_prompt(self.count_tokens, target, pseed)
        return self._cache[key], pseed
