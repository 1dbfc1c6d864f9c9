"""The ingest pipeline on real files with the real embedder: incremental runs (unchanged, changed, pruned,
records of a JSON Lines file), duplicates at document and chunk level, chunk metadata in SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from ingest.cleaning import clean_document
from ingest.config import ChunkerConfig, IngestConfig
from ingest.loaders import load_file
from ingest.pipeline import Ingestor, Progress
from retriever.models import Chunk
from retriever.store import KnowledgeBase
from tests.conftest import shared_file
from tests.ingest.documents import make_pdf


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
    write(docs, "latin1.txt", "caf\xe9 cr\xe8me on the quay".encode("latin-1"))
    write(docs, "empty.md", "")
    write(docs, "blank.txt", "   \n\n  ")
    write(docs, ".hidden.md", "never read")
    write(docs, "image.png", b"\x89PNG")
    report = Ingestor(kb, ChunkerConfig()).ingest_paths([docs], "c")
    by_name = {Path(r.path).name: r for r in report.results}
    assert set(by_name) == {
        "good.md", "also-good.txt", "garbage.txt", "latin1.txt", "empty.md", "blank.txt", "image.png",
    }  # fmt: skip
    assert by_name["image.png"].status == "failed" and "image" in by_name["image.png"].reason
    assert {by_name[n].status for n in ("good.md", "also-good.txt", "latin1.txt")} == {"added"}
    assert by_name["garbage.txt"].status == "failed" and "binary" in by_name["garbage.txt"].reason
    assert by_name["empty.md"].status == "skipped" and by_name["blank.txt"].status == "skipped"
    assert {d.title for d in kb.list_documents("c")} == {"Good", "also-good", "latin1"}
    latin1 = next(d for d in kb.list_documents("c") if d.title == "latin1")
    assert kb.get_chunks(latin1.id)[0].text == "café crème on the quay"


def test_unchanged_is_a_no_op_and_a_change_replaces(any_kb: KnowledgeBase, tmp_path: Path) -> None:
    kb = any_kb
    path = write(tmp_path, "notes.txt", "The first version mentions apples.")
    ingestor = Ingestor(kb, ChunkerConfig())
    first = ingestor.ingest_paths([path], "c").results[0]
    version = kb.collection_version("c")
    again = ingestor.ingest_paths([path], "c").results[0]
    assert (first.status, again.status) == ("added", "unchanged")
    assert again.document_id == first.document_id
    assert kb.collection_version("c") == version  # nothing was written
    path.write_text("The second version mentions pears instead.")
    changed = ingestor.ingest_paths([path], "c").results[0]
    assert changed.status == "updated" and changed.document_id == first.document_id
    texts = [hit.text for hit in kb.search("fruit", "c", 10)]
    assert texts == ["The second version mentions pears instead."]
    # Bytes that change but clean to the same text only update the stored hash: nothing is re-embedded.
    path.write_text("The second version mentions pears instead.\n\n\n")
    version = kb.collection_version("c")
    assert ingestor.ingest_paths([path], "c").results[0].status == "unchanged"
    assert kb.collection_version("c") == version
    assert ingestor.ingest_paths([path], "c").results[0].status == "unchanged"


def test_an_explicit_unsupported_file_is_reported(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(tmp_path, "table.xls", b"\xd0\xcf\x11\xe0")
    [result] = Ingestor(kb, ChunkerConfig()).ingest_paths([path], "c").results
    assert result.status == "failed" and "unsupported file type" in result.reason


def test_prune_removes_what_is_gone_under_the_given_folders_only(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs, other = tmp_path / "docs", tmp_path / "other"
    keep = write(docs, "keep.txt", "Anchors hold ships in place.")
    gone = write(docs, "sub/gone.txt", "Buoys mark the channel.")
    elsewhere = write(other, "elsewhere.txt", "Gulls nest on the cliffs.")
    ingestor = Ingestor(kb, ChunkerConfig())
    ingestor.ingest_paths([docs, elsewhere], "c")
    gone.unlink()
    without_prune = ingestor.ingest_paths([docs], "c")
    assert without_prune.pruned == [] and len(kb.list_documents("c")) == 3
    report = ingestor.ingest_paths([docs], "c", prune=True)
    assert report.pruned == [str(gone)]
    assert {d.source_path for d in kb.list_documents("c")} == {str(keep), str(elsewhere)}
    assert all("channel" not in hit.text for hit in kb.search("channel buoys", "c", 10))


def test_json_lines_records_are_updated_one_by_one(kb: KnowledgeBase, tmp_path: Path) -> None:
    records = [
        {"text": "Record one is about anchors.", "title": "one"},
        {"text": "Record two is about sails.", "title": "two"},
        {"text": "Record three is about masts.", "title": "three"},
    ]
    path = write(tmp_path, "feed.jsonl", "\n".join(json.dumps(r) for r in records))
    ingestor = Ingestor(kb, ChunkerConfig())
    first = ingestor.ingest_paths([path], "c").results[0]
    assert (first.status, first.documents, first.chunks) == ("added", 3, 3)
    chunk_ids = {d.title: [c.id for c in kb.get_chunks(d.id)] for d in kb.list_documents("c")}
    records[1]["text"] = "Record two is now about rudders."
    del records[2]
    path.write_text("\n".join(json.dumps(r) for r in records))
    second = ingestor.ingest_paths([path], "c").results[0]
    assert (
        second.status == "updated" and second.chunks == 1 and "1 earlier document(s) removed" in second.reason
    )
    after = {d.title: d for d in kb.list_documents("c")}
    assert set(after) == {"one", "two"}
    assert [c.id for c in kb.get_chunks(after["one"].id)] == chunk_ids["one"]  # not rewritten
    assert kb.get_chunks(after["two"].id)[0].text == "Record two is now about rudders."
    assert ingestor.ingest_paths([path], "c").results[0].status == "unchanged"


PASSAGE = (
    "The keeper climbed the spiral stairs of the lighthouse every evening at dusk, trimmed the wick of the "
    "great lamp, polished the lens until it shone, and wrote the state of the sea in his logbook. On clear "
    "nights he could see the lights of three other towers along the coast, and on foggy ones he sounded the "
    "horn every half minute until dawn, counting the strokes aloud so as not to fall asleep."
)


def test_duplicate_documents_exact_and_near_are_left_out(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    original = write(docs, "a-original.txt", PASSAGE)
    write(docs, "b-copy.md", PASSAGE)  # same text, another format
    write(docs, "c-near.txt", PASSAGE.replace("every evening", "each evening"))
    write(docs, "d-other.txt", "Fishing boats return to the harbour before the storm.")
    ingestor = Ingestor(kb, ChunkerConfig())
    report = ingestor.ingest_paths([docs], "c")
    by_name = {Path(r.path).name: r for r in report.results}
    assert by_name["a-original.txt"].status == "added" and by_name["d-other.txt"].status == "added"
    for name, similarity in (("b-copy.md", 1.0), ("c-near.txt", 0.8)):
        result = by_name[name]
        assert result.status == "duplicate", result
        [duplicate] = result.duplicates
        assert (
            duplicate.chunks == 0
            and duplicate.of_source == str(original)
            and duplicate.similarity >= similarity
        )
        assert f"duplicate of 'a-original' ({original}" in result.reason
    assert len(report.duplicates) == 2 and len(kb.list_documents("c")) == 2
    # A changed document is never a duplicate of its own earlier version.
    original.write_text(PASSAGE.replace("great lamp", "big lamp"))
    assert ingestor.ingest_paths([original], "c").results[0].status == "updated"
    # Once the original is gone, the next run keeps a copy in its place.
    original.unlink()
    again = {Path(r.path).name: r.status for r in ingestor.ingest_paths([docs], "c", prune=True).results}
    assert again == {"b-copy.md": "added", "c-near.txt": "duplicate", "d-other.txt": "unchanged"}


def test_duplicate_chunks_are_left_out_and_reported(kb: KnowledgeBase, tmp_path: Path) -> None:
    paragraphs = [
        PASSAGE,
        "Storm warnings are raised on the mast of the harbour office when the barometer falls quickly and "
        "the wind turns to the north-west, and every skipper is expected to check them before leaving.",
        "The ferry to the island leaves twice a day in summer and once a day in winter, weather permitting, "
        "from the stone pier next to the fish market, where tickets are sold until five minutes before.",
    ]
    first = write(tmp_path, "first.md", "\n\n".join(paragraphs[:2]))
    second = write(tmp_path, "second.md", "\n\n".join([paragraphs[2], paragraphs[0]]))
    ingestor = Ingestor(kb, ChunkerConfig(chunk_tokens=120, overlap_tokens=0))
    report = ingestor.ingest_paths([first, second], "c")
    result = {Path(r.path).name: r for r in report.results}["second.md"]
    assert result.status == "added" and result.chunks == 1
    [duplicate] = result.duplicates
    assert (duplicate.chunks, duplicate.of_source) == (1, str(first))
    assert "1 duplicate chunk(s) left out" in result.reason
    document = kb.get_document(result.document_id or 0)
    assert [c.text for c in kb.get_chunks(document.id)] == [paragraphs[2]]


SEAS = ("calm", "rough", "stormy")


def test_chunk_metadata_is_stored(kb: KnowledgeBase, tmp_path: Path) -> None:
    pdf = write(
        tmp_path,
        "report.pdf",
        make_pdf(
            [["Harbour report", f"On a {sea} day the tide was {n} m high."] for n, sea in enumerate(SEAS, 1)]
        ),
    )
    markdown = write(
        tmp_path, "guide.md", "# Guide\n\n## Mooring\n\nUse two lines.\n\n## Fees\n\nPay in the office."
    )
    progress: list[Progress] = []
    report = Ingestor(kb, ChunkerConfig(chunk_tokens=20, overlap_tokens=0)).ingest_paths(
        [pdf, markdown], "c", on_progress=progress.append
    )
    assert progress[-1] == Progress(2, 2, report.chunks_written)
    assert set(report.stages) == {"load", "clean", "chunk", "dedup", "embed", "write"}
    documents = {d.file_type: d for d in kb.list_documents("c")}
    pages = kb.get_chunks(documents["pdf"].id)
    assert [c.page for c in pages] == [1, 2, 3] and "Harbour report" not in pages[1].text
    guide = kb.get_chunks(documents["md"].id)
    assert [c.heading_path for c in guide] == ["Guide > Mooring", "Guide > Fees"]
    assert guide[0].text == "# Guide\n\n## Mooring\n\nUse two lines." and guide[0].token_count > 5
    with kb.db.session() as session:
        stored = session.execute(select(Chunk.minhash, Chunk.token_count)).all()
    assert all(token_count > 0 for _, token_count in stored)


@pytest.mark.slow
def test_llm_notes_1_loses_a_chunk_of_its_repeated_section_and_nothing_else(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    path = shared_file("zh/llm-notes-1.md")
    report = Ingestor(kb, ChunkerConfig()).ingest_paths([path], "zh")
    [result] = report.results
    assert result.status == "added" and result.duplicates
    assert all(d.of_source == str(path) and d.similarity >= 0.8 for d in result.duplicates)
    text = clean_document(load_file(path, path.read_bytes(), IngestConfig()).documents[0]).text
    second = text.index("### 4.5", text.index("### 4.5") + 1)
    chunks = kb.get_chunks(result.document_id or 0)
    assert all(text[c.char_start : c.char_end] == c.text for c in chunks)
    # Every character before the second copy is in some chunk: nothing of the original was dropped.
    covered = 0
    for chunk in chunks:
        if chunk.char_start > covered and chunk.char_start < second:
            assert not text[covered : chunk.char_start].strip(), "a chunk before the second copy was dropped"
        covered = max(covered, chunk.char_end)
    assert len(chunks) + sum(d.chunks for d in result.duplicates) > len(chunks)


@pytest.mark.parametrize("prune", [False, True])
def test_a_new_version_that_fails_to_load_keeps_the_previous_one(
    kb: KnowledgeBase, tmp_path: Path, prune: bool
) -> None:
    path = write(tmp_path, "report.pdf", make_pdf([["The harbour handled timber and grain."]]))
    ingestor = Ingestor(kb, ChunkerConfig())
    first = ingestor.ingest_paths([tmp_path], "c", prune=prune).results[0]
    path.write_bytes(b"%PDF-1.4 truncated in the middle of a save")
    failed = ingestor.ingest_paths([tmp_path], "c", prune=prune).results[0]
    assert failed.status == "failed" and "PDF" in failed.reason
    [kept] = kb.list_documents("c")
    assert kept.id == first.document_id
    assert [hit.text for hit in kb.search("timber", "c", 3)] == ["The harbour handled timber and grain."]
