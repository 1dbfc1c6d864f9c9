"""Loaders, one format at a time, on files the tests make: text encodings, HTML main content, PDF pages,
DOCX structure, JSON / JSON Lines fields, SQuAD; and every kind of bad input failing with a clear reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ingest.config import IngestConfig
from ingest.loaders import LoadError, decode_text, load_file, read_file
from tests.conftest import shared_file
from tests.ingest.documents import encrypt_pdf, make_docx, make_pdf, make_zip_bomb

CONFIG = IngestConfig()


def load(name: str, raw: bytes, config: IngestConfig = CONFIG):  # type: ignore[no-untyped-def]
    return load_file(Path(name), raw, config)


def test_text_encodings_are_detected() -> None:
    assert decode_text("café crème brûlée".encode("latin-1")) == "café crème brûlée"
    assert decode_text("Grüße aus München".encode("cp1252")) == "Grüße aus München"
    chinese = "大语言模型是一种深度学习模型。它可以生成文本，也能回答问题。"
    assert decode_text(chinese.encode("gb18030")) == chinese
    assert decode_text(chinese.encode("utf-16")) == chinese  # with its byte-order mark
    assert decode_text(b"\xef\xbb\xbfplain") == "plain"
    russian = "Привет, как дела? Это обычный текст на русском языке."
    assert decode_text(russian.encode("cp1251")) == russian


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (bytes(range(256)) * 4, "binary"),
        (b"\x00\x01\x02 NUL bytes", "binary"),
        (b"ok\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11\x12\x13\x14", "binary"),
    ],
)
def test_binary_content_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(LoadError, match=reason):
        decode_text(raw)


def test_markdown_and_text_titles() -> None:
    assert load("notes.md", b"# The Moon\n\nIt orbits.").documents[0].title == "The Moon"
    assert load("notes.md", b"A first line as title\n\nbody").documents[0].title == "A first line as title"
    # A "# comment" deep in unfenced code is no title.
    body = b"\n\n".join(b"paragraph %d" % i for i in range(8)) + b"\n\n# a comment"
    assert load("notes.md", b"x" * 300 + b"\n\n" + body).documents[0].title == "notes"
    assert load("plain.txt", b"# not markdown").documents[0].title == "plain"


PAGE = b"""<!doctype html><html><head><title>Lighthouses</title><style>p{}</style></head><body>
<header><nav><a href="/">Home</a> <a href="/about">About</a></nav></header>
<div class="sidebar">Popular posts</div>
<main><article><h1>Lighthouses of Europe</h1>
<p>The <b>Tower of Hercules</b> is the oldest lighthouse &amp; still in use.</p>
<h2>Keepers</h2><p>Keepers lit the lamp<br>at dusk.</p><ul><li>First</li><li>Second <i>item</i></li></ul>
<pre><code>def light():
    return True</code></pre>
<table><tr><th>Name</th><th>Year</th></tr><tr><td>Hercules</td><td>100</td></tr></table>
<div class="share-buttons">Share on X</div><script>track()</script>
</article></main><footer>(c) 2024 Example Corp.</footer></body></html>"""


def test_html_keeps_the_main_content_as_markdown() -> None:
    [document] = load("page.html", PAGE).documents
    text = document.parts[0]
    assert document.title == "Lighthouses" and document.file_type == "html"
    assert text.startswith(
        "# Lighthouses of Europe\n\nThe Tower of Hercules is the oldest lighthouse & still"
    )
    assert "## Keepers" in text and "Keepers lit the lamp\nat dusk." in text
    assert "- First\n- Second item" in text
    assert "```\ndef light():\n    return True\n```" in text
    assert "| Name | Year |\n| Hercules | 100 |" in text
    for furniture in ("Home", "About", "Popular posts", "Share on X", "track()", "Example Corp", "p{}"):
        assert furniture not in text


def test_pdf_pages_are_kept() -> None:
    pdf = make_pdf([["Harbour report", "The harbour opened in May."], ["Ships (many) arrived in June."]])
    [document] = load("report.pdf", pdf).documents
    assert document.paged and len(document.parts) == 2
    assert "The harbour opened in May." in document.parts[0] and "Ships (many) arrived" in document.parts[1]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (make_pdf([["scanned"], ["pages"]], image_only=True), "without a text layer"),
        (encrypt_pdf(make_pdf([["secret plans"]]), "hunter2"), "encrypted PDF"),
        (b"%PDF-1.4\n1 0 obj << /Type /Catalog", "not a readable PDF"),
        (b"", "not a readable PDF"),
    ],
)
def test_bad_pdfs_fail_clearly(raw: bytes, reason: str) -> None:
    with pytest.raises(LoadError, match=reason):
        load("bad.pdf", raw)


def test_docx_keeps_headings_lists_and_tables() -> None:
    docx = make_docx(
        [
            ("h1", "Crew handbook"),
            ("p", "Welcome aboard."),
            ("h2", "Safety"),
            ("li", "Wear a life vest."),
            ("table", [["Item", "Count"], ["Vest", "12"]]),
        ]
    )
    [document] = load("handbook.docx", docx).documents
    assert document.title == "Crew handbook"
    assert document.parts[0] == (
        "# Crew handbook\n\nWelcome aboard.\n\n## Safety\n\n- Wear a life vest.\n\n"
        "| Item | Count |\n| Vest | 12 |"
    )


def test_docx_zip_bomb_and_garbage_are_refused() -> None:
    with pytest.raises(LoadError, match="zip bomb"):
        load("bomb.docx", make_zip_bomb(60))
    with pytest.raises(LoadError, match="not a valid DOCX"):
        load("fake.docx", b"PK\x03\x04 not really a zip")


def test_json_records_with_configurable_fields() -> None:
    records = [
        {"body": {"text": "First record."}, "name": "One"},
        {"body": {"text": "Second."}},
        {"other": 1},
    ]
    config = IngestConfig(json_text_field="body.text", json_title_field="name")
    loaded = load("records.json", json.dumps(records).encode(), config)
    assert [(d.key, d.title, d.parts[0]) for d in loaded.documents] == [
        ("0", "One", "First record."),
        ("1", "records #1", "Second."),
    ]
    assert "1 record(s) without a text field 'body.text'" in loaded.note
    [single] = load("one.json", b'{"text": "Just one.", "title": "Solo"}').documents
    assert (single.key, single.title) == ("", "Solo")
    with pytest.raises(LoadError, match="ARCHIVIST_JSON_TEXT_FIELD"):
        load("none.json", b'[{"body": "x"}]')
    with pytest.raises(LoadError, match="invalid JSON"):
        load("broken.json", b'{"text": ')


def test_json_lines_skip_bad_lines() -> None:
    raw = b'{"text": "alpha"}\n\nnot json\n{"text": "beta", "title": "B"}\n'
    loaded = load("feed.jsonl", raw)
    assert [(d.key, d.title, d.parts[0]) for d in loaded.documents] == [
        ("1", "feed #1", "alpha"),
        ("4", "B", "beta"),
    ]
    assert "1 line(s) of invalid JSON left out (line 3)" in loaded.note


def test_squad_paragraphs_or_articles() -> None:
    squad = {
        "data": [
            {
                "title": "Super_Bowl_50",
                "paragraphs": [{"context": "P one.", "qas": []}, {"context": "P two."}],
            }
        ]
    }
    raw = json.dumps(squad).encode()
    paragraphs = load("dev.json", raw).documents
    assert [(d.key, d.title, d.parts[0], d.file_type) for d in paragraphs] == [
        ("0.0", "Super Bowl 50", "P one.", "squad"),
        ("0.1", "Super Bowl 50", "P two.", "squad"),
    ]
    [article] = load("dev.json", raw, IngestConfig(squad_unit="article")).documents
    assert (article.key, article.parts[0]) == ("0", "P one.\n\nP two.")


def test_the_squad_dev_file_gives_one_document_per_paragraph() -> None:
    path = shared_file("squad/squad-v1.1-dev-a.json")
    documents = load_file(path, path.read_bytes(), CONFIG).documents
    assert len(documents) == 913 and len({d.title for d in documents}) == 24
    assert len({d.key for d in documents}) == 913


def test_read_file_refuses_large_files_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # sparse: 100 MB on paper, nothing on disk
    with pytest.raises(LoadError, match="over the 52428800 byte limit"):
        read_file(big, CONFIG.max_file_bytes)
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(LoadError, match="not a regular file"):
        read_file(fifo, CONFIG.max_file_bytes)


def test_unsupported_type() -> None:
    with pytest.raises(LoadError, match="unsupported file type '.xls'"):
        load("sheet.xls", b"\xd0\xcf\x11\xe0")
