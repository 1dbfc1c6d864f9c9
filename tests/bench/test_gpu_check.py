"""`make gpu-check DRY_RUN=1` (bench/gpu_check.py): the whole GPU check at toy sizes on the CPU writes one
report holding every step, says that it is a dry run, and the GPU check misses no gpu-marked test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import GPU_TEST_DIRS, REPORT, ROOT

STEPS = (
    "Setup: wheels from .gpu-wheels/",
    "GPU-marked tests (pytest -m gpu)",
    "Triton kernels vs torch (bench.kernels)",
    "Engine vs transformers generate, SmolLM2-135M shapes (bench.engine)",
    "Vector search: exact torch search vs faiss-cpu",
    "Engine vs transformers generate, Llama-3.2-1B shapes (bench.engine)",
)


def test_dry_run_reports_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = (tmp_path / REPORT).read_text(encoding="utf-8")
    assert "This is a dry run on the CPU at toy sizes" in report
    assert re.findall(r"^## (.+)$", report, flags=re.MULTILINE) == ["Summary", *STEPS]
    for step in STEPS:
        assert f"| {step} | ok |" in report
    assert "CPU interpreter correctness smoke" in report  # the kernels, under the Triton interpreter
    for backend in ("ours, eager", "ours, int4, eager", "ours, int8, eager", "hf"):
        assert report.count(f"| {backend} |") == 2 * 3  # both models: batch-1 and two RAG loads each
    assert "faiss-cpu IndexFlatIP, float32 (baseline)" in report


def test_every_gpu_marked_test_is_in_a_folder_the_gpu_check_runs() -> None:
    marked = [
        path
        for path in (ROOT / "tests").rglob("*.py")
        if re.search(r"mark\.gpu\b|^@gpu$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    ]
    assert marked
    assert [p for p in marked if not any(p.is_relative_to(ROOT / folder) for folder in GPU_TEST_DIRS)] == []
