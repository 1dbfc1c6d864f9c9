"""A load-time check that a model computes usable numbers: one short prompt through the model runner, whose
log-probabilities must all be finite.

A GGUF with corrupt tensor bytes (0xFF everywhere reads as NaN scales) loads without complaint, and a NaN
model then samples token 0 every step: every answer comes back empty, which looks like missing documents
rather than a broken model. One prefill of a few tokens at load (a fraction of a second) says so at once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from llm.base import ChatMessage
from llm.engine.engine import ModelRunner
from llm.engine.generator import ChatTokenizer

PROBE = (ChatMessage("user", "What is the capital of France?"),)


class CorruptModelError(RuntimeError):
    """The model's logits are not finite (NaN or infinite): corrupt weights or misread quantized blocks."""


@runtime_checkable
class Scorer(Protocol):
    def score(self, token_ids: list[int]) -> torch.Tensor: ...


def check_logits(runner: ModelRunner, tokenizer: ChatTokenizer, name: str) -> None:
    """Raise `CorruptModelError` unless a short chat prompt gets finite log-probabilities. A NaN or a
    +infinity anywhere in a row of logits makes the whole row's log-softmax non-finite, so checking the
    scored tokens covers every logit."""
    if not isinstance(runner, Scorer):
        raise TypeError(f"{type(runner).__name__} cannot score a prompt, so {name} cannot be checked")
    logprobs = runner.score(tokenizer.apply_chat_template(PROBE))
    bad = int((~torch.isfinite(logprobs)).sum())
    if bad:
        raise CorruptModelError(
            f"{name} computes non-finite logits (NaN or infinity) for {bad} of {logprobs.numel()} positions "
            "of a short test prompt: its weights are corrupt or were read wrongly; check the model file"
        )
