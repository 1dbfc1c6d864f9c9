"""Follow-up questions rewritten into standalone questions before retrieval.

"And who founded it?" retrieves nothing useful on its own. A small model is not a reliable rewriter, so
the rewrite is deterministic: when a question leans on the conversation (a pronoun, a leading "and",
or almost no content words of its own), the subject of the previous standalone question — its names, or
failing that its content words — replaces the first pronoun or is added in front.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.rag.grounding import STOPWORDS

WORD = re.compile(r"[\w'’-]+", re.UNICODE)
LEADING = re.compile(r"^\s*(and|but|also|so|then|what about|how about)\b[\s,]*", re.IGNORECASE)
PRONOUNS = {"it", "its", "they", "them", "their", "he", "him", "his", "she", "her", "this", "that", "these",
            "those", "there", "one"}  # fmt: skip
QUESTION_WORDS = {"what", "who", "whom", "whose", "which", "when", "where", "why", "how", "is", "are", "was",
                  "were", "do", "does", "did", "can", "could", "in", "on", "at", "for"}  # fmt: skip
NAME = re.compile(r"\b[A-Z0-9][\w'’-]*(?:\s+(?:of|the|de|von|van|and|&)?\s*[A-Z0-9][\w'’-]*)*")


def _content(words: Sequence[str]) -> list[str]:
    return [w for w in words if w.lower() not in STOPWORDS and w.lower() not in PRONOUNS]


def subject(question: str) -> str:
    """The names in a question ("Globex Corporation", "Super Bowl 50"), else its content words."""
    body = question.strip()
    first = WORD.match(body)
    if first and first.group(0).lower() in QUESTION_WORDS:
        body = body[first.end() :]  # a capitalised question word is not a name
    names = [m.group(0) for m in NAME.finditer(body) if m.group(0).lower() not in PRONOUNS]
    if names:
        return " ".join(names)
    return " ".join(_content(WORD.findall(body)))


def needs_context(question: str) -> bool:
    words = [w.lower() for w in WORD.findall(question)]
    return bool(LEADING.match(question)) or any(w in PRONOUNS for w in words) or len(_content(words)) <= 1


def standalone_question(question: str, previous: Sequence[str]) -> str:
    """`question` made self-contained using the most recent of the `previous` standalone questions."""
    question = question.strip()
    context = next((subject(q) for q in reversed(previous) if subject(q)), "")
    if not context or not needs_context(question):
        return question
    body = LEADING.sub("", question) or question
    for match in WORD.finditer(body):
        word = match.group(0).lower()
        if word in PRONOUNS:
            if word in {"its", "their", "his", "her"}:
                replacement = context + "'s"
            elif word == "there":
                replacement = "in " + context
            else:
                replacement = context
            rewritten = body[: match.start()] + replacement + body[match.end() :]
            return rewritten[0].upper() + rewritten[1:]
    return f"{context}: {body[0].upper()}{body[1:]}"


def standalone_history(questions: Sequence[str]) -> list[str]:
    """Each question of a conversation made standalone in turn, so a follow-up of a follow-up still
    carries the original subject."""
    history: list[str] = []
    for question in questions:
        history.append(standalone_question(question, history))
    return history
