"""`GET /v1/documents/{id}/text` and `/file`: the cleaned text that passage offsets point into, each chunk's
page and headings, the original file while it is kept and unchanged; the rights of `/v1/documents`."""

from __future__ import annotations

from email.message import Message
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.api.app import create_app
from app.api.views import source_public
from app.rag.pipeline import Source
from app.services import Services
from retriever.models import Document
from retriever.records import SearchHit
from retriever.store import KnowledgeBase
from tests.app.corpus import ADMIN, ANIMALS, GLACIER, GUIDE, KEEPER, REPORT, Corpus, no_model_settings, upload
from tests.app.test_search import search


def document_text(client: TestClient, document_id: int, **kwargs: object) -> dict:  # type: ignore[type-arg]
    response = client.get(f"/v1/documents/{document_id}/text", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return dict(response.json())


def download_name(response: httpx.Response) -> str | None:
    disposition = Message()
    disposition["content-disposition"] = response.headers["content-disposition"]
    return disposition.get_filename()


def test_every_passage_sits_at_its_offsets_in_the_document_text(corpus: Corpus) -> None:
    for question in (KEEPER, GLACIER, "Where does the barn owl nest?"):
        for passage in search(corpus.client, question, top_k=5)["results"]:
            body = document_text(corpus.client, passage["document_id"])
            assert body["complete"] is True
            assert body["text"][passage["char_start"] : passage["char_end"]] == passage["text"]
            [chunk] = [c for c in body["chunks"] if c["chunk_id"] == passage["chunk_id"]]
            assert (chunk["page"], chunk["heading_path"]) == (passage["page"], passage["heading_path"])
    guide = document_text(corpus.client, corpus.ids["guide.md"])
    assert guide["text"] == GUIDE.strip()  # markdown that needed no cleaning comes back as it was
    assert guide["document"]["id"] == corpus.ids["guide.md"] and guide["document"]["title"] == "Lighthouses"
    assert {c["heading_path"] for c in guide["chunks"]} >= {"Lighthouses > Keepers"}
    report = document_text(corpus.client, corpus.ids["report.pdf"])
    assert {c["page"] for c in report["chunks"]} == {1, 2}
    assert "The Aletsch Glacier is the largest glacier in the Alps." in report["text"]
    ordinals = [c["ordinal"] for c in report["chunks"]]
    assert ordinals == sorted(ordinals) and len(ordinals) == report["document"]["chunk_count"]


def test_documents_stored_without_their_text_are_put_back_together_from_chunks(corpus: Corpus) -> None:
    animals = corpus.ids["animals.txt"]
    with corpus.services.kb().db.session() as session:
        session.execute(update(Document).where(Document.id == animals).values(clean_text=""))
    body = document_text(corpus.client, animals)
    assert body["complete"] is False
    assert body["text"].replace("\n", "") == ANIMALS.replace("\n", "")  # blank lines between blocks
    for passage in search(corpus.client, "Where does the barn owl nest?", top_k=5)["results"]:
        if passage["document_id"] == animals:
            assert body["text"][passage["char_start"] : passage["char_end"]] == passage["text"]


def test_the_original_file_while_it_is_kept_and_unchanged(corpus: Corpus, tmp_path: Path) -> None:
    client = corpus.client
    pdf = client.get(f"/v1/documents/{corpus.ids['report.pdf']}/file")
    assert pdf.status_code == 200 and pdf.content == REPORT
    assert pdf.headers["content-type"] == "application/pdf"
    assert download_name(pdf) == "report.pdf"
    nested = upload(client, "notes/2024/guide copy.md", GUIDE.encode(), "other")
    kept = client.get(f"/v1/documents/{nested}/file")
    assert kept.status_code == 200 and kept.content == GUIDE.encode()
    assert kept.headers["content-type"].startswith("text/markdown")
    assert download_name(kept) == "guide copy.md"  # its folders are not part of the name

    stored = corpus.services.settings.upload_dir / "default" / "animals.txt"
    stored.write_bytes(b"edited after ingestion")
    changed = client.get(f"/v1/documents/{corpus.ids['animals.txt']}/file")
    assert changed.status_code == 404 and "has changed since it was ingested" in changed.json()["detail"]
    stored.unlink()
    gone = client.get(f"/v1/documents/{corpus.ids['animals.txt']}/file")
    assert gone.status_code == 404 and "no longer kept" in gone.json()["detail"]
    assert client.get(f"/v1/documents/{corpus.ids['animals.txt']}/text").status_code == 200

    local = tmp_path / "field notes.md"  # ingested from a path (the CLI's way): read where it was found
    local.write_text("# Field notes\n\nThe heron waits motionless in the shallows for fish.\n")
    [result] = corpus.services.ingestor().ingest_paths([local], "default").results
    found = client.get(f"/v1/documents/{result.document_id}/file")
    assert found.status_code == 200 and found.content == local.read_bytes()
    local.write_text("# Field notes\n\nRewritten.\n")
    assert client.get(f"/v1/documents/{result.document_id}/file").status_code == 404


@pytest.mark.parametrize("part", ["text", "file"])
def test_bad_or_unknown_ids_get_a_json_4xx(corpus: Corpus, part: str) -> None:
    for document_id, status in (("0", 422), ("abc", 422), (str(2**63), 422), ("999999", 404)):
        response = corpus.client.get(f"/v1/documents/{document_id}/{part}")
        assert response.status_code == status, (document_id, response.text)
        assert response.json()["detail"]


def test_only_keys_that_may_read_the_collection_see_its_documents(tmp_path: Path, kb: KnowledgeBase) -> None:
    settings = no_model_settings(tmp_path, require_auth=True, admin_key="admin-secret-for-tests")
    services = Services(settings, kb=kb)
    with TestClient(create_app(services)) as client:
        alpha = upload(client, "owls.txt", ANIMALS.encode(), "alpha", headers=ADMIN)
        beta = upload(client, "guide.md", GUIDE.encode(), "beta", headers=ADMIN)
        _, reader = services.keys.create("alpha reader", read=["alpha"])
        read_alpha = {"Authorization": f"Bearer {reader}"}
        for part in ("text", "file"):
            assert client.get(f"/v1/documents/{alpha}/{part}").status_code == 401
            assert client.get(f"/v1/documents/{alpha}/{part}", headers=read_alpha).status_code == 200
            hidden = client.get(f"/v1/documents/{beta}/{part}", headers=read_alpha)
            assert hidden.status_code == 404 and hidden.json()["detail"] == f"document {beta} does not exist"
        assert document_text(client, alpha, headers=read_alpha)["text"].startswith("Owls hunt at night.")


def test_answer_sources_carry_page_and_headings() -> None:
    hit = SearchHit(
        chunk_id=7, document_id=3, title="Report", source_path="upload://default/report.pdf", ordinal=2,
        char_start=10, char_end=20, text="ice melted", score=0.5, page=2, heading_path="Glaciers > Aletsch",
    )  # fmt: skip
    public = source_public(Source(n=1, hit=hit))
    assert (public.page, public.heading_path) == (2, "Glaciers > Aletsch")
