"""Sentence splitting for grounding's highlights and extracted answers: hard-wrapped prose reads on across
its line breaks, Markdown's block lines stand alone, CJK sentences end without whitespace."""

from __future__ import annotations

from app.rag.sentences import sentence_spans


def sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in sentence_spans(text)]


def test_chinese_sentences_end_without_whitespace() -> None:
    assert sentences("它很快!但是很贵;所以少用。还有别的吗？有。") == [
        "它很快!",
        "但是很贵;",
        "所以少用。",
        "还有别的吗？",
        "有。",
    ]


def test_a_hard_wrapped_sentence_is_one_sentence_and_a_blank_line_ends_one() -> None:
    text = (
        "Each collection has a version number that grows with every change. Before a search, the\n"
        "collection's index is compared with that version\n\nA new paragraph"
    )
    assert sentences(text) == [
        "Each collection has a version number that grows with every change.",
        "Before a search, the\ncollection's index is compared with that version",
        "A new paragraph",
    ]


def test_markdown_block_lines_stand_alone_and_list_items_read_on() -> None:
    text = (
        "## Install\n"
        "Run it once\n"
        "| command | what |\n"
        "| --- | --- |\n"
        "| ingest | reads files |\n"
        "- an item that is\n"
        "  wrapped here\n"
        "2. a numbered item\n"
        "> a quote\n"
        "```\n"
        "archivist ingest docs\n"
        'archivist ask "why?"\n'
        "```\n"
        "The end"
    )
    assert sentences(text) == [
        "## Install",
        "Run it once",
        "| command | what |",
        "| --- | --- |",
        "| ingest | reads files |",
        "- an item that is\n  wrapped here",
        "2. a numbered item",
        "> a quote",
        "archivist ingest docs",
        'archivist ask "why?"',
        "The end",
    ]


def test_offsets_point_into_the_text_with_windows_line_ends() -> None:
    text = "First line\r\ngoes on.\r\n\r\n# Title\r\n"
    spans = sentence_spans(text)
    assert [text[start:end] for start, end in spans] == ["First line\r\ngoes on.", "# Title"]


def test_code_lines_can_be_left_out() -> None:
    text = "Run:\n```\nmake run\n```\nThen ask."
    assert [text[start:end] for start, end in sentence_spans(text, code=False)] == ["Run:", "Then ask."]
