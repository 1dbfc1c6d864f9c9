"""`archivist eval`: gold spans mapped through cleaning, SQuAD scoring, and a whole run on a small file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.quality.evaluation import (
    EvaluationError,
    cleaned_offset,
    exact_match,
    f1_score,
    holds_answer,
    markdown_table,
    run_evaluation,
    split_articles,
    split_name,
    write_outputs,
)
from app.settings import Settings
from ingest.cleaning import clean_text

ARTICLES = [
    (
        "Glaciers_of_the_Alps",
        [
            "The Aletsch Glacier is the largest glacier in the Alps. It covers about 80 square kilometres "
            "in the canton of Valais.",
            "Glaciers  retreat  when summers are warm. The Rhone Glacier has lost more than a kilometre "
            "of length since 1850.",
        ],
        [
            ("Which glacier is the largest in the Alps?", "Aletsch Glacier", 0),
            ("Since which year has the Rhone Glacier lost length?", "1850", 1),
        ],
    ),
    (
        "Saturn_V",
        [
            "The Saturn V was a rocket developed by NASA for the Apollo program. It flew thirteen times "
            "from the Kennedy Space Center.",
        ],
        [("How many times did the Saturn V fly?", "thirteen", 0)],
    ),
]


def squad_file(path: Path) -> Path:
    data = []
    for title, paragraphs, questions in ARTICLES:
        entries = [{"context": text, "qas": []} for text in paragraphs]
        for number, (question, answer, index) in enumerate(questions):
            start = paragraphs[index].index(answer)
            entries[index]["qas"].append(
                {
                    "id": f"{title}-{number}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": start}],
                }
            )
        data.append({"title": title, "paragraphs": entries})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def test_cleaned_offset_follows_cleaning() -> None:
    raw = "  The \ufb01rst  glacier   of the   Alps"
    cleaned = clean_text(raw)
    for word in ("rst", "glacier", "Alps"):
        assert cleaned[cleaned_offset(raw, raw.index(word)) :].startswith(word)


def test_squad_scoring() -> None:
    assert exact_match("The Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert exact_match("Broncos", ["Denver Broncos"]) == 0.0
    assert f1_score("the Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)
    assert f1_score("nothing", ["Denver Broncos", "Broncos"]) == 0.0
    assert holds_answer("They beat the Denver Broncos in 2016.", ["Denver Broncos", "Broncos"]) == 1.0
    assert holds_answer("The Broncos' rivals", ["Denver Broncos"]) == 0.0
    assert holds_answer("abroncos", ["Broncos"]) == 0.0 and holds_answer("anything", [""]) == 0.0


def test_evaluation_run_reports_every_mode(settings: Settings, tmp_path: Path) -> None:
    copying = settings.model_copy(update={"answer_copy_spans": True})
    report = run_evaluation(copying, squad_file(tmp_path / "tiny.json"), generate=True, free_text=True)
    assert (report.articles, report.questions, report.unmapped_answers) == (2, 3, 0)
    assert set(report.modes) == {"dense", "lexical", "hybrid"}
    for result in report.modes.values():
        assert result.recall[20] == 1.0 and 0 < result.mrr_at_10 <= 1.0
        assert len(result.latencies_ms) == 3 and result.latency_p50_ms > 0
    assert report.generation is not None
    # Answers copied from the passages (the default), and the same model writing freely, in one run.
    assert {"base model", "base model (free text)"} <= set(report.generation)
    base = report.generation["base model"]
    assert base["questions"] == 3 and base["gold_questions"] == 3
    for name in ("exact_match", "f1", "holds", "refused", "gold_f1", "wrong_refused"):
        assert 0.0 <= base[name] <= 1.0
    table = markdown_table(report)
    assert "| hybrid |" in table and "| base model | 3 |" in table
    json_path, png_path = write_outputs(report, tmp_path / "out" / "tiny")
    assert json.loads(json_path.read_text())["modes"]["hybrid"]["recall"]["@5"] == 1.0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_holds_out_whole_articles() -> None:
    train, validation = split_articles(24, "train"), split_articles(24, "validation")
    assert not train & validation and train | validation == set(range(24)) and len(validation) == 6
    assert split_articles(24, "all") == set(range(24))
    with pytest.raises(EvaluationError, match="split must be"):
        split_name("test")


def test_eval_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVIST_DATA_DIR", str(tmp_path / "data"))
    from app.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["eval", str(squad_file(tmp_path / "tiny.json")), "--sample", "2"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "| mode | recall@1 |" in result.output and "2 questions" in result.output
    assert (tmp_path / "data" / "eval" / "tiny.json").exists() and (
        tmp_path / "data" / "eval" / "tiny.png"
    ).exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert CliRunner().invoke(cli, ["eval", str(bad)]).exit_code == 1


def test_eval_perplexity_reports_tokens_nll_and_perplexity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVIST_DATA_DIR", str(tmp_path / "data"))
    text = tmp_path / "glaciers.txt"
    text.write_text(" ".join(paragraph for _, paragraphs, _ in ARTICLES for paragraph in paragraphs), "utf-8")
    from app.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["eval", "--perplexity", str(text)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    found = re.search(r"(\d+) tokens, mean NLL (\d+\.\d+), perplexity (\d+\.\d+)", result.output)
    assert found and int(found[1]) > 50, result.output
    assert math.isclose(math.exp(float(found[2])), float(found[3]), rel_tol=1e-3)


@pytest.mark.parametrize("content", [None, b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"])
def test_eval_perplexity_refuses_a_missing_empty_or_binary_file(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "notes.txt"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["eval", "--perplexity", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and str(path) in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_eval_needs_a_file_or_perplexity() -> None:
    result = CliRunner().invoke(cli, ["eval"])
    assert result.exit_code == 2 and "--perplexity" in result.output


def test_finetune_refuses_a_file_that_is_not_squad(tmp_path: Path) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text('{"rows": []}')
    output = tmp_path / "adapter"
    result = CliRunner().invoke(cli, ["finetune", str(bad), "--output", str(output)])
    assert result.exit_code == 1 and "is not a SQuAD-format file" in result.output
    assert not output.exists()  # nothing written for a refused run


def test_finetune_refuses_to_go_on_from_a_folder_that_is_no_adapter(tmp_path: Path) -> None:
    squad = tmp_path / "squad.json"
    squad.write_text('{"data": []}')
    (tmp_path / "notes").mkdir()
    output = tmp_path / "adapter"
    arguments = ["finetune", str(squad), "--output", str(output), "--start-from", str(tmp_path / "notes")]
    result = CliRunner().invoke(cli, arguments)
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1 and f"error: {tmp_path / 'notes'}: not a LoRA adapter folder" in said, said
    assert not output.exists()


@pytest.mark.parametrize("share", ["-0.1", "0.95", "half"])
def test_finetune_refuses_a_no_answer_share_out_of_range(tmp_path: Path, share: str) -> None:
    squad = tmp_path / "squad.json"
    squad.write_text('{"data": []}')
    output = tmp_path / "adapter"
    arguments = ["finetune", str(squad), "--output", str(output), "--no-answer-share", share]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2 and "no-answer-share" in result.output
    assert not output.exists()
