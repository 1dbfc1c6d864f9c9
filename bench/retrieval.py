"""Retrieval latency at 100k chunks on this machine, with the baselines measured in the same run.

Run from the repository root: `python -m bench.retrieval [--chunks 100000] [--queries 300]`. It needs
`../shared/data/squad/squad-v1.1-dev-a.json` and exits 0 with a message when it is absent.

Corpus: the SQuAD dev-a paragraphs (913, each one chunk with its article title) replicated with
perturbations up to `--chunks`. Each copy drops ~10 % of the words at random and swaps ~5 % of adjacent word
pairs (so BM25 sees different lengths and term frequencies), and its vector is the original embedding plus
Gaussian noise (σ = 0.025 per dimension, cosine ≈ 0.9 to the original), renormalized. The copies are not
re-embedded: embedding 100k chunks would take about an hour on two shared cores and would not change what
is timed here. Replication keeps the vocabulary small, so BM25 posting lists are ~100× longer than in a
real corpus of the same size: the lexical timings are pessimistic.

Queries: SQuAD questions (a seeded sample). What is timed, per query, after 20 warm-up queries:
* `embed query`: MiniLM on the CPU, one query (part of every dense and hybrid search);
* `dense search`: the FAISS search alone: a float32 `IndexFlatIP` over the embeddings read back from SQL
  (the exact baseline), our exhaustive float16 index (the type used up to `flat_max_vectors`) and IVF (the
  type used above it); the recall@10 of both against the exact baseline is printed with them;
* `lexical search`: the BM25 index alone;
* `KnowledgeBase.search`: everything a query costs the API except HTTP: truncation, embedding, both
  searches, fusion, and reading the hit rows from SQL (SQLite here).
When FAISS sees a GPU, the Flat search is also timed on the GPU replica and the speed-up printed.

Caveats: the machine's load average is printed, since other processes on a shared machine inflate every
number; IVF's recall against Flat is optimistic here, because the perturbed copies of a paragraph sit close
together and so fall into the same lists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench.machine import cpu_name, git_revision, load_average, percentiles, timed  # noqa: E402
from retriever.config import RetrieverConfig  # noqa: E402
from retriever.embedder import Embedder  # noqa: E402
from retriever.models import Chunk  # noqa: E402
from retriever.records import ChunkDraft, DocumentDraft  # noqa: E402
from retriever.store import KnowledgeBase  # noqa: E402
from retriever.vector_index import VectorIndex  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad" / "squad-v1.1-dev-a.json"
NOISE = 0.025
DOCUMENTS = 10  # the corpus is written as this many documents: one SQL transaction and index save each
WARMUP = 20
BASELINE = "dense search, IndexFlatIP float32 (exact) — baseline"


def hardware() -> str:
    gpus = faiss.get_num_gpus()
    return (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs (torch threads {torch.get_num_threads()}), "
        f"faiss {faiss.__version__} ({f'{gpus} GPU(s)' if gpus else 'no GPU'}), "
        f"load average {load_average()}, "
        f"python {platform.python_version()}"
    )


def perturb(text: str, rng: random.Random) -> str:
    words = [word for word in text.split() if rng.random() >= 0.10] or text.split()
    for i in range(len(words) - 1):
        if rng.random() < 0.05:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build_corpus(kb: KnowledgeBase, total: int, seed: int) -> list[str]:
    """Write `total` chunks into collection `bench`; returns the SQuAD questions."""
    articles = json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
    base = [(a["title"].replace("_", " "), p["context"]) for a in articles for p in a["paragraphs"]]
    questions = [qa["question"] for a in articles for p in a["paragraphs"] for qa in p["qas"]]
    vectors = kb.embedder.embed([kb.passage(title, text) for title, text in base])
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    per_document = -(-total // DOCUMENTS)
    written = 0
    for document in range(DOCUMENTS):
        count = min(per_document, total - written)
        picks = [(written + i) % len(base) for i in range(count)]
        original = np.asarray([written + i < len(base) for i in range(count)])  # the first copy stays exact
        texts = [base[p][1] if original[i] else perturb(base[p][1], rng) for i, p in enumerate(picks)]
        jitter = noise.normal(0.0, NOISE, (count, vectors.shape[1])).astype(np.float32)
        jitter[original] = 0.0
        chunk_vectors = vectors[picks] + jitter
        chunk_vectors /= np.linalg.norm(chunk_vectors, axis=1, keepdims=True)
        drafts = [ChunkDraft(i, text, 0, len(text), len(text.split())) for i, text in enumerate(texts)]
        # Documents mix articles, so they get no title: BM25 sees the paragraph text alone.
        draft = DocumentDraft("bench", f"bench-{document}", "", "txt", 0, f"bench-{document}")
        kb.replace_document(draft, drafts, chunk_vectors)
        written += count
    return questions


def exact_index(kb: KnowledgeBase, dimension: int) -> faiss.Index:
    """A float32 `IndexFlatIP` over the embeddings stored in SQL: the exact baseline."""
    with kb.db.session() as session:
        rows = session.execute(select(Chunk.id, Chunk.embedding)).all()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    vectors = np.vstack([np.frombuffer(blob, dtype=np.float32) for _, blob in rows])
    index.add_with_ids(vectors, np.asarray([chunk_id for chunk_id, _ in rows], dtype=np.int64))
    return index


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads for the query embedding (default 1: one short query gains nothing from more, "
        "and on a busy machine extra threads spin-wait; the API runs concurrent queries on separate threads)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    if not SQUAD.exists():
        print(f"{SQUAD} is absent (a fresh clone has no ../shared); nothing to benchmark")
        return 0
    print(f"hardware: {hardware()}")
    print(f"git: {git_revision()}")

    embedder = Embedder()
    with tempfile.TemporaryDirectory(prefix="archivist-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        # flat_max_vectors above the corpus: the collection keeps its exhaustive flat index.
        flat_kb = KnowledgeBase(RetrieverConfig(url, Path(tmp) / "flat", flat_max_vectors=10**9), embedder)
        started = time.perf_counter()
        questions = build_corpus(flat_kb, args.chunks, args.seed)
        print(f"corpus: {args.chunks} chunks written and indexed in {time.perf_counter() - started:.0f} s")
        # Same database, a second knowledge base whose indexes are built from SQL with IVF above 50k.
        ivf_kb = KnowledgeBase(RetrieverConfig(url, Path(tmp) / "ivf", flat_max_vectors=50_000), embedder)
        started = time.perf_counter()
        ivf_kb.load_indexes()
        print(
            f"IVF knowledge base synced from SQL (training included) in {time.perf_counter() - started:.0f} s"
        )

        version = flat_kb.collection_version("bench")
        exact = exact_index(flat_kb, embedder.dimension)
        flat: VectorIndex = flat_kb.synced_index(1, version)
        ivf: VectorIndex = ivf_kb.synced_index(1, version)
        lexical = flat_kb.synced_lexical(1, version)
        queries = random.Random(args.seed).sample(questions, min(args.queries + WARMUP, len(questions)))
        vectors = {query: embedder.embed_query(query) for query in queries}

        rows: list[tuple[str, list[float]]] = [
            (
                f"embed query (MiniLM, CPU, {args.torch_threads} thread)",
                timed(queries, embedder.embed_query, WARMUP),
            ),
            (BASELINE, timed(queries, lambda q: exact.search(vectors[q][None, :], 20), WARMUP)),
            ("dense search, flat fp16 (ours)", timed(queries, lambda q: flat.search(vectors[q], 20), WARMUP)),
            (
                f"dense search, {ivf.kind} nprobe {ivf.nprobe}",
                timed(queries, lambda q: ivf.search(vectors[q], 20), WARMUP),
            ),
            ("lexical search, BM25", timed(queries, lambda q: lexical.search(q, 20), WARMUP)),
        ]
        for mode in ("dense", "hybrid"):
            for name, kb in (("flat fp16", flat_kb), (ivf.kind, ivf_kb)):
                run = lambda q, kb=kb, mode=mode: kb.search(q, "bench", 5, mode=mode)  # noqa: E731
                rows.append((f"KnowledgeBase.search {mode}, {name}", timed(queries, run, WARMUP)))
        truth = {q: set(exact.search(vectors[q][None, :], 10)[1][0].tolist()) for q in queries}
        flat_recall, ivf_recall = (
            np.mean([len({i for i, _ in index.search(vectors[q], 10)} & truth[q]) / 10 for q in queries])
            for index in (flat, ivf)
        )
        gpu_rows = []
        if faiss.get_num_gpus() > 0:
            cpu_flat = VectorIndex(embedder.dimension, use_gpu=False)
            cpu_flat.add(flat.ids(), flat._contents()[1])
            gpu_rows = [
                (
                    "dense search, Flat on CPU (same run)",
                    timed(queries, lambda q: cpu_flat.search(vectors[q], 20), WARMUP),
                ),
                (
                    "dense search, Flat on GPU (faiss-gpu)",
                    timed(queries, lambda q: flat.search(vectors[q], 20), WARMUP),
                ),
            ]
        flat_kb.close()
        ivf_kb.close()

    print(
        f"\n{len(queries) - WARMUP} timed queries (after {WARMUP} warm-up), {args.chunks} chunks, "
        "top-20 per index, top-5 per KnowledgeBase.search, "
        f"FAISS OpenMP threads {faiss.omp_get_max_threads()} (ARCHIVIST_FAISS_THREADS)\n"
    )
    print("| what | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|")
    table = dict(rows + gpu_rows)
    for name, samples in rows + gpu_rows:
        p50, p95, p99 = percentiles(samples)
        print(f"| {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")
    p50 = {name: percentiles(samples)[0] for name, samples in table.items()}
    ivf_name = f"dense search, {ivf.kind} nprobe {ivf.nprobe}"
    print(f"\nrecall@10 against the exact IndexFlatIP: flat fp16 {flat_recall:.3f}, IVF {ivf_recall:.3f}")
    for name in ("dense search, flat fp16 (ours)", ivf_name):
        print(f"{name}: {p50[BASELINE] / p50[name]:.1f}x faster than the exact baseline (p50)")
    for name in ("flat fp16", ivf.kind):
        hybrid, dense = (
            p50[f"KnowledgeBase.search hybrid, {name}"],
            p50[f"KnowledgeBase.search dense, {name}"],
        )
        print(f"hybrid / dense end-to-end p50 ({name}): {hybrid / dense:.2f}x")
    if gpu_rows:
        cpu, gpu = p50[gpu_rows[0][0]], p50[gpu_rows[1][0]]
        print(f"faiss-gpu speed-up over faiss-cpu (flat search p50): {cpu / gpu:.1f}x")
    else:
        print("no GPU visible to FAISS: the faiss-gpu comparison was not run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
