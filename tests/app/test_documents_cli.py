"""`archivist ingest --prune` and `archivist documents list|show|delete`, through Typer's runner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli

runner = CliRunner()


def test_ingest_prune_and_documents_commands(data_dir: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\n## Mooring\n\nUse two lines.\n\n## Fees\n\nPay at the office.")
    (docs / "tides.txt").write_text("Tides rise twice a day.")
    (docs / "zz-copy.txt").write_text("Tides rise twice a day.")
    first = runner.invoke(cli, ["ingest", str(docs), "-c", "harbour"])
    assert first.exit_code == 0, first.output
    assert "Duplicates left out (1 file(s), 0 chunk(s))" in first.output
    flat = first.output.replace("\n", "")  # long lines wrap at the runner's 80 columns
    assert f"all of {docs / 'zz-copy.txt'} repeat 'tides' ({docs / 'tides.txt'})" in flat

    listed = runner.invoke(cli, ["documents", "list", "-c", "harbour"])
    assert listed.exit_code == 0 and "2 document(s)" in listed.output
    ids = {
        line.split("│")[3].strip(): int(line.split("│")[1])
        for line in listed.output.splitlines()
        if "│ harbour" in line
    }
    assert set(ids) == {"Guide", "tides"}

    shown = runner.invoke(cli, ["documents", "show", str(ids["Guide"])])
    assert shown.exit_code == 0, shown.output
    assert (
        "Guide > Mooring" in shown.output and "Guide > Fees" in shown.output and "2 chunk(s)" in shown.output
    )

    (docs / "tides.txt").unlink()
    pruned = runner.invoke(cli, ["ingest", str(docs), "-c", "harbour", "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert "Pruned 1 document(s)" in pruned.output and str(docs / "tides.txt") in pruned.output.replace(
        "\n", ""
    )
    # With the original gone, its copy is ingested in its place.
    row = next(line for line in pruned.output.splitlines() if line.count("│") >= 7)
    assert [cell.strip() for cell in row.split("│")[1:8]] == ["1", "1", "0", "0", "0", "1", "0"]

    deleted = runner.invoke(cli, ["documents", "delete", str(ids["Guide"])])
    assert deleted.exit_code == 0 and f"deleted document {ids['Guide']}: Guide (2 chunks)" in deleted.output
    assert runner.invoke(cli, ["documents", "show", str(ids["Guide"])]).exit_code == 1
    missing = runner.invoke(cli, ["documents", "list", "-c", "nowhere"])
    assert missing.exit_code == 1 and "nowhere" in missing.output
