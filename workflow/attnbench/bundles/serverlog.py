"""Prompts elided from a server log's request lines before the log enters a bundle.

vLLM 0.7.1 logs every request at INFO with its whole prompt and prompt token ids, one line each:

    INFO 12-06 13:01:04 logger.py:37] Received request chatcmpl-0350...: prompt: '<|im_start|>system\\n...',
    params: SamplingParams(n=1, ...), prompt_token_ids: None, lora_request: None, prompt_adapter_request: None.

(later versions add fields after the ids). vLLM 0.32 logs requests only when asked, and the prompt only in a DEBUG
line, `Request <id> details: prompt: '...', prompt_token_ids: [...], prompt_embeds shape: None.`, which has the same
two fields. The article's server command line is reproduced as it was, so 0.7.1's logs keep these lines; they are
about half of its bundle's unpacked bytes and carry nothing a check reads (the prompts are synthetic, and the
records hold their token counts). The bundle keeps each such line with its request id and sampling parameters, and
puts in place of the prompt and its ids how long they were: `prompt: <elided: 11234 chars>`,
`prompt_token_ids: <elided: 2771 ids>`.

Only lines of exactly that shape change (the prompt a complete Python string literal, the ids a list of integers);
every other line, and any line this does not recognise, stays byte for byte.
"""

from __future__ import annotations

import ast
import re

# A Python str repr as vLLM's `%r` writes it: one line, quotes inside escaped (or the other quote used).
_PY_STR = r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\""
_REQUEST = re.compile(
    r"(?P<head>(?:\bReceived request \S+|\bRequest \S+ details): prompt: )(?P<prompt>" + _PY_STR + r"|None)"
    r"(?P<params>, params: .*?)?, prompt_token_ids: (?P<ids>\[[0-9, ]*\]|None)(?=, )"
)
# A line that carries a marker: what verify counts against the manifest's elided_lines.
_MARKED = re.compile(r"^.*?\bprompt(?:_token_ids)?: <elided: \d+ (?:chars|ids)>", re.MULTILINE)


def _elided_prompt(literal: str) -> str | None:
    """The marker for a logged prompt, or None when the text is not a string literal after all."""
    try:
        prompt = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return None
    return f"<elided: {len(prompt)} chars>" if isinstance(prompt, str) else None


def _elided_ids(ids: str) -> str:
    inner = ids.strip("[] ")
    return f"<elided: {inner.count(',') + 1 if inner else 0} ids>"


def _elide_line(m: re.Match) -> str:
    prompt, ids = m["prompt"], m["ids"]
    if prompt != "None":
        prompt = _elided_prompt(prompt)
        if prompt is None:  # not a prompt we can measure: leave the line as it is
            return m[0]
    if ids != "None":
        ids = _elided_ids(ids)
    return f"{m['head']}{prompt}{m['params'] or ''}, prompt_token_ids: {ids}"


def elide_requests(text: str) -> tuple[str, int]:
    """text with the prompt and prompt token ids of every request-log line replaced by their lengths, and how many
    lines changed."""
    lines = text.split("\n")
    out = [_REQUEST.sub(_elide_line, line) for line in lines]
    return "\n".join(out), sum(old != new for old, new in zip(lines, out))


def count_lines(text: str) -> int:
    """Newlines, as `wc -l` counts a log's lines (tqdm's \\r stays inside a line); elision never adds or drops one."""
    return text.count("\n")


def count_marked(text: str) -> int:
    """Lines that carry an elision marker."""
    return len(_MARKED.findall(text))
