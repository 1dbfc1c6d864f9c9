"""A cited passage as markdown for the chat page, the span that supports the answer marked.

The passage is HTML-escaped so that its text shows as it is. Markdown shows the inside of code literally,
so a `<mark>` or an escaped `<` there would show as text: each line of a fenced block and each inline code
span becomes an HTML `<code>` element, with its part of the span marked inside it (the page's code-block
element shows plain text only). A mark never covers what makes a line a list item, heading or quote, nor
a table row's `|`, which markdown must see at the start of the line to read it.
"""

from __future__ import annotations

import html
import re
from typing import Any

# A fenced code block: its opening fence line, its code (group 2), its closing fence or the passage's end
# (a chunk may end inside a block).
FENCED = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
# Within prose: an inline code span (its code in group 2), or a table cell's border.
INLINE = re.compile(r"(`+)(.+?)\1|\|", re.DOTALL)
# What opens a list item, a heading or a quote line.
BLOCK_PREFIX = re.compile(r"[ \t]*(?:[-*+][ \t]+|\d{1,3}[.)][ \t]+|#{1,6}[ \t]+|>[ \t]*)")


def highlighted(source: dict[str, Any]) -> str:
    """The passage of an API source as markdown with its `highlight` span marked."""
    text, span = source["text"], source.get("highlight")
    start, end = (span["start"], span["end"]) if span else (0, 0)
    if start < end and (start == 0 or text[start - 1] == "\n"):
        prefix = BLOCK_PREFIX.match(text, start, end)
        start = prefix.end() if prefix else start
    parts, position = [], 0
    for block in FENCED.finditer(text):
        parts.append(_prose(text, position, block.start(), start, end))
        parts.append(f"\n<div>{_code_lines(text, *block.span(2), start, end)}</div>\n")
        position = block.end()
    parts.append(_prose(text, position, len(text), start, end))
    return "".join(parts)


def _code_lines(text: str, low: int, high: int, start: int, end: int) -> str:
    """The lines of a code block as inline code, one per line: the page's code-block element shows only
    plain text, so a mark inside it would not show."""
    lines, position = [], low
    for line in text[low:high].rstrip("\n").split("\n"):
        lines.append(
            f"<code>{_marked(text, position, position + len(line), start, end)}</code>" if line else ""
        )
        position += len(line) + 1
    return "<br>".join(lines)


def _prose(text: str, low: int, high: int, start: int, end: int) -> str:
    """`text[low:high]`, outside code blocks, escaped and marked piece by piece around its inline code."""
    parts, position = [], low
    for piece in INLINE.finditer(text, low, high):
        parts.append(_marked(text, position, piece.start(), start, end))
        if piece.group(0) == "|":
            parts.append("|")
        else:
            code_start, code_end = piece.span(2)
            parts.append(f"<code>{_marked(text, code_start, code_end, start, end)}</code>")
        position = piece.end()
    parts.append(_marked(text, position, high, start, end))
    return "".join(parts)


def _marked(text: str, low: int, high: int, start: int, end: int) -> str:
    """`text[low:high]` HTML-escaped, the part of it within `start:end` marked, without the whitespace
    around it (a mark across a blank line would split into two paragraphs)."""
    first, last = min(max(start, low), high), min(max(end, low), high)
    while first < last and text[first].isspace():
        first += 1
    while first < last and text[last - 1].isspace():
        last -= 1
    if first >= last:
        return html.escape(text[low:high])
    before, inside, after = text[low:first], text[first:last], text[last:high]
    return f"{html.escape(before)}<mark>{html.escape(inside)}</mark>{html.escape(after)}"
