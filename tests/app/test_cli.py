"""The `archivist` CLI through Typer's runner, on a temporary data dir and the real models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.settings import get_settings

runner = CliRunner()


@pytest.fixture
def data_dir(data_dir: Path, monkeypatch: pytest.MonkeyPatch, generator) -> Path:  # type: ignore[no-untyped-def]
    """The app-wide fresh data dir, with short answers from the session's already-loaded model."""
    monkeypatch.setenv("ARCHIVIST_MAX_NEW_TOKENS", "8")
    monkeypatch.setattr(
        "app.services.load_generator", lambda settings, compile_in_background=False: generator
    )
    get_settings.cache_clear()
    return data_dir


def test_ingest_summary_then_no_op_then_ask(data_dir: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "moon.md").write_text("# The Moon\n\nThe Moon orbits the Earth every 27.3 days.")
    (docs / "sun.txt").write_text("The Sun is a G-type main-sequence star.")
    (docs / "broken.txt").write_bytes(bytes(range(256)))
    first = runner.invoke(cli, ["ingest", str(docs), "--collection", "space"])
    assert first.exit_code == 1  # one file failed; the others were ingested
    assert "Ingest summary" in first.output and "broken.txt" in first.output
    row = next(line for line in first.output.splitlines() if line.count("│") >= 7)
    assert [cell.strip() for cell in row.split("│")[1:6]] == ["2", "0", "0", "0", "1"]

    (docs / "broken.txt").unlink()
    again = runner.invoke(cli, ["ingest", str(docs), "--collection", "space"])
    assert again.exit_code == 0
    row = next(line for line in again.output.splitlines() if line.count("│") >= 7)
    assert [cell.strip() for cell in row.split("│")[1:7]] == ["0", "2", "0", "0", "0", "0"]

    asked = runner.invoke(cli, ["ask", "How long does the Moon take to orbit?", "-c", "space", "-k", "2"])
    assert asked.exit_code == 0, asked.output
    assert "[1] The Moon — chunk 0" in asked.output and "[2] sun" in asked.output


def test_bad_cli_input(data_dir: Path) -> None:
    missing = runner.invoke(cli, ["ingest", "/no/such/path"])
    assert missing.exit_code == 2 and "/no/such/path" in missing.output
    assert runner.invoke(cli, ["ask", "   "]).exit_code == 2
    unknown = runner.invoke(cli, ["ask", "anything", "--collection", "nowhere"])
    assert unknown.exit_code == 1 and "nowhere" in unknown.output
    assert runner.invoke(cli, ["ask", "x", "--top-k", "0"]).exit_code == 2


def test_generate_streams_a_reply_and_rejects_bad_input(data_dir: Path) -> None:
    result = runner.invoke(cli, ["generate", "What is the capital of France?", "-n", "12"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.output
    assert "tokens in" in result.output and "finish: " in result.output
    assert runner.invoke(cli, ["generate", "  "]).exit_code == 2
    assert runner.invoke(cli, ["generate", "hi", "--temperature", "-1"]).exit_code == 2
    overflow = runner.invoke(cli, ["generate", "word " * 5000, "-n", "8"])
    assert overflow.exit_code == 1 and "context" in overflow.output
    unknown = runner.invoke(cli, ["generate", "hi", "--adapter", "no-such-adapter"])
    assert unknown.exit_code == 1 and "no-such-adapter" in unknown.output


@contextmanager
def setting(monkeypatch: pytest.MonkeyPatch, variable: str, value: str | None) -> Iterator[None]:
    """Settings read inside see `variable` = `value` (unset for None); the settings cache is cleared."""
    if value is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(("env", "eager"), [(None, True), ("false", False), ("true", True)])
def test_one_answer_commands_decode_eagerly_unless_told(
    monkeypatch: pytest.MonkeyPatch, env: str | None, eager: bool
) -> None:
    from app.cli import _one_answer_settings

    with setting(monkeypatch, "ARCHIVIST_LLM_ENFORCE_EAGER", env):
        assert _one_answer_settings().engine_config().enforce_eager is eager
        assert get_settings().llm_enforce_eager is (env == "true")  # servers compile by default


@pytest.mark.parametrize("value", [None, "int8-activations", "dequantized"])
def test_the_cpu_weights_setting_reaches_the_engine(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    with setting(monkeypatch, "ARCHIVIST_LLM_CPU_WEIGHTS", value):
        assert get_settings().engine_config().cpu_weights == (value or "auto")


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("ARCHIVIST_LLM_ENFORCE_EAGER", "maybe", ["generate", "hi"]),
        ("ARCHIVIST_LLM_CPU_WEIGHTS", "fastest", ["generate", "hi"]),
        ("ARCHIVIST_TOP_K", "-3", ["ask", "why?"]),
        # An admin key that could be guessed: too short, or copied from an example.
        ("ARCHIVIST_ADMIN_KEY", "hunter2", ["serve"]),
        ("ARCHIVIST_ADMIN_KEY", "changeme-changeme-changeme", ["serve"]),
        ("ARCHIVIST_ADMIN_KEY", "a" * 32, ["serve"]),
    ],
)
def test_a_bad_setting_is_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, command: list[str]
) -> None:
    with setting(monkeypatch, variable, value):
        result = runner.invoke(cli, command)
    assert result.exit_code == 2
    assert f"invalid setting {variable}" in result.output
    assert value not in result.output  # a refused value, a secret perhaps, is not echoed
    assert result.exception is None or isinstance(result.exception, SystemExit)
