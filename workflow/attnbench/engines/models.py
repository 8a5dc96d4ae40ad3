"""Synthetic models: an architecture file plus a tokenizer where one word is one token.

vLLM's `--load-format dummy` builds a model from its config.json alone (random weights), so benchmarking attention
needs no download: we copy the HF architecture file into the model folder. The tokenizer is ours: a WordLevel
tokenizer over whitespace-separated words, so a prompt of k words is k tokens and exact prompt lengths are easy to
reason about. It carries Qwen's chat special tokens and a Qwen-style chat template, so the chat endpoint frames
prompts the way a Qwen model's server would.

The tokenizer folder must not contain a config.json: transformers would then read it as a model folder and look for
a tokenizer class of that architecture. We write tokenizer.json by hand (its JSON format is stable and documented by
the `tokenizers` library) so the project venv needs no tokenizers package; the engine venv loads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnbench.engines.files import write_json
from attnbench.errors import ConfigError

# Qwen's chat special tokens, then an unknown-word token (WordLevel needs one). They take the first ids.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"

# Words the chat template and the default system prompt use, so they are real tokens rather than <unk>.
TEMPLATE_WORDS = ["system", "user", "assistant", "You", "are", "a", "helpful", "assistant."]

# Qwen-style ChatML framing (without Qwen2.5's built-in default system prompt: the client sends its own).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70 syllables


def synthetic_word(i: int) -> str:
    """The i-th synthetic word: pronounceable, unique, at least two syllables ("baba", "babe", ...)."""
    n = len(_SYLLABLES)
    parts = []
    i += n  # skip one-syllable words so no word is a prefix-looking fragment of the template words
    while i:
        i, r = divmod(i, n)
        parts.append(_SYLLABLES[r])
    return "".join(reversed(parts))


def word_vocab(vocab_size: int) -> list[str]:
    """All tokens of the synthetic tokenizer in id order: specials, template words, synthetic words."""
    fixed = SPECIAL_TOKENS + TEMPLATE_WORDS
    if vocab_size < len(fixed) + 1:
        raise ConfigError(f"vocab_size {vocab_size} is too small for a synthetic tokenizer (need > {len(fixed)})")
    taken = set(fixed)
    words = list(fixed)
    i = 0
    while len(words) < vocab_size:
        w = synthetic_word(i)
        i += 1
        if w not in taken:
            words.append(w)
    return words


def _special_token(content: str) -> dict:
    """A special token as both tokenizer.json and tokenizer_config.json describe it."""
    return {
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def tokenizer_json(vocab_size: int) -> dict:
    words = word_vocab(vocab_size)
    added = [{"id": i, **_special_token(tok)} for i, tok in enumerate(SPECIAL_TOKENS)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        # Words are joined with single spaces when decoding.
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": UNK_TOKEN},
    }


def tokenizer_config(max_length: int) -> dict:
    added = {str(i): _special_token(tok) for i, tok in enumerate(SPECIAL_TOKENS)}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def write_synthetic_model(
    architecture_json: Path, model_dir: Path, tokenizer_dir: Path, extra: dict | None = None
) -> None:
    """Write model_dir/config.json (the architecture, with `extra` keys overriding) and a synthetic tokenizer
    sized to the model's vocab_size in tokenizer_dir. Deterministic: the same inputs give byte-identical files."""
    architecture_json = Path(architecture_json)
    try:
        config = json.loads(architecture_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"architecture file {architecture_json} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"architecture file {architecture_json} is not JSON: {exc.msg} (line {exc.lineno})") from None
    config.update(extra or {})
    for key in ("architectures", "vocab_size"):
        if key not in config:
            raise ConfigError(f"architecture file {architecture_json} lacks {key!r} (an HF config.json has it)")
    model_dir, tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
    if model_dir.resolve() == tokenizer_dir.resolve():
        raise ConfigError("model_dir and tokenizer_dir must differ: the tokenizer folder must not hold a config.json")
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / "config.json", config)
    max_length = int(config.get("max_position_embeddings", 4096))
    write_json(tokenizer_dir / "tokenizer.json", tokenizer_json(int(config["vocab_size"])))
    write_json(tokenizer_dir / "tokenizer_config.json", tokenizer_config(max_length))
    write_json(
        tokenizer_dir / "special_tokens_map.json",
        {
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "unk_token": UNK_TOKEN,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        },
    )
    stray = tokenizer_dir / "config.json"
    if stray.exists():
        raise ConfigError(f"{stray} exists: a tokenizer folder with a config.json is read as a model folder; remove it")


def _cmd_make_model(args: argparse.Namespace) -> int:
    extra = json.loads(args.extra) if args.extra else None
    write_synthetic_model(Path(args.architecture), Path(args.model_dir), Path(args.tokenizer_dir), extra)
    print(f"model: {args.model_dir}/config.json  tokenizer: {args.tokenizer_dir}")
    return 0


def register(subparsers) -> None:
    text = "write a synthetic model folder (dummy weights) and a one-word-one-token tokenizer"
    p = subparsers.add_parser("make-model", help=text, description=text)
    p.add_argument("--architecture", required=True, help="HF config.json of the architecture (config/models/*.json)")
    p.add_argument("--model-dir", required=True, help="folder to receive config.json")
    p.add_argument(
        "--tokenizer-dir", required=True, help="folder to receive the tokenizer (must differ from model dir)"
    )
    p.add_argument(
        "--extra",
        default=None,
        help="JSON object of config keys to override (e.g. '{\"max_position_embeddings\": 8192}')",
    )
    p.set_defaults(func=_cmd_make_model)
