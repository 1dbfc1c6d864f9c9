"""Extracted answers: the passage sentence closest to the question, cited, where the model cannot answer.

Two kinds of question get one when the model is the default SmolLM2 (`AnswerStyle`):
- CJK text: SmolLM2 was trained on English. Asked in Chinese, or over Chinese passages, it copies a span it
  cannot understand (an accepted keyword in 0.17 of the answers of the Chinese evaluation set). The answer
  is the sentence of the best passage that the collection's embedder (the multilingual e5 for a CJK
  collection) places closest to the question: the retriever chooses the passage, the embedder the sentence.
- How and why: its adapter learned SQuAD's short spans, so asked "How do I ingest a folder?" it answers
  `files [1]`. The answer is the sentence closest to the question among all the passages (the best
  passage of a documentation set often only quotes the question, in an example). A sentence that opens a
  code block (it ends with a colon) brings the block's command along.

A sentence that quotes the whole question is never the answer; nor are headings (a line opening with `#`),
the header rows of tables and the lines of code blocks (a command quoting another question is no answer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.rag.sentences import ITEM, sentence_spans
from retriever.embedder import TextEmbedder
from retriever.language import CJK_SHARE, cjk_share

TABLE_RULE = re.compile(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*")  # | --- | :---: | under a header row
QUANTITY = r"many|much|long|old|far|often|big|large|small|tall|high|fast|deep|wide|heavy|soon|early|late"
HOW_OR_WHY = re.compile(rf"\s*(?:how\b(?!\s+(?:{QUANTITY})\b)|why\b)", re.IGNORECASE)
# A fenced code block right after a sentence (blank lines between allowed), up to its closing fence.
CODE_AFTER_COLON = re.compile(r"\s*\n(?P<fence>```|~~~)[^\n]*\n(?P<code>.*?)(?:\n(?P=fence)|\Z)", re.DOTALL)
WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Extract:
    """The sentence of passage `n` at `span` (character offsets) in it, and `text`, the answer made of it:
    on one line, with the code block it opens."""

    n: int
    span: tuple[int, int]
    text: str


def reads_as_cjk(text: str) -> bool:
    return cjk_share(text) >= CJK_SHARE


def asks_how_or_why(question: str) -> bool:
    """A question of manner or reason in English ("How do I...", "Why..."), not of quantity ("How many")."""
    return HOW_OR_WHY.match(question) is not None


def closest_sentence(
    embedder: TextEmbedder, question: str, passages: Sequence[tuple[int, str]]
) -> Extract | None:
    """The sentence of the `passages` (number, text) whose embedding is closest to the question's, with
    the code block it opens; None when they hold no sentence but headings and quotes of the question."""
    asked = _normalized(question)
    candidates = [
        (n, text, span, scored)
        for n, text in passages
        for span, scored in _sentences(text)
        if not (asked and asked in _normalized(text[span[0] : span[1]]))
    ]
    if not candidates:
        return None
    query = embedder.embed_query(embedder.truncate(question))
    vectors = embedder.embed([embedder.truncate(scored) for *_, scored in candidates])
    n, text, (start, end), _ = candidates[int(np.argmax(vectors @ query))]
    sentence = _as_answer(text[start:end])
    block = CODE_AFTER_COLON.match(text, end) if sentence.endswith((":", "：")) else None
    if block is None:
        return Extract(n, (start, end), sentence)
    code = block.group("code").strip("\n")
    shown = f"`{code}`" if "\n" not in code else f"\n```\n{code}\n```\n"
    return Extract(n, (start, block.end()), f"{sentence} {shown}")


def _as_answer(sentence: str) -> str:
    """The sentence on one line (a document wraps its lines, an answer does not), without a list marker; a
    table row as its cells, `a — b`."""
    if sentence.startswith("|"):
        return " — ".join(" ".join(cell.split()) for cell in sentence.strip("|").split("|") if cell.strip())
    return " ".join(ITEM.sub("", sentence, count=1).split())


def _normalized(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def _sentences(passage: str) -> Sequence[tuple[tuple[int, int], str]]:
    """The passage's sentences (`app.rag.sentences`: a table row or a list item is one too), each
    trimmed of surrounding whitespace, with the text it is scored by: a table's data row is scored with the
    table's header row before it (a row of bare values says little alone); headings, header rows and the
    rows of dashes under them, and the lines of code blocks are left out."""
    lines = []
    for start, end in sentence_spans(passage, code=False):
        text = passage[start:end]
        start += len(text) - len(text.lstrip())
        end -= len(text) - len(text.rstrip())
        if start < end:
            lines.append((start, end))
    candidates = []
    header = ""
    for i, (start, end) in enumerate(lines):
        text = passage[start:end]
        following = passage[slice(*lines[i + 1])] if i + 1 < len(lines) else ""
        if text.startswith("#") or TABLE_RULE.fullmatch(text):
            continue
        if text.startswith("|") and TABLE_RULE.fullmatch(following):
            header = text
            continue
        if not text.startswith("|"):
            header = ""  # the table ended; a later one without a header row has none
        scored = f"{header}\n{text}" if header else text
        candidates.append(((start, end), scored))
    return candidates
