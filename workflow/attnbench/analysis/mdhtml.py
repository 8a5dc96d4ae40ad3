"""Markdown -> HTML for the subset the report uses (headings, paragraphs, lists, pipe tables, images, code spans):
report.html is one self-contained file, its PNGs embedded, readable without the experiment folder."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #bbb;padding:2px 6px}"
    "th{background:#eee}td.r{text-align:right}img{max-width:100%}code{background:#f4f4f4}"
)


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _table_html(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    head, rule, body = cells(lines[0]), cells(lines[1]), [cells(x) for x in lines[2:]]
    right = [c.endswith(":") for c in rule]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        out.append(
            "<tr>" + "".join(f"<td{' class=r' if r else ''}>{_inline(c)}</td>" for c, r in zip(row, right)) + "</tr>"
        )
    return "\n".join(out + ["</table>"])


def _image_html(alt: str, src: str, base: Path) -> str:
    path = base / src
    if path.exists() and path.suffix == ".png":
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="{src}"></p>'


def md_to_html(md: str, base: Path, title: str) -> str:
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table_html(block))
        elif m := re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", line):
            out.append(_image_html(m.group(1), m.group(2), base))
            i += 1
        elif line.startswith("- "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("- "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||!\[|- )", lines[i]):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{'<br>'.join(_inline(p) for p in para)}</p>")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
