"""JSON from untrusted hands (a bundle received from a peer): bounded nesting, bounded numbers, no NaN/Infinity,
and a printable form for any name or value that reaches the terminal. `read_json` and `load_file` are the strict
readers (run folders, bundles); engines/files.read_json is the lenient one for the engines' own records, where a
damaged record counts as not written yet.

The standard parser accepts `NaN`, turns `1e999` into inf, raises a bare ValueError on an integer of 5000 digits and
a RecursionError on deep nesting; each of these became a traceback in `attnbench verify`. Here every one of them is
an `UnsafeInputError` whose message names the file and line.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnbench.errors import UnsafeInputError

MAX_DEPTH = 32  # a manifest nests about 6 deep; a run.json about 5
MAX_NUMBER_CHARS = 40  # a float printed by Python is at most ~24 characters; ints in our files are far shorter
MAX_LINE_CHARS = 16 << 20  # one JSONL record (a request's itl list is a few KB per 1000 tokens)


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"integer of {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} overflows to infinity")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth without recursion (the value may be as deep as the parser allowed); scalars are not pushed,
    so a record's long list of numbers costs one pass of a type check."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((v, depth + 1) for v in children if isinstance(v, (dict, list)))
    return deepest


# Numbers that need the checking float hook: a long run of digits or a 3-digit exponent (1e999 overflows to inf).
# Text without them (nearly all) parses with the fast built-in float conversion.
_SUSPECT_NUMBER = re.compile(rf"\d{{{MAX_NUMBER_CHARS - 5},}}|[eE][+-]?\d{{3,}}")


def loads(text: str, where: str) -> Any:
    """Parse one JSON document; raise UnsafeInputError naming `where` for anything a careless parser would crash
    on or silently accept (NaN, Infinity, huge numbers, nesting deeper than MAX_DEPTH)."""
    try:
        float_hook = _parse_float if _SUSPECT_NUMBER.search(text) else None
        value = json.loads(text, parse_int=_parse_int, parse_float=float_hook, parse_constant=_reject_constant)
    except RecursionError:
        raise UnsafeInputError(f"{printable(where)}: JSON nested deeper than {MAX_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise UnsafeInputError(
            f"{printable(where)}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:  # raised by the hooks above
        raise UnsafeInputError(f"{printable(where)}: {exc}") from None
    if _depth(value) > MAX_DEPTH:
        raise UnsafeInputError(f"{printable(where)}: JSON nested deeper than {MAX_DEPTH}")
    return value


def read_text(path: Path, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeInputError(f"{printable(where)}: not UTF-8 text (byte {exc.start})") from None


def load_file(path: Path, where: str) -> Any:
    return loads(read_text(path, where), where)


def read_json(path: Path, where: str | None = None) -> Any | None:
    """A JSON file that may be absent (run.json of a run still going, kernels.json without a probe): None when it
    is, the value when it parses, UnsafeInputError naming `where` (default: the path) when it does not."""
    try:
        return load_file(path, str(path) if where is None else where)
    except FileNotFoundError:
        return None


def iter_jsonl(path: Path, where: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSONL file."""
    with Path(path).open(encoding="utf-8", errors="strict") as fh:
        lineno = 0
        while True:
            try:
                line = fh.readline(MAX_LINE_CHARS + 1)
            except UnicodeDecodeError:
                raise UnsafeInputError(f"{printable(where)}: not UTF-8 text (after line {lineno})") from None
            if not line:
                return
            lineno += 1
            if len(line) > MAX_LINE_CHARS:
                raise UnsafeInputError(f"{printable(where)}:{lineno}: line longer than {MAX_LINE_CHARS} characters")
            if line.strip():
                yield lineno, loads(line, f"{where}:{lineno}")


def printable(value: object, limit: int = 200) -> str:
    """A one-line, terminal-safe rendering: control and format characters (newlines, ESC sequences, bidi
    overrides) become visible escapes, so a member name or a record value cannot print a line of its own."""
    text = value if isinstance(value, str) else repr(value)
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zl", "Zp"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."
