"""`/v1/documents`: list, show, upload and delete documents; read a document's cleaned text (which passage
offsets point into) and download its original file."""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import File, Form, HTTPException, Response, UploadFile
from fastapi.responses import FileResponse

from app.api.deps import PrincipalDep, RowId, ServicesDep
from app.api.errors import InvalidRequestError
from app.api.routes.jobs import file_result_public, job_public
from app.api.routing import api_router
from app.api.schemas import (
    DocumentChunkPublic,
    DocumentList,
    DocumentPublic,
    DocumentTextPublic,
    IngestResultPublic,
    JobPublic,
)
from app.api.views import shown_source
from app.ops.auth import Principal
from app.ops.document_files import original_file
from app.ops.uploads import safe_filename, store_and_ingest
from app.services import Services
from retriever.records import DocumentInfo, NotFoundError

router = api_router(prefix="/v1/documents", tags=["documents"])


def document_public(info: DocumentInfo, principal: Principal) -> DocumentPublic:
    return DocumentPublic(**{**info.__dict__, "source_path": shown_source(info.source_path, principal)})


def visible_document(services: Services, principal: Principal, document_id: int) -> DocumentInfo:
    """A document of a collection the caller may read; any other is reported as missing."""
    info = services.kb().get_document(document_id)
    if not principal.can_read(info.collection):
        raise NotFoundError(f"document {document_id} does not exist")
    return info


@router.get("", response_model=DocumentList)
def list_documents(
    services: ServicesDep, principal: PrincipalDep, collection: str | None = None
) -> DocumentList:
    if collection is not None:
        principal.require_read(collection)
    found = services.kb().list_documents(collection)
    readable = [d for d in found if principal.can_read(d.collection)]
    return DocumentList(documents=[document_public(d, principal) for d in readable])


@router.get("/{document_id}", response_model=DocumentPublic)
def get_document(document_id: RowId, services: ServicesDep, principal: PrincipalDep) -> DocumentPublic:
    return document_public(visible_document(services, principal, document_id), principal)


@router.get("/{document_id}/text", response_model=DocumentTextPublic)
def get_document_text(
    document_id: RowId, services: ServicesDep, principal: PrincipalDep
) -> DocumentTextPublic:
    """The document's cleaned text, with each chunk's offsets, page and headings: a cited passage
    (`char_start`, `char_end`) can be shown in its place."""
    info = visible_document(services, principal, document_id)
    found = services.kb().document_text(document_id)
    return DocumentTextPublic(
        document=document_public(info, principal),
        text=found.text,
        complete=found.complete,
        chunks=[
            DocumentChunkPublic(
                chunk_id=c.id,
                ordinal=c.ordinal,
                char_start=c.char_start,
                char_end=c.char_end,
                page=c.page,
                heading_path=c.heading_path,
            )
            for c in found.chunks
        ],
    )


@router.get(
    "/{document_id}/file",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file as ingested"}},
)
def download_document_file(
    document_id: RowId, services: ServicesDep, principal: PrincipalDep
) -> FileResponse:
    """The original file the document was ingested from, while it is kept and unchanged (404 otherwise)."""
    info = visible_document(services, principal, document_id)
    path = original_file(info, services.settings.upload_dir)
    name = PurePosixPath(info.source_file).name  # the upload's or file's own name, not the kept file's
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=name)


@router.post(
    "",
    response_model=IngestResultPublic | JobPublic,
    status_code=201,
    responses={202: {"model": JobPublic, "description": "Several files: ingestion runs as a background job"}},
)
def upload_document(
    services: ServicesDep,
    principal: PrincipalDep,
    response: Response,
    file: Annotated[UploadFile | None, File(description="One file, ingested before the reply")] = None,
    files: Annotated[
        list[UploadFile] | None, File(description="Several files, ingested by a background job (202)")
    ] = None,
    collection: Annotated[str | None, Form()] = None,
) -> IngestResultPublic | JobPublic:
    """Upload `file` to ingest it now (201 added, 200 updated/unchanged/duplicate, 422 unreadable), or
    `files` (one or more) to ingest them in the background: 202 with a job to follow at `/v1/jobs/{id}`.
    Each file's name is the relative path it is stored under (`alpha/report.txt`); an empty, absolute or
    `..` name is a 422 naming it, before anything is stored."""
    settings = services.settings
    target = collection or settings.default_collection
    if (file is None) == (not files):
        raise InvalidRequestError("send one file as `file`, or several as `files`")
    principal.require_write(target)
    uploads = [file] if file is not None else files or []
    names = [safe_filename(upload.filename or "") for upload in uploads]  # a bad one: 422, nothing stored
    services.kb().ensure_collection(target)
    if files:
        streams = [(name, upload.file) for name, upload in zip(names, uploads, strict=True)]
        job = services.jobs().submit(target, streams, settings.max_upload_bytes)
        response.status_code = 202
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return job_public(job)
    assert file is not None
    result = store_and_ingest(
        services.ingestor(), settings.upload_dir, target, names[0], file.file, settings.max_upload_bytes
    )
    services.metrics.ingested.labels(result.status).inc()
    if result.status in ("failed", "skipped"):
        raise HTTPException(status_code=422, detail=f"{result.path}: {result.reason}")
    if result.status != "added":
        response.status_code = 200
    document = None
    if result.document_id is not None:
        document = document_public(services.kb().get_document(result.document_id), principal)
    duplicates = file_result_public(result).duplicates
    return IngestResultPublic(
        status=result.status,
        reason=result.reason,
        chunks=result.chunks,
        document=document,
        duplicates=duplicates,
    )


@router.delete("/{document_id}", response_model=DocumentPublic)
def delete_document(document_id: RowId, services: ServicesDep, principal: PrincipalDep) -> DocumentPublic:
    principal.require_write(visible_document(services, principal, document_id).collection)
    return document_public(services.kb().delete_document(document_id), principal)
