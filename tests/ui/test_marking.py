"""The cited passage's markdown: the supporting span marked in prose and inside fenced code blocks, where
markdown would show a `<mark>` or an escaped quote as text."""

from __future__ import annotations

from ui.marking import highlighted

PASSAGE = 'Ask it:\n\n```\narchivist ask "Why?"\n```\n\nThe answer is <printed> first.'


def source(start: int, end: int) -> dict[str, object]:
    return {"text": PASSAGE, "highlight": {"start": start, "end": end}}


def test_a_span_in_prose_is_marked_and_the_text_escaped() -> None:
    start = PASSAGE.index("The answer")
    marked = highlighted(source(start, len(PASSAGE)))
    assert marked.endswith("<mark>The answer is &lt;printed&gt; first.</mark>")
    assert highlighted({"text": "a < b"}) == "a &lt; b"


def test_code_blocks_become_html_blocks_with_their_part_of_the_span_marked() -> None:
    start = PASSAGE.index("archivist")
    marked = highlighted(source(start, PASSAGE.index("\n```\n\n")))
    assert "```" not in marked
    assert "\n<div><code><mark>archivist ask &quot;Why?&quot;</mark></code></div>\n" in marked
    across = highlighted(source(0, PASSAGE.index("\n```\n\n")))  # a sentence with the command it introduces
    assert across.startswith("<mark>Ask it:</mark>\n\n\n<div><code><mark>archivist ask")
    unmarked = highlighted({"text": "Run:\n```\nmake run\n\nmake test"})  # a chunk ending inside its block
    assert unmarked == "Run:\n\n<div><code>make run</code><br><br><code>make test</code></div>\n"


def test_inline_code_list_markers_and_table_rows_stay_markdown() -> None:
    text = "Files go under `uploads/<collection>/`.\n- `DELETE /v1/x` deletes it.\n| a | b |\n"
    item = text.index("- ")
    marked = highlighted({"text": text, "highlight": {"start": item, "end": text.index("\n|")}})
    assert "<code>uploads/&lt;collection&gt;/</code>" in marked  # inline code shows its text as it is
    assert "\n- <code><mark>DELETE /v1/x</mark></code> <mark>deletes it.</mark>\n" in marked
    row = text.index("| a")
    marked_row = highlighted({"text": text, "highlight": {"start": row, "end": len(text) - 1}})
    assert marked_row.endswith("\n| <mark>a</mark> | <mark>b</mark> |\n")
