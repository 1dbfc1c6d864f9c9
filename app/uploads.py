"""Storing uploaded files under the data dir with safe names, then ingesting them.

An upload is first copied (bounded in size) into a private staging folder under `uploads/.incoming/`, then
ingested from there, and kept under `uploads/<collection>/` only if ingestion succeeded, so a failed
upload never replaces a stored file. Its documents are keyed `upload://<collection>/<name>`: uploading a
file of the same name again updates them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from ingest.pipeline import FileResult, Ingestor

UNSAFE = re.compile(r"[^\w.\- ]+")
MAX_NAME_BYTES = 200  # file systems allow 255 bytes per name; leave room for a "-2" suffix
KEPT = ("added", "updated", "unchanged")


class UploadTooLargeError(ValueError):
    pass


def safe_filename(name: str) -> str:
    """The last path component of a client-supplied name, stripped of anything that could escape a folder
    and cut to a length every file system accepts (keeping the extension)."""
    base = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    base = UNSAFE.sub("_", base).strip(" .")
    if not base:
        return "upload.txt"
    stem, dot, suffix = base.rpartition(".") if "." in base else (base, "", "")
    tail = (dot + suffix)[:16]
    room = MAX_NAME_BYTES - len(tail.encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").strip(" .")
    return (stem or "upload") + tail


def source_key(collection: str, name: str) -> str:
    return f"upload://{collection}/{name}"


def stage(stream: BinaryIO, folder: Path, name: str, max_bytes: int) -> Path:
    """Copy an upload into `folder` in blocks, refusing it once it passes `max_bytes`; a name already
    taken in the folder gets a numbered suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    number = 1
    while path.exists():
        number += 1
        stem, dot, suffix = name.rpartition(".") if "." in name else (name, "", "")
        path = folder / f"{stem}-{number}{dot}{suffix}"
    written = 0
    with path.open("wb") as out:
        while block := stream.read(1 << 20):
            written += len(block)
            if written > max_bytes:
                out.close()
                path.unlink()
                raise UploadTooLargeError(f"{name}: upload is larger than the {max_bytes} byte limit")
            out.write(block)
    return path


def keep(staged: Path, upload_dir: Path, collection: str) -> None:
    """Move an ingested upload to its permanent place, replacing an earlier upload of the same name."""
    final = upload_dir / collection / staged.name
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staged), final)


def staging_folder(upload_dir: Path) -> Path:
    root = upload_dir / ".incoming"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def store_and_ingest(
    ingestor: Ingestor, upload_dir: Path, collection: str, filename: str, stream: BinaryIO, max_bytes: int
) -> FileResult:
    """Stage one upload, ingest it and keep it if that succeeded (the synchronous single-file upload)."""
    folder = staging_folder(upload_dir)
    try:
        staged = stage(stream, folder, safe_filename(filename), max_bytes)
        result = ingestor.ingest_file(staged, collection, source_path=source_key(collection, staged.name))
        if result.status in KEPT:
            keep(staged, upload_dir, collection)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return replace(result, path=staged.name)
