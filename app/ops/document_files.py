"""The original file of a document: where the service still has it, and only while it is the very file that
was ingested (its SHA-256 still the document's content hash), so a download never shows other content than
the passages cite. Uploads are kept under the data dir (`app.ops.uploads`); files ingested from a path are
read where they were found."""

from __future__ import annotations

import hashlib
from pathlib import Path

from app.ops.uploads import kept_path
from retriever.records import DocumentInfo, NotFoundError


def original_file(document: DocumentInfo, upload_dir: Path) -> Path:
    """The file `document` was ingested from; NotFoundError naming why when it is gone or has changed."""
    path = kept_path(upload_dir, document.source_file) or Path(document.source_file)
    if not path.is_file():
        raise NotFoundError(f"the original file of document {document.id} is no longer kept")
    with path.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    if digest != document.content_hash:
        raise NotFoundError(f"the original file of document {document.id} has changed since it was ingested")
    return path
