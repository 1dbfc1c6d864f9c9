"""Text cleaning before chunking: Unicode NFKC, control characters, runs of blank space, header and footer
lines repeated on most pages, and the web junk scraped pages carry after their content.

`clean_document` joins a document's parts (pages) into the one cleaned text that chunks are exact slices
of, and records where each page starts in it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from ingest.loaders import LoadedDocument

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
TRAILING_SPACE = re.compile(r"[ \t]+\n")
INLINE_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u3000]{2,}")  # leading indentation is kept
BLANK_LINES = re.compile(r"\n{3,}")

# Where scraped pages turn from the article to the site around it: related-article lists, reposting
# disclaimers, share/comment prompts (Chinese and English sites).
JUNK_MARKER = re.compile(
    r"^[#*\s]*(相关文章|相关推荐|相关阅读|推荐阅读|延伸阅读|猜你喜欢|热门文章|热门推荐|最新文章|上一篇|下一篇|"
    r"本文来自互联网用户投稿|如若转载|转载请注明|版权声明|免责声明|分享到|"
    r"related (?:articles|posts|stories|reading)|recommended (?:for you|reading|articles)|"
    r"you (?:may|might) also like|more from|share this|leave a (?:comment|reply)|comments \(\d+\))",
    re.IGNORECASE | re.MULTILINE,
)
TEASER_END = ("…", "...")  # teaser paragraphs of a related-articles list end cut off
JUNK_REGION = 0.6  # junk is only looked for after this fraction of the text
MIN_TEASERS = 3
MAX_TITLE_CHARS = 80
PARAGRAPH = re.compile(r"[^\n]+(?:\n[^\n]+)*")
EDGE_LINES = 3  # headers and footers are among the first / last lines of a page
DIGITS = re.compile(r"\d+")
MAX_NUMBERED_CHARS = 40  # a header/footer with a page number is short; a body line is not


@dataclass(frozen=True)
class CleanDocument:
    text: str
    page_starts: tuple[tuple[int, int], ...] = ()  # (offset in text, page number) for paged formats


def clean_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = CONTROL.sub("", text)
    text = TRAILING_SPACE.sub("\n", text)
    text = INLINE_SPACE.sub(" ", text)
    text = BLANK_LINES.sub("\n\n", text)
    return text.strip()


def clean_document(document: LoadedDocument) -> CleanDocument:
    parts = [clean_text(part) for part in document.parts]
    if document.paged:
        parts = strip_repeated_lines(parts)
    elif document.file_type in ("txt", "md", "html"):
        parts = [strip_web_junk(part) for part in parts]
    pieces: list[str] = []
    starts: list[tuple[int, int]] = []
    offset = 0
    for number, part in enumerate(parts, 1):
        if not part:
            continue
        if pieces:
            offset += 2  # the "\n\n" joining it to the previous part
        starts.append((offset, number))
        pieces.append(part)
        offset += len(part)
    return CleanDocument("\n\n".join(pieces), tuple(starts) if document.paged else ())


def strip_repeated_lines(pages: list[str]) -> list[str]:
    """Drop header/footer lines: a line among the first or last few of a page that recurs at the edge of
    most pages, exactly or, when short, up to its numbers (page 3 of 9). Pages that would lose all their
    text are left as they were."""
    if len(pages) < 3:
        return pages
    edges = [_edge_keys(page) for page in pages]
    seen = Counter(key for keys in edges for key in keys)
    threshold = max(3, math.ceil(0.6 * len(pages)))
    boilerplate = {key for key, count in seen.items() if count >= threshold}
    if not boilerplate:
        return pages
    cleaned = []
    for page in pages:
        lines = page.split("\n")
        edge = set(range(EDGE_LINES)) | set(range(len(lines) - EDGE_LINES, len(lines)))
        kept = [line for i, line in enumerate(lines) if not (i in edge and _line_key(line) in boilerplate)]
        cleaned.append("\n".join(kept).strip() or page)
    return cleaned


def _line_key(line: str) -> str:
    line = line.strip().lower()
    return DIGITS.sub("#", line) if len(line) <= MAX_NUMBERED_CHARS else line


def _edge_keys(page: str) -> set[str]:
    lines = page.split("\n")
    return {_line_key(line) for line in lines[:EDGE_LINES] + lines[-EDGE_LINES:] if line.strip()}


def strip_web_junk(text: str) -> str:
    """Cut what a scraped page appends after its article: from a junk marker line (related articles,
    reposting disclaimer, ...) or a run of cut-off teaser paragraphs, when it starts in the last part of
    the text."""
    floor = int(len(text) * JUNK_REGION)
    cut = len(text)
    marker = JUNK_MARKER.search(text, floor)
    if marker is not None:
        cut = marker.start()
    # A related-articles list: teasers that end cut off, each maybe under a short title line.
    teasers = 0
    run_start = len(text)
    title_allowed = False
    for paragraph in reversed(list(PARAGRAPH.finditer(text))):
        body = paragraph.group().rstrip()
        if body.endswith(TEASER_END):
            teasers += 1
            title_allowed = True
        elif title_allowed and len(body) <= MAX_TITLE_CHARS:
            title_allowed = False
        else:
            break
        run_start = paragraph.start()
    if teasers >= MIN_TEASERS and run_start >= floor:
        cut = min(cut, run_start)
    return text[:cut].rstrip()
