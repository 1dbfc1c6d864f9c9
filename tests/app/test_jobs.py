"""Multi-file uploads run as background ingest jobs; `GET /v1/jobs/{id}` reports progress and per-file
results, bad files failing alone."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.services import Services


def finished(client: TestClient, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200, job.text
        if job.json()["state"] in ("done", "failed"):
            return dict(job.json())
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_several_files_are_ingested_in_the_background(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.settings, "max_upload_bytes", 4096)
    note = b"# Anchors\n\nAn anchor holds a ship in place when it is dropped to the sea bed."
    uploads = [
        ("files", ("anchors.md", note)),
        ("files", ("harbour/moor.txt", b"Boats moor at the quay inside the harbour wall overnight.")),
        ("files", ("harbour/moor.txt", b"A second file of the same name is stored beside the first one.")),
        ("files", ("garbage.txt", bytes(range(256)))),
        ("files", ("copy.md", note)),
        ("files", ("big.txt", b"x " * 4096)),
        ("files", ("empty.md", b"")),
    ]
    response = client.post("/v1/documents", files=uploads, data={"collection": "jobs"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["files_total"] == 7 and job["collection"] == "jobs"

    done = finished(client, job["id"])
    assert done["state"] == "done" and done["files_done"] == 7 and done["chunks_written"] == 3
    results = {r["path"]: r for r in done["results"]}
    assert results["anchors.md"]["status"] == "added" and results["anchors.md"]["document_id"]
    assert results["harbour/moor.txt"]["status"] == results["harbour/moor-2.txt"]["status"] == "added"
    assert results["garbage.txt"]["status"] == "failed" and "binary" in results["garbage.txt"]["reason"]
    assert results["copy.md"]["status"] == "duplicate"
    assert results["copy.md"]["duplicates"][0]["of_source"] == "upload://jobs/anchors.md"
    assert results["big.txt"]["status"] == "failed" and "4096 byte limit" in results["big.txt"]["reason"]
    assert results["empty.md"]["status"] == "skipped"

    listed = client.get("/v1/documents", params={"collection": "jobs"}).json()["documents"]
    assert sorted(d["source_path"] for d in listed) == [
        "upload://jobs/anchors.md",
        "upload://jobs/harbour/moor-2.txt",
        "upload://jobs/harbour/moor.txt",
    ]
    upload_dir = services.settings.upload_dir.resolve()
    kept = sorted(p.name for p in (upload_dir / "jobs").iterdir())
    assert kept == ["anchors.md", "harbour%2Fmoor-2.txt", "harbour%2Fmoor.txt"]
    assert not any((upload_dir / ".jobs").iterdir())  # the job removed its folder
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job["id"]]


def test_upload_form_errors(client: TestClient) -> None:
    both = client.post(
        "/v1/documents",
        files=[("file", ("a.txt", b"a")), ("files", ("b.txt", b"b"))],
        data={"collection": "x"},
    )
    assert both.status_code == 422 and "`file`" in both.json()["detail"]
    assert client.post("/v1/documents", data={"collection": "x"}).status_code == 422
    assert client.get("/v1/jobs/no-such-job").status_code == 404


def test_a_single_duplicate_upload_names_the_original(client: TestClient) -> None:
    text = b"The harbour master keeps the register of every boat that moors at the quay overnight."
    first = client.post("/v1/documents", files={"file": ("one.txt", text)}, data={"collection": "d"})
    assert first.status_code == 201
    copy = client.post("/v1/documents", files={"file": ("two.txt", text)}, data={"collection": "d"})
    assert copy.status_code == 200 and copy.json()["status"] == "duplicate"
    assert copy.json()["document"] is None
    assert copy.json()["duplicates"][0]["of_source"] == "upload://d/one.txt"


def test_a_starting_process_removes_only_abandoned_staging_folders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import socket
    import subprocess
    import sys

    from app.ops.uploads import ABANDONED_AFTER_SECONDS, remove_abandoned_staging, staging_folder

    mine = staging_folder(tmp_path)  # this live process's upload in progress
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)  # a process of this host that has exited
    root = tmp_path / ".incoming"
    host = socket.gethostname()
    dead_here = root / f"{host}+{dead_pid}+abc123"
    other_host_fresh = root / f"replica-2.example.com+{os.getpid()}+def456"
    other_host_old = root / "replica-3.example.com+17+ghi789"
    for folder in (dead_here, other_host_fresh, other_host_old):
        (folder / "0").mkdir(parents=True)
        (folder / "0" / "upload.txt").write_text("staged")
    old = time.time() - ABANDONED_AFTER_SECONDS - 60
    os.utime(other_host_old, (old, old))

    removed = remove_abandoned_staging(tmp_path)
    assert sorted(removed) == sorted([dead_here, other_host_old])
    assert mine.is_dir() and other_host_fresh.is_dir() and not dead_here.exists()
