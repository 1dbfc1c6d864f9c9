"""Storing uploaded files under the data dir with safe names, then ingesting them."""

from __future__ import annotations

import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import BinaryIO

from ingest.pipeline import FileResult, Ingestor

UNSAFE = re.compile(r"[^\w.\- ]+")


class UploadTooLargeError(ValueError):
    pass


def safe_filename(name: str) -> str:
    """The last path component of a client-supplied name, stripped of anything that could escape a folder."""
    base = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = UNSAFE.sub("_", base).strip(" .")
    return base[:200] or "upload.txt"


def store_and_ingest(
    ingestor: Ingestor, upload_dir: Path, collection: str, filename: str, stream: BinaryIO, max_bytes: int
) -> FileResult:
    """Copy the upload to a private temporary folder (bounded in size), ingest it, and keep it under
    `upload_dir/collection/` only if ingestion succeeded; a failed upload never replaces a stored file."""
    name = safe_filename(filename)
    staging_root = upload_dir / ".incoming"
    staging_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging_root) as staging:
        staged = Path(staging) / name
        with staged.open("wb") as out:
            written = 0
            while block := stream.read(1 << 20):
                written += len(block)
                if written > max_bytes:
                    raise UploadTooLargeError(f"{name}: upload is larger than the {max_bytes} byte limit")
                out.write(block)
        result = ingestor.ingest_file(staged, collection, source_path=f"upload://{collection}/{name}")
        if result.status in ("added", "updated", "unchanged"):
            final = upload_dir / collection / name
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staged), final)
    return FileResult(name, result.status, result.reason, result.chunks, result.document_id)
