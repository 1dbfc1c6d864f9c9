"""The contract between the service and any text generator: messages in, streamed text events out.

Every backend (the transformers reference backend, our own engine, an external OpenAI-compatible server)
implements `Generator`. The service only ever talks to this protocol.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from llm.copying import CopySpans

Role = Literal["system", "user", "assistant"]
NO_ADAPTER = "none"  # the adapter name that asks for the base model, whatever the generator's default
MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for, as OpenAI allows
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens, and with which LoRA adapter. Greedy (temperature 0) by default so answers are
    reproducible. `adapter`: an adapter the generator serves, by name; None is the generator's default
    adapter, `NO_ADAPTER` the base model."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str | None = None
    # (text, bias): the bias is added to the logit of the text's first token at the reply's first position
    # only; a negative one makes a reply that opens with the text win only by that margin.
    opening_bias: tuple[tuple[str, float], ...] = ()
    # The reply copies its words from these texts (`llm.copying`); None: any text.
    copy_spans: CopySpans | None = None
    # Report each generated token's log-probability with this many most likely alternatives (0: the chosen
    # token only; None: no log-probabilities), in `GenerationEvent.logprobs`.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be >= 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append("temperature must be a finite number >= 0")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.top_k < 0:
            problems.append("top_k must be >= 0 (0 disables it)")
        if not 0 <= self.min_p < 1:
            problems.append("min_p must be in [0, 1)")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            problems.append("repetition_penalty must be > 0")
        if not math.isfinite(self.presence_penalty):
            problems.append("presence_penalty must be finite")
        if any(not text or not math.isfinite(bias) for text, bias in self.opening_bias):
            problems.append("opening_bias needs non-empty texts and finite biases")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def opening_bias_by_token(params: SamplingParams, encode: Callable[[str], list[int]]) -> dict[int, float]:
    """`params.opening_bias` keyed by the first token of each text (biases of a shared token add up)."""
    bias: dict[int, float] = {}
    for text, value in params.opening_bias:
        first = encode(text)[0]
        bias[first] = bias.get(first, 0.0) + value
    return bias


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's text and log-probability under the model's own distribution (before temperature,
    penalties and constraints), with the most likely alternatives at its position, best first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationEvent:
    """One streamed piece of an answer. The last event of a stream has `finish_reason` set. `logprobs`: the
    tokens generated since the previous event, where `SamplingParams.logprobs` asked for them; such an event
    may carry a token and no text yet (half a character, or the start of a possible stop string)."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float] = field(default_factory=dict)


class ContextOverflowError(ValueError):
    """The prompt does not fit in the model's context window."""


class UnknownAdapterError(ValueError):
    """A request named a LoRA adapter the generator does not serve."""


def served_adapters(generator: object) -> tuple[str, ...]:
    """The LoRA adapters a generator serves (backends without adapter support serve none)."""
    return tuple(getattr(generator, "adapters", ()))


@runtime_checkable
class Generator(Protocol):
    """A chat model that streams its answer.

    `stream` yields `GenerationEvent`s whose `text` fields concatenate to the full answer; the final event
    carries the finish reason and token counts. Closing the iterator early cancels the generation.
    """

    @property
    def name(self) -> str: ...

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> Iterator[GenerationEvent]: ...


def collect(events: Iterator[GenerationEvent]) -> GenerationResult:
    """Drain a stream into one result (for callers that do not stream)."""
    start = time.perf_counter()
    first_token_at: float | None = None
    pieces: list[str] = []
    last = GenerationEvent(text="", finish_reason="stop")
    for event in events:
        if event.text and first_token_at is None:
            first_token_at = time.perf_counter()
        pieces.append(event.text)
        last = event
    end = time.perf_counter()
    timings = {"generate_ms": (end - start) * 1000}
    if first_token_at is not None:
        timings["ttft_ms"] = (first_token_at - start) * 1000
    return GenerationResult(
        text="".join(pieces),
        finish_reason=last.finish_reason or "stop",
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        timings=timings,
    )
