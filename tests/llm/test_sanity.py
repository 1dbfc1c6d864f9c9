"""The load-time logits check: a sound model passes, a GGUF with one tensor of NaN bytes is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm.config import EngineConfig
from llm.engine import create_engine
from llm.engine.sanity import CorruptModelError, check_logits
from tests.llm.corrupt_gguf import corrupt_copy


def test_a_sound_model_passes(packed_engine) -> None:  # type: ignore[no-untyped-def]
    engine, tokenizer = packed_engine
    check_logits(engine.runner, tokenizer, "smollm2")


def test_nan_weights_are_refused(gguf_path: Path, tmp_path: Path) -> None:
    corrupt = corrupt_copy(gguf_path, tmp_path / "corrupt.gguf")
    # The file still loads: nothing about it looks wrong until the model computes.
    engine, tokenizer, name = create_engine(
        EngineConfig(model_path=corrupt, num_kv_blocks=16, max_model_len=256, enforce_eager=True)
    )
    with pytest.raises(CorruptModelError, match="non-finite logits"):
        check_logits(engine.runner, tokenizer, name)
