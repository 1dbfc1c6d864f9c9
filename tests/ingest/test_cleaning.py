"""Cleaning: headers and footers repeated on most pages, web junk after scraped articles, page offsets."""

from __future__ import annotations

from pathlib import Path

from ingest.cleaning import clean_document, strip_repeated_lines, strip_web_junk
from ingest.config import IngestConfig
from ingest.loaders import LoadedDocument, load_file
from tests.conftest import shared_file


def test_headers_and_footers_repeated_on_most_pages_are_dropped() -> None:
    bodies = [
        "Revenue grew.",
        "Costs fell sharply.",
        "We hired ten people.",
        "Ships arrived late.",
        "The end.",
    ]
    pages = [f"ACME Corp — Annual Report\n{body}\nPage {n} of 5" for n, body in enumerate(bodies, 1)]
    pages[2] += "\nACME Corp — Annual Report is mentioned here again, inside the text."
    cleaned = strip_repeated_lines(pages)
    for n, (page, body) in enumerate(zip(cleaned, bodies, strict=True), 1):
        assert not page.startswith("ACME Corp — Annual Report\n") and f"Page {n} of 5" not in page
        assert body in page
    assert "inside the text" in cleaned[2]  # a line that merely resembles the header is kept
    assert strip_repeated_lines(pages[:2]) == pages[:2]  # two pages are too few to tell


def test_pages_are_joined_with_their_offsets() -> None:
    document = LoadedDocument("r", "pdf", ("First page.", "  \n", "Third   page."), paged=True)
    cleaned = clean_document(document)
    assert cleaned.text == "First page.\n\nThird page."
    assert cleaned.page_starts == ((0, 1), (13, 3))


ARTICLE = "\n\n".join(
    f"Paragraph {i} explains how lighthouses guide ships along the coast." for i in range(12)
)


def test_web_junk_after_the_article_is_cut() -> None:
    related = "\n\n".join(
        f"Another story {i}\n\nA teaser of another story that stops in the middle of a sentence and…"
        for i in range(4)
    )
    assert strip_web_junk(f"{ARTICLE}\n\n{related}") == ARTICLE
    for marker in ("Related articles", "相关文章", "本文来自互联网用户投稿,该文观点仅代表作者本人。"):
        assert strip_web_junk(f"{ARTICLE}\n\n{marker}\n\nLinks to elsewhere.") == ARTICLE
    # A marker early in the text is part of the article (the junk is only looked for near the end).
    early = f"Related articles on this topic are listed below.\n\n{ARTICLE}"
    assert strip_web_junk(early) == early
    assert strip_web_junk(ARTICLE) == ARTICLE


def test_the_scraped_chinese_article_loses_its_junk() -> None:
    """llm-notes-2.md ends with a reposting disclaimer and a list of unrelated "related articles" (the data
    README says this of llm-notes-5, whose tail is just an author line; both are checked)."""
    config = IngestConfig()
    path = shared_file("zh/llm-notes-2.md")
    document = load_file(path, path.read_bytes(), config).documents[0]
    text = clean_document(document).text
    assert text.endswith("此外,还可结合LoRA、QLoRA等技术进行高效参数微调,适用于资源受限场景。")
    for junk in ("本文来自互联网用户投稿", "相关文章", "WWDC 2025", "Zookeeper", "&#xff0c;"):
        assert junk not in text
    assert len(text) > 9000  # the article itself is kept
    notes5 = Path(shared_file("zh/llm-notes-5.md"))
    kept = clean_document(load_file(notes5, notes5.read_bytes(), config).documents[0]).text
    assert "### 9.4 大语言模型在实际应用中有哪些限制?" in kept  # its last section survives
