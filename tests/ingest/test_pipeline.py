"""The ingest pipeline on real files: bad files fail alone, unchanged files are no-ops, changes replace."""

from __future__ import annotations

from pathlib import Path

from ingest.config import ChunkerConfig
from ingest.pipeline import Ingestor
from retriever.store import KnowledgeBase


def write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_bad_files_fail_alone_and_the_rest_is_ingested(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "good.md", "# Good\n\nThe lighthouse keeper lit the lamp at dusk.")
    write(docs, "nested/also-good.txt", "Tides rise twice a day.")
    write(docs, "garbage.txt", bytes(range(256)) * 4)
    write(docs, "latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"))
    write(docs, "empty.md", "")
    write(docs, "blank.txt", "   \n\n  ")
    write(docs, ".hidden.md", "never read")
    write(docs, "image.png", b"\x89PNG")
    report = Ingestor(kb, ChunkerConfig()).ingest_paths([docs], "c")
    by_name = {Path(r.path).name: r for r in report.results}
    assert set(by_name) == {"good.md", "also-good.txt", "garbage.txt", "latin1.txt", "empty.md", "blank.txt"}
    assert by_name["good.md"].status == "added" and by_name["also-good.txt"].status == "added"
    assert by_name["garbage.txt"].status == "failed" and "binary" in by_name["garbage.txt"].reason
    assert by_name["latin1.txt"].status == "failed" and "UTF-8" in by_name["latin1.txt"].reason
    assert by_name["empty.md"].status == "skipped" and by_name["blank.txt"].status == "skipped"
    assert {d.title for d in kb.list_documents("c")} == {"Good", "also-good"}


def test_unchanged_is_a_no_op_and_a_change_replaces(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", "The first version mentions apples.")
    ingestor = Ingestor(kb, ChunkerConfig())
    first = ingestor.ingest_paths([path], "c").results[0]
    version = kb.collection_version("c")
    again = ingestor.ingest_paths([path], "c").results[0]
    assert (first.status, again.status) == ("added", "unchanged")
    assert kb.collection_version("c") == version  # nothing was written
    path.write_text("The second version mentions pears instead.")
    changed = ingestor.ingest_paths([path], "c").results[0]
    assert changed.status == "updated" and changed.document_id == first.document_id
    texts = [hit.text for hit in kb.search("fruit", "c", 10)]
    assert texts == ["The second version mentions pears instead."]


def test_an_explicit_unsupported_file_is_reported(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(tmp_path, "table.xlsx", b"PK\x03\x04")
    [result] = Ingestor(kb, ChunkerConfig()).ingest_paths([path], "c").results
    assert result.status == "failed" and "unsupported file type" in result.reason
