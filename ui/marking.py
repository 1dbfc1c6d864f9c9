"""A cited passage as markdown for the chat page, the span that supports the answer marked.

The passage is HTML-escaped so that its text shows as it is. Markdown shows the inside of a fenced code
block literally, so a `<mark>` (or an escaped quote) there would show as text: each fenced block becomes an
HTML `<pre><code>` block instead, with its part of the span marked inside it.
"""

from __future__ import annotations

import html
import re
from typing import Any

# A fenced code block: its opening fence line, its code (group 2), its closing fence or the passage's end
# (a chunk may end inside a block).
FENCED = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)


def highlighted(source: dict[str, Any]) -> str:
    """The passage of an API source as markdown with its `highlight` span marked."""
    text, span = source["text"], source.get("highlight")
    start, end = (span["start"], span["end"]) if span else (0, 0)
    parts, position = [], 0
    for block in FENCED.finditer(text):
        parts.append(_marked(text, position, block.start(), start, end))
        code_start, code_end = block.span(2)
        code = _marked(text, code_start, code_end, start, end).rstrip("\n")
        parts.append(f"\n<pre><code>{code}</code></pre>\n")
        position = block.end()
    parts.append(_marked(text, position, len(text), start, end))
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
