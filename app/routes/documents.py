"""`/v1/documents`: list, show, upload and delete documents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile

from app.deps import ServicesDep
from app.schemas import DocumentList, DocumentPublic, IngestResultPublic
from app.uploads import store_and_ingest
from retriever.store import DocumentInfo

router = APIRouter(prefix="/v1/documents", tags=["documents"])


def document_public(info: DocumentInfo) -> DocumentPublic:
    return DocumentPublic(**info.__dict__)


@router.get("", response_model=DocumentList)
def list_documents(services: ServicesDep, collection: str | None = None) -> DocumentList:
    return DocumentList(documents=[document_public(d) for d in services.kb().list_documents(collection)])


@router.get("/{document_id}", response_model=DocumentPublic)
def get_document(document_id: int, services: ServicesDep) -> DocumentPublic:
    return document_public(services.kb().get_document(document_id))


@router.post("", response_model=IngestResultPublic, status_code=201)
def upload_document(
    services: ServicesDep,
    response: Response,
    file: Annotated[UploadFile, File(description="A .txt or .md file")],
    collection: Annotated[str | None, Form()] = None,
) -> IngestResultPublic:
    settings = services.settings
    target = collection or settings.default_collection
    services.kb().ensure_collection(target)
    result = store_and_ingest(
        services.ingestor(),
        settings.upload_dir,
        target,
        file.filename or "",
        file.file,
        settings.max_upload_bytes,
    )
    if result.status in ("failed", "skipped"):
        raise HTTPException(status_code=422, detail=f"{result.path}: {result.reason}")
    if result.status != "added":
        response.status_code = 200
    assert result.document_id is not None
    document = document_public(services.kb().get_document(result.document_id))
    return IngestResultPublic(
        status=result.status, reason=result.reason, chunks=result.chunks, document=document
    )


@router.delete("/{document_id}", response_model=DocumentPublic)
def delete_document(document_id: int, services: ServicesDep) -> DocumentPublic:
    return document_public(services.kb().delete_document(document_id))
