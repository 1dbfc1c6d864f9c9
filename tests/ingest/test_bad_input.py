"""Every kind of bad input in one batch: each file fails (or is skipped) alone with a clear reason, and
everything else in the batch is ingested."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ingest.config import ChunkerConfig
from ingest.pipeline import Ingestor
from retriever.store import KnowledgeBase
from tests.ingest.documents import encrypt_pdf, make_docx, make_pdf, make_zip_bomb


def test_a_batch_of_bad_files_next_to_good_ones(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    good = {
        "good.md": b"# Tides\n\nTides rise twice a day.",
        "weird name \u2713 (1) -x.txt": b"Odd names are fine: lighthouses guide ships.",
        "new\nline.md": b"A newline in a file name is allowed on Linux: the keeper sleeps by day.",
        "report.pdf": make_pdf([["The harbour opened in May."]]),
        "handbook.docx": make_docx([("h1", "Handbook"), ("p", "Always wear a life vest on deck.")]),
        "latin1.txt": "Invalid UTF-8 but valid Latin-1: caf\xe9 au lait on the quay.".encode("latin-1"),
    }
    bad = {
        "empty.txt": (b"", "skipped", "empty file"),
        "garbage.txt": (os.urandom(4096), "failed", "binary"),
        "scan.pdf": (make_pdf([["x"]], image_only=True), "failed", "without a text layer"),
        "locked.pdf": (encrypt_pdf(make_pdf([["secret"]]), "pw"), "failed", "encrypted PDF"),
        "bomb.docx": (make_zip_bomb(60), "failed", "zip bomb"),
        "broken.json": (b'{"text": "unterminated', "failed", "invalid JSON"),
    }
    for name, content in good.items():
        (docs / name).write_bytes(content)
    for name, (content, _, _) in bad.items():
        (docs / name).write_bytes(content)
    # Invalid UTF-8 in the file name itself (Python keeps it as a lone surrogate).
    odd_name = os.fsencode(docs) + b"/caf\xe9-menu.txt"
    with open(odd_name, "wb") as handle:
        handle.write(b"The cafe by the harbour serves fish soup.")
    # 100 MB (sparse, so it costs no disk): refused from its size, without being read.
    with (docs / "huge.txt").open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    # A link to itself, and a link to its own folder (the walk must not follow it round and round).
    (docs / "loop.txt").symlink_to("loop.txt")
    (docs / "again").symlink_to(".")

    started = time.perf_counter()
    report = Ingestor(kb, ChunkerConfig()).ingest_paths([docs], "c")
    assert time.perf_counter() - started < 120

    by_name = {Path(r.path).name: r for r in report.results}
    for name in good:
        assert by_name[name].status == "added", by_name[name]
    assert by_name["caf\\xe9-menu.txt"].status == "added"
    for name, (_, status, reason) in bad.items():
        assert by_name[name].status == status and reason in by_name[name].reason, by_name[name]
    assert (
        by_name["huge.txt"].status == "failed"
        and "over the 52428800 byte limit" in by_name["huge.txt"].reason
    )
    assert by_name["loop.txt"].status == "failed" and "symbolic links" in by_name["loop.txt"].reason
    assert len(report.results) == len(good) + len(bad) + 3  # nothing was read twice through the link
    titles = {d.title for d in kb.list_documents("c")}
    assert {"Tides", "Handbook", "latin1", "caf\\xe9-menu"} <= titles and len(titles) == len(good) + 1
    latin1 = next(d for d in kb.list_documents("c") if d.title == "latin1")
    assert "café au lait" in kb.get_chunks(latin1.id)[0].text
