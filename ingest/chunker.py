"""Structure- and token-aware chunking.

The cleaned text is read as Markdown blocks (headings, fenced code, tables, paragraphs). A chunk never
crosses a heading, so each has one heading path ("Setup > Install"); code blocks and tables stay whole when
they fit, and a block that does not fit is cut at lines, then sentences (English . ! ? and Chinese 。！？；),
then words or characters. Consecutive units of a section are packed up to the token budget, each chunk
starting with the last units of the previous one as overlap.

Chunks are exact slices of the cleaned text (`text[char_start:char_end]`), so citations point back into it.
Sizes are counted with the embedder's tokenizer; what the embedder reads (title and heading path, then the
chunk) never exceeds its limit.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.config import ChunkerConfig
from retriever.records import ChunkDraft

TokenCounter = Callable[[Sequence[str]], list[int]]
Piece = tuple[int, int, int, bool]  # start, end, tokens, whether counted exactly
Passage = Callable[[str, str], str]  # (document title, text) -> what the embedder reads

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(\S.*?)[ \t]*#*[ \t]*$")
TABLE_ROW = re.compile(r"^[ \t]*\|")
LINE_BREAK = re.compile(r"\n")
SENTENCE_END = re.compile(
    r"(?<=[.!?])[\"'”’)\]]*\s+"  # Latin . ! ? (then closing quotes or brackets) and a space
    r"|(?<=[。！？；])[”’」』）)]*"  # CJK sentence marks, which need no space after them
    r"|(?<=[\u3400-\u9fff][!?;])[”’」』)]*"  # NFKC makes ！？； ASCII; after CJK they still count
)
WORD = re.compile(r"\S+\s*")
PATH_SEPARATOR = " > "
SAFETY_TOKENS = 2  # the separator between heading path and chunk may cost a token of its own
MIN_BUDGET = 16


@dataclass(frozen=True)
class Block:
    start: int
    end: int
    kind: str  # heading, code, table, text
    level: int = 0  # heading level
    title: str = ""  # heading text


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    tokens: int
    section: int  # index into the chunking's section paths
    heading: bool = False
    exact: bool = True  # `tokens` was counted on exactly this span, not summed from its parts


@dataclass(frozen=True)
class Chunk:
    draft: ChunkDraft
    embed_text: str  # title, the heading path not already in the chunk, then the chunk


def parse_blocks(text: str) -> list[Block]:
    """Markdown blocks of `text`, in order, each stripped of surrounding blank space."""
    lines = _lines(text)
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        start, end = lines[i]
        line = text[start:end]
        if not line.strip():
            i += 1
            continue
        fence = FENCE.match(line)
        heading = HEADING.match(line)
        if fence:
            closing = re.compile(rf"^[ \t]*{re.escape(fence.group(1)[0])}{{{len(fence.group(1))},}}[ \t]*$")
            j = i + 1
            while j < len(lines) and not closing.match(text[lines[j][0] : lines[j][1]]):
                j += 1
            j = min(j, len(lines) - 1)
            blocks.append(Block(start, lines[j][1], "code"))
            i = j + 1
            continue
        if heading:
            blocks.append(Block(start, end, "heading", len(heading.group(1)), heading.group(2)))
            i += 1
            continue
        kind = "table" if TABLE_ROW.match(line) else "text"
        j = i + 1
        while j < len(lines):
            following = text[lines[j][0] : lines[j][1]]
            if not following.strip() or FENCE.match(following) or HEADING.match(following):
                break
            if (TABLE_ROW.match(following) is not None) != (kind == "table"):
                break
            j += 1
        blocks.append(Block(start, lines[j - 1][1], kind))
        i = j
    return [Block(*_strip(text, b.start, b.end), b.kind, b.level, b.title) for b in blocks]


def _lines(text: str) -> list[tuple[int, int]]:
    spans = []
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        if end == -1:
            end = len(text)
        spans.append((start, end))
        start = end + 1
    return spans


class Chunker:
    def __init__(
        self,
        config: ChunkerConfig,
        count_tokens: TokenCounter,
        max_tokens: int,
        passage: Passage | None = None,
    ) -> None:
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.chunk_tokens = min(config.chunk_tokens, max_tokens)
        self.overlap = min(config.overlap_tokens, self.chunk_tokens // 4)
        self.passage: Passage = passage or (lambda title, text: text)

    def embed_text(self, title: str, headings: Sequence[str], text: str) -> str:
        context = [h for h in headings if h != title]
        return self.passage(title, PATH_SEPARATOR.join(context) + "\n" + text if context else text)

    def chunk(self, text: str, title: str = "", page_starts: Sequence[tuple[int, int]] = ()) -> list[Chunk]:
        blocks = parse_blocks(text)
        if not blocks:
            return []
        paths, sections = self._sections(blocks)
        budgets = self._budgets(title, paths)
        units = self._units(text, blocks, sections, budgets)
        counted = self._verified(text, self._pack(units, budgets), budgets)
        offsets = [offset for offset, _ in page_starts]
        chunks = []
        for ordinal, (group, tokens) in enumerate(counted):
            start, end = group[0].start, group[-1].end
            path = paths[group[-1].section]
            page = page_starts[bisect.bisect_right(offsets, start) - 1][1] if page_starts else None
            # Headings that open this chunk are in its text already; only the ones above it are prepended.
            above = [heading for heading, offset in path if offset < start]
            draft = ChunkDraft(
                ordinal=ordinal,
                text=text[start:end],
                char_start=start,
                char_end=end,
                token_count=tokens,
                page=page,
                heading_path=PATH_SEPARATOR.join(heading for heading, _ in path),
            )
            chunks.append(Chunk(draft, self.embed_text(title, above, draft.text)))
        return chunks

    @staticmethod
    def _sections(blocks: list[Block]) -> tuple[list[tuple[tuple[str, int], ...]], list[int]]:
        """The heading path of each section (a heading and what follows it), and each block's section."""
        paths: list[tuple[tuple[str, int], ...]] = [()]
        stack: list[tuple[int, str, int]] = []
        sections = []
        for block in blocks:
            if block.kind == "heading":
                while stack and stack[-1][0] >= block.level:
                    stack.pop()
                stack.append((block.level, block.title, block.start))
                paths.append(tuple((title, offset) for _, title, offset in stack))
            sections.append(len(paths) - 1)
        return paths, sections

    def _budgets(self, title: str, paths: list[tuple[tuple[str, int], ...]]) -> list[int]:
        """Tokens a chunk of each section may hold: the chunk size, less what the embedder reads before the
        chunk (title and the whole heading path, an upper bound on the part that is prepended)."""
        prefixes = [self.embed_text(title, [heading for heading, _ in path], "") for path in paths]
        overheads = self.count_tokens(prefixes)
        return [
            max(MIN_BUDGET, min(self.chunk_tokens, self.max_tokens - overhead - SAFETY_TOKENS))
            for overhead in overheads
        ]

    def _units(self, text: str, blocks: list[Block], sections: list[int], budgets: list[int]) -> list[Unit]:
        counts = self.count_tokens([text[b.start : b.end] for b in blocks])
        units: list[Unit] = []
        for block, section, tokens in zip(blocks, sections, counts, strict=True):
            budget = budgets[section]
            if tokens <= budget:
                units.append(Unit(block.start, block.end, tokens, section, block.kind == "heading"))
            else:
                pieces = self._fit(text, block.start, block.end, budget, 0)
                units.extend(
                    Unit(start, end, count, section, exact=exact) for start, end, count, exact in pieces
                )
        return units

    def _fit(self, text: str, start: int, end: int, budget: int, level: int) -> list[Piece]:
        """Cut an over-long span into pieces within `budget`: at line breaks, then sentence ends, then
        words (or characters, for unspaced scripts)."""
        if level == 2:
            return self._windows(text, start, end, budget)
        separator = LINE_BREAK if level == 0 else SENTENCE_END
        bounds = [_strip(text, s, e) for s, e in _split(text, separator, start, end)]
        if len(bounds) <= 1:
            return self._fit(text, start, end, budget, level + 1)
        counts = self.count_tokens([text[s:e] for s, e in bounds])
        pieces: list[Piece] = []
        for (s, e), count in zip(bounds, counts, strict=True):
            if count <= budget:
                pieces.append((s, e, count, True))
            else:
                pieces.extend(self._fit(text, s, e, budget, level + 1))
        return pieces

    def _windows(self, text: str, start: int, end: int, budget: int) -> list[Piece]:
        words = [(m.start(), m.end()) for m in WORD.finditer(text, start, end)]
        counts = self.count_tokens([text[s:e] for s, e in words])
        spans: list[tuple[int, int]] = []
        for (s, e), count in zip(words, counts, strict=True):
            spans.extend([(s, e)] if count <= budget else [(i, i + 1) for i in range(s, e)])
        if len(spans) != len(words):
            counts = self.count_tokens([text[s:e] for s, e in spans])
        windows: list[Piece] = []
        window_start, used, window_end = spans[0][0], 0, spans[0][1]
        for (s, e), count in zip(spans, counts, strict=True):
            if used and used + count > budget:
                windows.append((*_strip(text, window_start, window_end), used, False))
                window_start, used = s, 0
            used += count
            window_end = e
        windows.append((*_strip(text, window_start, window_end), used, False))
        return windows

    def _pack(self, units: list[Unit], budgets: list[int]) -> list[list[Unit]]:
        """Greedily pack consecutive units of a section; a heading opens a new chunk unless the chunk so far
        holds only headings, and a chunk cut for size starts with the previous one's last units."""
        groups: list[list[Unit]] = []
        current: list[Unit] = []
        used = 0
        for unit in units:
            budget = budgets[unit.section]
            opens_section = unit.heading and any(not u.heading for u in current)
            if current and (opens_section or used + unit.tokens > budget):
                groups.append(current)
                current, used = ([], 0) if opens_section else self._overlap_tail(current, unit.tokens, budget)
            current.append(unit)
            used += unit.tokens
        if current:
            groups.append(current)
        return groups

    def _overlap_tail(self, units: list[Unit], incoming: int, budget: int) -> tuple[list[Unit], int]:
        tail: list[Unit] = []
        used = 0
        for unit in reversed(units):
            if unit.heading or used + unit.tokens > self.overlap or used + unit.tokens + incoming > budget:
                break
            tail.insert(0, unit)
            used += unit.tokens
        return tail, used

    def _verified(
        self, text: str, groups: list[list[Unit]], budgets: list[int]
    ) -> list[tuple[list[Unit], int]]:
        """Exact token counts of the chunks: tokens are not quite additive across unit boundaries (nor
        within word windows), so a chunk found over its budget is halved and counted again."""
        items: list[tuple[list[Unit], int | None]] = [
            (group, group[0].tokens if len(group) == 1 and group[0].exact else None) for group in groups
        ]
        while pending := [i for i, (_, count) in enumerate(items) if count is None]:
            counted = dict(
                zip(pending, self.count_tokens([_text(text, items[i][0]) for i in pending]), strict=True)
            )
            fixed: list[tuple[list[Unit], int | None]] = []
            for i, (group, count) in enumerate(items):
                count = counted.get(i, count)
                assert count is not None
                if count <= budgets[group[-1].section]:
                    fixed.append((group, count))
                elif len(group) > 1:
                    fixed += [(group[: len(group) // 2], None), (group[len(group) // 2 :], None)]
                else:
                    fixed += [([half], None) for half in _halves(text, group[0])]
            items = fixed
        return [(group, count) for group, count in items if count is not None]


def _text(text: str, group: list[Unit]) -> str:
    return text[group[0].start : group[-1].end]


def _halves(text: str, unit: Unit) -> list[Unit]:
    """A unit cut in two near its middle, at a space when there is one."""
    middle = (unit.start + unit.end) // 2
    space = text.rfind(" ", unit.start + 1, middle + 1)
    cut = space if space > unit.start else max(middle, unit.start + 1)
    return [
        Unit(*_strip(text, unit.start, cut), unit.tokens, unit.section, exact=False),
        Unit(*_strip(text, cut, unit.end), unit.tokens, unit.section, exact=False),
    ]


def _split(text: str, separator: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    bounds = []
    position = start
    for match in separator.finditer(text, start, end):
        if match.end() > position:
            bounds.append((position, match.end()))
            position = match.end()
    if position < end:
        bounds.append((position, end))
    return [(s, e) for s, e in bounds if text[s:e].strip()]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
