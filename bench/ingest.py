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

Then OCR (needs Tesseract): pages/s of the PDF loader on scanned pages it renders (English and Chinese text
drawn with Noto Sans CJK, one image per page), and on a text PDF, whose loader now checks every page for a
missing text layer, against the same-run baseline of pypdf's text extraction alone (the loader before OCR).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import textwrap
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
from ingest.config import IngestConfig  # noqa: E402
from ingest.loaders import load_file  # noqa: E402
from ingest.pipeline import STAGES, Ingestor  # noqa: E402
from retriever.embedder import load_embedder  # noqa: E402
from retriever.store import KnowledgeBase  # noqa: E402
from tests.ingest.documents import NOTO_CJK, images_pdf, make_pdf, scanned_page  # noqa: E402

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


OCR_ENGLISH = (
    "The lighthouse on Skerry Point was built in 1871 from granite quarried on the island. Its keeper "
    "climbed "
    "one hundred and twelve steps every evening to light the lamp, and wound the clockwork that turned the "
    "lens until dawn, when the fishing boats came home. "
) * 3
OCR_CHINESE = (
    "长城是中国古代的军事防御工程，修建的历史可以追溯到西周时期。明代重新修筑的长城东起山海关，西至嘉峪关。"
    "大熊猫主要生活在四川、陕西和甘肃的山区，以竹子为主要食物。一只成年大熊猫每天要花十多个小时进食。"
) * 2


def timed(work: Any, repeats: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats


def pdf_text_alone(pdf: bytes) -> None:
    from pypdf import PdfReader

    for page in PdfReader(io.BytesIO(pdf)).pages:
        page.extract_text()


def print_ocr_table(pages: int) -> None:
    if shutil.which("tesseract") is None or not NOTO_CJK.exists():
        print("\nOCR: skipped (needs tesseract-ocr, tesseract-ocr-chi-sim and fonts-noto-cjk)")
        return
    config = IngestConfig()
    print(f"\n## OCR (languages {config.ocr_languages}, {pages} pages each)\n")
    print("| input | pages | wall s | pages/s | baseline | baseline s | loader / baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, text, width in (("scanned, English", OCR_ENGLISH, 80), ("scanned, Chinese", OCR_CHINESE, 40)):
        pdf = images_pdf([scanned_page(textwrap.wrap(text, width))] * pages)
        wall = timed(lambda pdf=pdf: load_file(Path("scan.pdf"), pdf, config))
        print(f"| {name} | {pages} | {wall:.2f} | {pages / wall:.2f} | - | - | - |")
    text_pages = 50
    pdf = make_pdf([textwrap.wrap(OCR_ENGLISH, 80)] * text_pages)
    loader = timed(lambda: load_file(Path("text.pdf"), pdf, config), 5)
    alone = timed(lambda: pdf_text_alone(pdf), 5)
    print(
        f"| text layer (no OCR needed) | {text_pages} | {loader:.3f} | {text_pages / loader:.0f} | "
        f"pypdf extraction alone | {alone:.3f} | {loader / alone:.2f}x |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="embedder device: cpu or cuda")
    parser.add_argument("--squad-unit", choices=["paragraph", "article"], default="paragraph")
    parser.add_argument("--corpus", choices=[*CORPORA, "ocr", "all"], default="all")
    parser.add_argument("--ocr-pages", type=int, default=4, help="scanned pages OCR'd per language")
    args = parser.parse_args()
    print("# Ingestion benchmark\n")
    print(f"- git revision: {git_revision()}")
    print(f"- hardware: {hardware(args.device)}")
    if args.corpus == "ocr":
        print_ocr_table(args.ocr_pages)
        return 0
    missing = [str(path) for path in CORPORA.values() if not path.exists()]
    if missing:
        print(f"shared data is absent ({', '.join(missing)}): nothing to benchmark")
        return 0
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
    if args.corpus == "all":
        print_ocr_table(args.ocr_pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
