"""`archivist keys create|list|revoke` on a temporary data dir, and the keys working against the API."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.api.app import create_app
from app.cli import cli
from app.services import Services
from retriever.store import KnowledgeBase
from tests.conftest import make_settings

runner = CliRunner()


def test_keys_made_on_the_command_line_work_until_revoked(
    data_dir: Path, kb: KnowledgeBase, generator
) -> None:  # type: ignore[no-untyped-def]
    created = runner.invoke(cli, ["keys", "create", "ci bot", "--read", "docs", "--write", "notes"])
    assert created.exit_code == 0, created.output
    secret = re.search(r"key: (ak_\S+)", created.output)
    assert secret, created.output
    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0 and "ci bot" in listed.output and secret.group(1) not in listed.output

    settings = make_settings(data_dir, require_auth=True)
    with TestClient(create_app(Services(settings, kb=kb, generator=generator))) as client:
        headers = {"Authorization": f"Bearer {secret.group(1)}"}
        upload = {"files": {"file": ("n.txt", b"A note.")}, "data": {"collection": "notes"}}
        assert client.post("/v1/documents", headers=headers, **upload).status_code == 201  # type: ignore[arg-type]
        assert client.post("/v1/documents", headers=headers, files={"file": ("d.txt", b"Doc.")},
                           data={"collection": "docs"}).status_code == 403  # fmt: skip
        assert runner.invoke(cli, ["keys", "revoke", "1"]).exit_code == 0
        assert client.get("/v1/documents", headers=headers).status_code == 401


def test_bad_key_commands(data_dir: Path) -> None:
    assert runner.invoke(cli, ["keys", "create", "nothing"]).exit_code == 2
    assert runner.invoke(cli, ["keys", "create", "bad", "--read", "../etc"]).exit_code == 2
    missing = runner.invoke(cli, ["keys", "revoke", "42"])
    assert missing.exit_code == 1 and "42" in missing.output
