"""A small corpus for the API tests that need no language model: a Markdown guide with headings, a text file
of paragraphs and a two-page PDF, uploaded through the API, with settings whose model cannot load."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.services import Services
from app.settings import Settings
from tests.conftest import make_settings
from tests.ingest.documents import make_pdf

GUIDE = (
    "# Lighthouses\n\nLighthouses guide ships along dangerous coasts at night.\n\n## Keepers\n\n"
    "The Eddystone lighthouse keeper lit the lamp at dusk and trimmed the wick every four hours.\n"
)
# Paragraphs without trailing spaces, so the stored (cleaned) text is the uploaded text and offsets compare.
ANIMALS = "\n\n".join(
    [
        " ".join(["Owls hunt at night."] * 30),
        "The barn owl nests in old barns and church towers across Europe.",
        " ".join(["Foxes roam at dusk."] * 30),
    ]
)
HARBOUR = [f"The harbour of Portwick handled {n} thousand tons of timber in year {n}." for n in range(1, 9)]
ICE = [f"The Aletsch Glacier lost {n} metres of ice in summer {n}." for n in range(1, 9)]
REPORT = make_pdf(
    [["Harbour report", *HARBOUR], [*ICE, "The Aletsch Glacier is the largest glacier in the Alps."]]
)
OWL = "Where does the barn owl nest?"
KEEPER = "Who lit the lamp at the Eddystone lighthouse?"
GLACIER = "Which is the largest glacier in the Alps?"
ADMIN = {"Authorization": "Bearer admin-secret-for-tests"}


@dataclass
class Corpus:
    client: TestClient
    services: Services
    ids: dict[str, int]  # file name -> document id


def no_model_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings whose language model cannot load (no file at its path), with small chunks so that the
    longer documents span several."""
    return make_settings(
        tmp_path / "data",
        llm_path=tmp_path / "no-model.gguf",
        chunk_tokens=48,
        chunk_overlap=8,
        top_k=3,
        **overrides,
    )


def upload(client: TestClient, name: str, content: bytes, collection: str = "default", **kwargs: Any) -> int:
    response = client.post(
        "/v1/documents", files={"file": (name, content)}, data={"collection": collection}, **kwargs
    )
    assert response.status_code == 201, response.text
    return int(response.json()["document"]["id"])


def upload_corpus(client: TestClient) -> dict[str, int]:
    files = {"guide.md": GUIDE.encode(), "animals.txt": ANIMALS.encode(), "report.pdf": REPORT}
    return {name: upload(client, name, content) for name, content in files.items()}


def wait_for_llm(services: Services) -> None:
    deadline = time.monotonic() + 60
    while services.readiness()["llm"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)
