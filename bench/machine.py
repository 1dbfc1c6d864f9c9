"""What every benchmark shares: where it ran (the CPU, the load on it, the git revision) and how per-call
latencies are sampled."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

import numpy as np

Call = TypeVar("Call")

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1/5/15-minute load averages: benchmarks on a shared machine are only as good as this."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def git_revision() -> str:
    """Short HEAD hash, marked `+dirty` when the working tree has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git or no commit)"
    return rev + ("+dirty" if dirty.stdout.strip() else "")


def library_versions() -> str:
    """The versions every GPU figure depends on: torch (with the CUDA it was built for) and triton."""
    import torch

    try:
        triton = f"triton {version('triton')}"
    except PackageNotFoundError:
        triton = "no triton"
    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    return f"torch {torch.__version__}{cuda}, {triton}"


def timed(calls: Sequence[Call], run: Callable[[Call], object], warmup: int) -> list[float]:
    """Milliseconds of `run(call)` for each call after the first `warmup` ones (run untimed)."""
    for call in calls[:warmup]:
        run(call)
    samples = []
    for call in calls[warmup:]:
        started = time.perf_counter()
        run(call)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 of `samples`."""
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return float(p50), float(p95), float(p99)
