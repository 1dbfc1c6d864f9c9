"""Storing uploaded files under the data dir with safe names, then ingesting them.

An upload is first copied (bounded in size) into a private staging folder under `uploads/.incoming/`, then
ingested from there, and kept under `uploads/<collection>/` only if ingestion succeeded, so a failed
upload never replaces a stored file. Its documents are keyed `upload://<collection>/<name>`, where `name` is
the relative path the client sent (`alpha/report.txt` and `beta/report.txt` are two documents), made safe
reversibly, so that two different names never become one: uploading a file of the same name again updates
its documents. Empty, absolute and `..` names are refused.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import unicodedata
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import quote

from ingest.pipeline import FileResult, Ingestor

# Characters kept as they are in a name; any other is percent-encoded (so `%` itself is, keeping the
# encoding reversible), which keeps file names portable without ever mapping two names to one.
UNSAFE = re.compile(r"[^\w .\-()\[\]{},;+=@&#!~']")
# File systems allow 255 bytes per name; a kept file's name holds its folders too (see `keep`), and room is
# left for a "-2" suffix.
MAX_NAME_BYTES = 200
KEPT = ("added", "updated", "unchanged")


class UploadTooLargeError(ValueError):
    pass


class UploadNameError(ValueError):
    """An uploaded file's name that names no file inside a folder (empty, absolute, with `..`), or one too
    long to store (422)."""


def _escape(part: str) -> str:
    return UNSAFE.sub(lambda match: quote(match.group(), safe="", errors="surrogatepass"), part)


def safe_filename(name: str) -> str:
    """The relative path a client sent with a file (`/` or `\\` between folders), as a path that stays
    inside a folder: `.` parts dropped, each part's unsafe characters percent-encoded. Raises
    `UploadNameError` for a name that is empty, absolute, climbs with `..`, or is too long."""
    text = unicodedata.normalize("NFKC", name).replace("\\", "/")
    shown = repr(name if len(name) <= 120 else name[:120] + "…")
    if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        raise UploadNameError(f"{shown}: an uploaded file's name must be relative, not absolute")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts:
        raise UploadNameError(f"{shown}: an uploaded file needs a name")
    if ".." in parts:
        raise UploadNameError(f"{shown}: an uploaded file's name may not contain '..'")
    safe = "/".join(_escape(part) for part in parts)
    if len(kept_name(safe).encode()) > MAX_NAME_BYTES:
        raise UploadNameError(
            f"{shown}: an uploaded file's name may be at most {MAX_NAME_BYTES} bytes long, folders included "
            "(each `/` counts 3, as do characters written %XX)"
        )
    return safe


UPLOAD_SCHEME = "upload://"


def source_key(collection: str, name: str) -> str:
    return f"{UPLOAD_SCHEME}{collection}/{name}"


def kept_path(upload_dir: Path, key: str) -> Path | None:
    """Where the upload of source key `key` is kept (see `keep`); None when `key` is not an upload's."""
    if not key.startswith(UPLOAD_SCHEME):
        return None
    collection, _, name = key.removeprefix(UPLOAD_SCHEME).partition("/")
    return upload_dir / collection / kept_name(name)


def numbered(name: str, number: int) -> str:
    """`name` told apart from an earlier file of the same name in one upload: `report-2.txt`."""
    path = PurePosixPath(name)
    return str(path.with_name(f"{path.stem}-{number}{path.suffix}"))


def stage(stream: BinaryIO, folder: Path, name: str, max_bytes: int) -> Path:
    """Copy an upload to `folder / name` in blocks, refusing it once it passes `max_bytes`."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
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


def kept_name(name: str) -> str:
    """The name an upload is kept under: flat, its folders written `%2F` (a `%` of the name itself is
    already escaped), so that a file `a` and a file `a/b.txt` never contend for one path."""
    return name.replace("/", "%2F")


def keep(staged: Path, name: str, upload_dir: Path, collection: str) -> None:
    """Copy an ingested upload to its permanent place, replacing an earlier upload of the same name. The
    staged copy stays until its folder is removed, for a job that a killed worker left to be run again."""
    final = upload_dir / collection / kept_name(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    shutil.copyfile(staged, partial)
    os.replace(partial, final)


# A staging folder is named `<host>+<pid>+<random>`: a starting process removes those that its host's dead
# processes left, and other hosts' (API replicas sharing the upload volume) only once they are this old.
ABANDONED_AFTER_SECONDS = 24 * 3600


def staging_folder(upload_dir: Path) -> Path:
    root = upload_dir / ".incoming"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}+{os.getpid()}+", dir=root))


def remove_abandoned_staging(upload_dir: Path, now: float | None = None) -> list[Path]:
    """Remove the staging folders of processes that died mid-upload, never one another live process (on
    this host or another sharing the volume) is still ingesting from; returns those removed."""
    root = upload_dir / ".incoming"
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for folder in root.iterdir():
        owner, _, rest = folder.name.partition("+")
        pid, _, _ = rest.partition("+")
        dead_here = owner == host and pid.isdigit() and not process_alive(int(pid))
        try:
            stale = now - folder.stat().st_mtime > ABANDONED_AFTER_SECONDS
        except FileNotFoundError:
            continue  # its owner finished meanwhile
        if dead_here or stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def store_and_ingest(
    ingestor: Ingestor, upload_dir: Path, collection: str, name: str, stream: BinaryIO, max_bytes: int
) -> FileResult:
    """Stage one upload, named by `safe_filename`, ingest it and keep it if that succeeded (the synchronous
    single-file upload)."""
    folder = staging_folder(upload_dir)
    try:
        staged = stage(stream, folder, name, max_bytes)
        result = ingestor.ingest_file(staged, collection, source_path=source_key(collection, name))
        if result.status in KEPT:
            keep(staged, name, upload_dir, collection)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return replace(result, path=name)
