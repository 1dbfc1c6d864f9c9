"""Ingestion benchmark (not part of pytest): the real pipeline, end to end, on the shared corpora.

Run from the repository root: `python -m bench.ingest [--device cuda] [--squad-unit article]`.

Each corpus goes into a fresh data dir: SQuAD dev-a (`../shared/data/squad/squad-v1.1-dev-a.json`, 913
paragraphs, each a document) and the Chinese articles of `../shared/data/zh/`. Prints the hardware and git
revision, then a markdown table per corpus: files, documents, chunks, wall seconds, files/s, documents/s,
chunks/s, busy seconds per stage (load, clean, chunk, dedup, embed, write; parsing overlaps embedding, so
the stages add up to more than the wall time), the share of wall time outside embedding, and the same-run
baseline: the embedder alone on exactly the texts the pipeline embedded, in one call, with the ratio of the
two, in wall time and in CPU time of this process (which, unlike wall time, other load on a shared machine
barely changes). Loading the model is timed apart (once per process, not per ingest).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from app.settings import Settings  # noqa: E402
from bench.machine import cpu_name, git_revision, load_average  # noqa: E402
from ingest.pipeline import STAGES, Ingestor  # noqa: E402
from retriever.embedder import load_embedder  # noqa: E402
from retriever.store import KnowledgeBase  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CORPORA = {"squad dev-a": SHARED / "squad" / "squad-v1.1-dev-a.json", "zh articles": SHARED / "zh"}


class RecordingEmbedder:
    """The real embedder, keeping every text it is asked to embed (for the embed-only baseline)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += texts
        return np.asarray(self.inner.embed(texts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def hardware(device: str) -> str:
    load = f", load average {load_average()}"
    gpu = (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda") and torch.cuda.is_available()
        else "none used"
    )
    return (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs (torch threads {torch.get_num_threads()}{load}); "
        f"GPU: {gpu}; "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )


def run(name: str, path: Path, settings: Settings, embedder: Any) -> dict[str, Any]:
    recording = RecordingEmbedder(embedder)
    kb = KnowledgeBase(settings.retriever_config(), recording)  # type: ignore[arg-type]
    cpu = time.process_time()
    try:
        report = Ingestor(kb, settings.chunker_config(), settings.ingest_config()).ingest_paths(
            [path], "bench"
        )
        documents = sum(r.documents for r in report.results)
    finally:
        kb.close()
    cpu = time.process_time() - cpu
    started, embed_cpu = time.perf_counter(), time.process_time()
    embedder.embed(recording.texts)
    embed_only, embed_cpu = time.perf_counter() - started, time.process_time() - embed_cpu
    failed = [f"{r.path}: {r.reason}" for r in report.results if r.status == "failed"]
    return {
        "corpus": name,
        "files": len(report.results),
        "documents": documents,
        "chunks": report.chunks_written,
        "wall": report.seconds,
        "stages": report.stages,
        "embed_only": embed_only,
        "cpu": cpu,
        "embed_cpu": embed_cpu,
        "failed": failed,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = [
        "corpus",
        "files",
        "docs",
        "chunks",
        "wall s",
        "files/s",
        "docs/s",
        "chunks/s",
        *(f"{s} s" for s in STAGES),
    ]
    head += [
        "outside embedding",
        "embedder alone s",
        "pipeline / embedder alone",
        "CPU s: pipeline / embedder alone",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        wall = row["wall"]
        cells = [row["corpus"], str(row["files"]), str(row["documents"]), str(row["chunks"]), f"{wall:.1f}"]
        cells += [f"{row[key] / wall:.1f}" for key in ("files", "documents", "chunks")]
        cells += [f"{row['stages'][stage]:.2f}" for stage in STAGES]
        cells += [f"{1 - row['stages']['embed'] / wall:.1%}", f"{row['embed_only']:.1f}"]
        cells += [f"{wall / row['embed_only']:.2f}x", f"{row['cpu']:.0f} / {row['embed_cpu']:.0f}"]
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        for failure in row["failed"]:
            print(f"- failed in {row['corpus']}: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="embedder device: cpu or cuda")
    parser.add_argument("--squad-unit", choices=["paragraph", "article"], default="paragraph")
    parser.add_argument("--corpus", choices=[*CORPORA, "all"], default="all")
    args = parser.parse_args()
    missing = [str(path) for path in CORPORA.values() if not path.exists()]
    if missing:
        print(f"shared data is absent ({', '.join(missing)}): nothing to benchmark")
        return 0
    print("# Ingestion benchmark\n")
    print(f"- git revision: {git_revision()}")
    print(f"- hardware: {hardware(args.device)}")
    with tempfile.TemporaryDirectory() as scratch:
        base = Settings(
            data_dir=Path(scratch) / "unused", embedder_device=args.device, squad_unit=args.squad_unit
        )
        config = base.retriever_config()
        started = time.perf_counter()
        embedder = load_embedder(
            config.embedder_backend,
            config.embedder_path,
            args.device,
            config.embed_batch_size,
            config.embedder_dtype,
        )
        loaded = time.perf_counter() - started
        name = (
            f"{config.embedder_backend} {getattr(embedder, 'name', '')} on {args.device}, "
            f"{getattr(embedder, 'dtype', 'native')} (ARCHIVIST_EMBEDDER_DTYPE)"
        )
        print(f"- embedder: {name}, loaded in {loaded:.1f} s (not counted below)")
        chunking = f"{base.chunk_tokens} tokens, overlap {base.chunk_overlap}"
        print(f"- chunks of {chunking}; SQuAD: a document per {args.squad_unit}\n")
        rows = []
        for name, path in CORPORA.items():
            if args.corpus in (name, "all"):
                settings = base.model_copy(update={"data_dir": Path(scratch) / name.replace(" ", "-")})
                rows.append(run(name, path, settings, embedder))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
