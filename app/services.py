"""Process-wide services: the knowledge base and the generator, each loaded once, in the background for
the API (so `/healthz` answers at once and `/readyz` reports when loading is done, or why it failed); and
what the API keeps beside them: API keys, conversations, the answer cache, limits and metrics. A generator
that cannot answer is refused at load rather than replying "no answer" to everything: non-finite logits
on a test prompt (corrupt weights), or a context window too small for one passage and a question."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from functools import partial
from itertools import cycle, islice

from app.api.errors import NotReadyError
from app.ops.auth import KeyStore
from app.ops.jobs import JobManager, JobStore
from app.ops.limits import GenerationGate
from app.ops.metrics import Metrics
from app.ops.shared_state import limits_and_cache
from app.rag.answering import Answering
from app.rag.conversations import ConversationStore
from app.rag.pipeline import fit_sources
from app.schema import SERVICE_CHAIN
from app.settings import Settings
from ingest.pipeline import Ingestor
from llm.base import Generator
from llm.locate import default_llm_path
from retriever.db import Database
from retriever.embedder import load_embedder
from retriever.records import SearchHit
from retriever.schema import check_schema
from retriever.store import KnowledgeBase

log = logging.getLogger(__name__)

# What the context window must hold besides the system prompt and one passage: a question of ordinary length.
QUESTION_TOKENS = 30
PROSE = "Each document is split into passages that are embedded, indexed and searched for a question."


class ContextWindowError(ValueError):
    """The model's context window cannot hold one ordinary RAG prompt and its answer."""


def load_knowledge_base(settings: Settings, open_indexes: bool = True) -> KnowledgeBase:
    """The knowledge base with its embedder; `open_indexes` reads and syncs every index file now, so a
    corrupt or mismatched one fails at startup rather than at the first query."""
    config = settings.retriever_config()
    embedder = load_embedder(
        config.embedder_backend,
        config.embedder_path,
        config.embedder_device,
        config.embed_batch_size,
        config.embedder_dtype,
    )
    kb = KnowledgeBase(config, embedder)
    if open_indexes:
        kb.load_indexes()
    return kb


def load_generator(settings: Settings, compile_in_background: bool = False) -> Generator:
    """The configured backend: our engine by default (refused with `CorruptModelError` when a test prompt
    gets non-finite logits), the transformers reference when asked for. `compile_in_background`: the engine
    answers with eager decode steps until its compiled CPU step is ready."""
    if settings.llm_backend == "openai":
        from llm.remote import RemoteGenerator

        return RemoteGenerator(
            settings.llm_urls,
            model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            context_window=settings.llm_max_model_len,
            max_concurrency=settings.llm_max_num_seqs,
            tokenizer=settings.llm_tokenizer,
            timeout_s=settings.generation_timeout_s,
        )
    if settings.llm_backend == "hf":
        from llm.hf import HFGenerator

        device = settings.llm_device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return HFGenerator(settings.llm_path or default_llm_path(), device=device)
    from llm.engine import load_engine
    from llm.engine.model_runner import TorchModelRunner
    from llm.engine.sanity import check_logits

    generator = load_engine(settings.engine_config(compile_in_background))
    try:
        check_logits(generator.engine.runner, generator.tokenizer, generator.name)
    except BaseException:
        generator.shutdown()
        raise
    if isinstance(generator.engine.runner, TorchModelRunner):
        generator.engine.runner.start_compiling()  # after the check, which it would slow down
    return generator


def _prose(tokens: int, generator: Generator) -> str:
    """Ordinary English of about `tokens` tokens of the generator's tokenizer."""
    words = PROSE.split()
    per_word = generator.count_tokens(PROSE) / len(words)
    return " ".join(islice(cycle(words), math.ceil(tokens / per_word)))


def check_context_window(settings: Settings, generator: Generator) -> None:
    """Raise `ContextWindowError` when the system prompt, one passage of `chunk_tokens`, a question of
    ordinary length and `max_new_tokens` of answer do not fit the context window: every question would
    then be asked with no passage at all and get the no-answer reply."""
    text = _prose(settings.chunk_tokens, generator)
    passage = SearchHit(
        chunk_id=0,
        document_id=0,
        title="A document",
        source_path="",
        ordinal=0,
        char_start=0,
        char_end=len(text),
        text=text,
        score=1.0,
    )
    if fit_sources(_prose(QUESTION_TOKENS, generator), [passage], generator, settings.max_new_tokens):
        return
    raise ContextWindowError(
        f"the context window of {generator.name} ({generator.context_window} tokens) cannot hold the system "
        f"prompt, one passage of {settings.chunk_tokens} tokens (ARCHIVIST_CHUNK_TOKENS), a question of "
        f"{QUESTION_TOKENS} tokens and an answer of {settings.max_new_tokens} tokens "
        f"(ARCHIVIST_MAX_NEW_TOKENS): raise ARCHIVIST_LLM_MAX_MODEL_LEN (now {settings.llm_max_model_len}) "
        "and give the KV cache room for it (ARCHIVIST_LLM_KV_CACHE_MEMORY), or lower ARCHIVIST_CHUNK_TOKENS "
        "or ARCHIVIST_MAX_NEW_TOKENS"
    )


def shut_down(generator: object) -> None:
    shutdown = getattr(generator, "shutdown", None)
    if callable(shutdown):
        shutdown()


def load_rag_generator(settings: Settings, compile_in_background: bool = False) -> Generator:
    """`load_generator`, refused with `ContextWindowError` when it cannot answer from even one passage."""
    generator = load_generator(settings, compile_in_background)
    try:
        check_context_window(settings, generator)
    except BaseException:
        shut_down(generator)
        raise
    return generator


# While the models load, a request waits this long for them, then gets a 503 with Retry-After instead of
# holding one of the server's worker threads for minutes.
REQUEST_WAIT_SECONDS = 1.0
LOADING_RETRY_AFTER = 5


def job_dispatcher(settings: Settings) -> Callable[[str], None] | None:
    """What hands ingest jobs to `archivist worker` processes: the broker's dispatcher, checked reachable
    here, when the settings name one; None runs them in this process."""
    if settings.broker_url is None:
        return None
    from app.ops.worker import Dispatcher  # Celery is imported only where a broker is used

    return Dispatcher(settings.broker_url.get_secret_value(), settings.broker_queue)


def check_vector_store(settings: Settings) -> None:
    """With ARCHIVIST_VECTOR_STORE=milvus, Milvus answers now (`VectorStoreUnavailableError` otherwise): a
    replica without it exits at start, like one without its Redis, instead of failing to load in the
    background."""
    config = settings.retriever_config()
    if config.vector_store == "milvus":
        from retriever.milvus_index import MilvusStore  # pymilvus is imported only where Milvus is used

        MilvusStore(config).close()


class _Loading:
    """A value produced by a background thread, or the error that stopped it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: object | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def set(self, value: object) -> None:
        self.value = value
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    def wait(self, timeout: float) -> object:
        if not self.done.wait(timeout):
            raise NotReadyError(f"the {self.name} is still loading; try again shortly", LOADING_RETRY_AFTER)
        if self.error is not None:
            # Not the error itself, which names server paths (the model file): /readyz and the log give it.
            raise NotReadyError(f"the {self.name} failed to load; /readyz and the server's log say why")
        return self.value


class Services:
    def __init__(
        self, settings: Settings, kb: KnowledgeBase | None = None, generator: Generator | None = None
    ) -> None:
        self.settings = settings
        self._kb = _Loading("knowledge base")
        self._generator = _Loading("language model")
        if kb is not None:
            self._kb.set(kb)
        if generator is not None:
            self._generator.set(generator)
        self._owns_generator = generator is None  # a generator handed in is shut down by its owner
        self._ingestor: Ingestor | None = None
        self._jobs: JobManager | None = None
        self._jobs_lock = threading.Lock()
        self._gate: GenerationGate | None = None
        self._gate_lock = threading.Lock()
        # Keys and conversations need no model, so they get their own connection pool and work at once.
        self.db = Database(settings.resolved_database_url)
        check_schema(self.db.engine, SERVICE_CHAIN)
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        self.keys = KeyStore(self.db, admin_key)
        self.conversations = ConversationStore(self.db)
        # In Redis for all replicas when ARCHIVIST_REDIS_URL is set, else in this process.
        self.rate_limiter, self.auth_failures, self.cache = limits_and_cache(settings)
        self._dispatch = job_dispatcher(settings)
        if kb is None:
            check_vector_store(settings)
        self.answering = Answering(self)
        self.metrics = Metrics()
        self.metrics.add_source("generation", self._generation_stats)
        self.metrics.add_source("answer_cache", self._cache_stats)
        self.metrics.add_source("engine", self._engine_stats)
        self.metrics.add_source("ingest_jobs", self._jobs_stats)

    def start(self) -> None:
        """Load whatever was not given, in a background thread: the knowledge base first."""
        threading.Thread(target=self._load, name="archivist-loader", daemon=True).start()

    def _load(self) -> None:
        if self.settings.llm_backend == "engine" and not self._generator.done.is_set():
            from llm.engine import start_building_cpu_kernels

            # On a cold machine their compile (seconds) then overlaps the knowledge base's load.
            try:
                start_building_cpu_kernels(self.settings.engine_config())
            except Exception:  # noqa: BLE001 - a bad setting fails the model's own load below, with its reason
                log.debug("kernels not built ahead of the model", exc_info=True)
        # The server answers as soon as the model is loaded: its CPU decode step compiles in the background.
        serving_generator = partial(load_rag_generator, compile_in_background=True)
        for loading, loader in ((self._kb, load_knowledge_base), (self._generator, serving_generator)):
            if loading.done.is_set():
                continue
            try:
                loading.set(loader(self.settings))
                log.info("%s loaded", loading.name)
            except Exception as error:
                log.exception("%s failed to load", loading.name)
                loading.fail(error)

    def kb(self, timeout: float = REQUEST_WAIT_SECONDS) -> KnowledgeBase:
        value = self._kb.wait(timeout)
        assert isinstance(value, KnowledgeBase)
        return value

    def generator(self, timeout: float = REQUEST_WAIT_SECONDS) -> Generator:
        value = self._generator.wait(timeout)
        assert isinstance(value, Generator)
        return value

    def gate(self) -> GenerationGate:
        """Admission to the generator: as many slots as the backend runs at once (`max_concurrency`, which
        a batching engine provides; one otherwise), unless the settings say otherwise."""
        with self._gate_lock:
            if self._gate is None:
                slots = self.settings.generation_slots or int(getattr(self.generator(), "max_concurrency", 1))
                self._gate = GenerationGate(slots, self.settings.max_queued_generations)
            return self._gate

    def _generation_stats(self) -> dict[str, float] | None:
        gate = self._gate
        if gate is None:
            return None
        return {"running": gate.running, "waiting": gate.waiting, "slots": gate.slots}

    def _cache_stats(self) -> dict[str, float]:
        return {"hit_rate": self.cache.hit_rate, "entries": len(self.cache)}

    def _engine_stats(self) -> dict[str, float] | None:
        """The backend's own counters (queue depth, running/waiting sequences, KV-cache use, prefix-cache
        hit rate) when it has a `stats()` method; the transformers backend has none."""
        generator = self._generator.value if self._generator.done.is_set() else None
        stats = getattr(generator, "stats", None)
        return stats() if callable(stats) else None

    def _jobs_stats(self) -> dict[str, float] | None:
        if self._jobs is None:
            return None
        states = self._jobs.store.counts()
        return {state: states.get(state, 0) for state in ("queued", "running", "done", "failed")}

    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            self._ingestor = Ingestor(
                self.kb(), self.settings.chunker_config(), self.settings.ingest_config()
            )
        return self._ingestor

    def jobs(self) -> JobManager:
        """The background ingest jobs, started on first use: on the broker's workers when there is one, else
        in a thread of this process (which waits for the knowledge base itself)."""
        with self._jobs_lock:
            if self._jobs is None:
                self._jobs = JobManager(
                    JobStore(self.db),
                    self.ingestor,
                    self.settings.upload_dir,
                    on_result=lambda result: self.metrics.ingested.labels(result.status).inc(),
                    dispatch=self._dispatch,
                )
            return self._jobs

    def _parts(self) -> dict[str, _Loading]:
        return {"knowledge_base": self._kb, "llm": self._generator}

    def readiness(self) -> dict[str, str]:
        def state(loading: _Loading) -> str:
            if not loading.done.is_set():
                return "loading"
            return "failed" if loading.error is not None else "ready"

        states = {part: state(loading) for part, loading in self._parts().items()}
        if states["llm"] == "ready" and self._llm_unavailable():
            states["llm"] = "unavailable"
        return states

    def failures(self) -> dict[str, str]:
        """Why each part that failed to load failed, or cannot be used now (a backend server down)."""
        parts = self._parts().items()
        found = {part: str(loading.error) for part, loading in parts if loading.error is not None}
        if reason := self._llm_unavailable():
            found["llm"] = reason
        return found

    def _llm_unavailable(self) -> str | None:
        """Why a loaded backend cannot generate now (one with servers elsewhere tells), else None."""
        generator = self._generator.value if self._generator.done.is_set() else None
        unavailable = getattr(generator, "unavailable", None)
        return unavailable() if callable(unavailable) else None

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
        if self._kb.done.is_set() and isinstance(self._kb.value, KnowledgeBase):
            self._kb.value.close()
        if self._owns_generator:
            shut_down(self._generator.value)
        self.db.dispose()
