"""Process-wide services: the knowledge base and the generator, each loaded once, in the background for
the API (so `/healthz` answers at once and `/readyz` reports when loading is done)."""

from __future__ import annotations

import logging
import threading

from app.settings import Settings
from ingest.pipeline import Ingestor
from llm.base import Generator
from llm.locate import default_llm_path
from retriever.embedder import Embedder
from retriever.store import KnowledgeBase

log = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """A model or index is still loading, or failed to load."""


def load_knowledge_base(settings: Settings, open_indexes: bool = True) -> KnowledgeBase:
    """The knowledge base with its embedder; `open_indexes` reads and syncs every index file now, so a
    corrupt or mismatched one fails at startup rather than at the first query."""
    config = settings.retriever_config()
    embedder = Embedder(config.embedder_path, config.embedder_device, config.embed_batch_size)
    kb = KnowledgeBase(config, embedder)
    if open_indexes:
        kb.load_indexes()
    return kb


def load_generator(settings: Settings) -> Generator:
    from llm.hf import HFGenerator

    return HFGenerator(settings.llm_path or default_llm_path(), device=settings.llm_device)


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
            raise NotReadyError(f"the {self.name} is still loading; try again shortly")
        if self.error is not None:
            raise NotReadyError(f"the {self.name} failed to load: {self.error}")
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
        self._ingestor: Ingestor | None = None

    def start(self) -> None:
        """Load whatever was not given, in a background thread: the knowledge base first."""
        threading.Thread(target=self._load, name="archivist-loader", daemon=True).start()

    def _load(self) -> None:
        for loading, loader in ((self._kb, load_knowledge_base), (self._generator, load_generator)):
            if loading.done.is_set():
                continue
            try:
                loading.set(loader(self.settings))
                log.info("%s loaded", loading.name)
            except Exception as error:
                log.exception("%s failed to load", loading.name)
                loading.fail(error)

    def kb(self, timeout: float = 300.0) -> KnowledgeBase:
        value = self._kb.wait(timeout)
        assert isinstance(value, KnowledgeBase)
        return value

    def generator(self, timeout: float = 300.0) -> Generator:
        value = self._generator.wait(timeout)
        assert isinstance(value, Generator)
        return value

    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            self._ingestor = Ingestor(self.kb(), self.settings.chunker_config())
        return self._ingestor

    def readiness(self) -> dict[str, str]:
        def state(loading: _Loading) -> str:
            if not loading.done.is_set():
                return "loading"
            return "failed" if loading.error is not None else "ready"

        return {"knowledge_base": state(self._kb), "llm": state(self._generator)}

    def close(self) -> None:
        if self._kb.done.is_set() and isinstance(self._kb.value, KnowledgeBase):
            self._kb.value.close()
