"""The engine loop: requests in, one scheduled model step at a time, text deltas out (pure Python).

`LLMEngine` is single-threaded: `EngineGenerator` drives it from one worker thread. It knows the model only as
a `ModelRunner` (a batch in, one sampled token per finishing sequence out) and the tokenizer only as
`decode`, so the scheduler, block manager and stopping rules are tested with a mock model and a byte
tokenizer, no torch involved.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm.base import ContextOverflowError, FinishReason, SamplingParams, opening_bias_by_token
from llm.copying import CopyState, CopyTable
from llm.engine.block_manager import BlockManager
from llm.engine.detokenizer import IncrementalDetokenizer
from llm.engine.scheduler import ScheduledBatch, Scheduler
from llm.engine.sequence import Sequence


@dataclass
class Sample:
    """What the sampler picked for one sequence, with log-probabilities when the request asked for them."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class Request:
    request_id: int
    seq: Sequence
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    stop_token_ids: frozenset[int]
    logprobs: int | None = None  # how many top alternatives to report per token (0: only the chosen one)
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: FinishReason | None = None
    token_logprobs: list[Sample] = field(default_factory=list)
    opening_bias: dict[int, float] = field(default_factory=dict)  # params.opening_bias by token id
    sampler_state: Any = None  # owned by the model runner's sampler (e.g. a seeded torch.Generator)
    copy_state: CopyState | None = None  # which tokens may come next, for `SamplingParams.copy_spans`

    @property
    def prompt_tokens(self) -> int:
        return self.seq.num_prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.seq.num_completion_tokens

    @property
    def text(self) -> str:
        return self.detokenizer.text

    @property
    def timings(self) -> dict[str, float]:
        """TTFT and mean time per output token after the first, in milliseconds."""
        out: dict[str, float] = {}
        if self.first_token_time is not None:
            out["ttft_ms"] = (self.first_token_time - self.arrival_time) * 1000
            if self.finish_time is not None and self.completion_tokens > 1:
                out["tpot_ms"] = (
                    (self.finish_time - self.first_token_time) * 1000 / (self.completion_tokens - 1)
                )
        return out


@dataclass
class RequestOutput:
    """One request's progress in one step."""

    request: Request
    text: str
    token_ids: list[int]
    finished: bool


class ModelRunner(Protocol):
    def execute(self, batch: ScheduledBatch, requests: list[Request]) -> list[Sample | None]:
        """Run the batch; for every sequence whose chunk reaches its last token, the sampled next token."""
        ...


class LLMEngine:
    def __init__(
        self,
        runner: ModelRunner,
        decode: Callable[[list[int]], str],
        stop_token_ids: Iterable[int],
        scheduler: Scheduler,
        adapters: Iterable[str] = (),
        encode: Callable[[str], list[int]] | None = None,
        copy_table: Callable[[], CopyTable] | None = None,
    ) -> None:
        self.runner = runner
        self.encode = encode  # text -> token ids, for `SamplingParams.opening_bias`
        self.copy_table = copy_table  # the vocabulary as bytes, for `SamplingParams.copy_spans`
        # LoRA adapters loaded with the model, by name -> slot (slot 0 is the base model).
        self.adapter_slots = {name: slot for slot, name in enumerate(adapters, start=1)}
        self.decode = decode
        self.stop_token_ids = frozenset(stop_token_ids)
        self.scheduler = scheduler
        self.requests: dict[int, Request] = {}  # unfinished, by request id
        self._by_seq: dict[int, Request] = {}  # the same, by sequence id
        self._ids = itertools.count()
        self.num_steps = 0
        self.num_prompt_tokens_computed = 0
        self.num_generated_tokens = 0

    @property
    def block_manager(self) -> BlockManager:
        return self.scheduler.block_manager

    @property
    def max_model_len(self) -> int:
        return self.scheduler.max_model_len

    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        adapter: int = 0,
    ) -> Request:
        """Queue a tokenized prompt; raises ContextOverflowError before scheduling if it cannot fit.

        `ignore_eos` generates exactly `max_new_tokens` (benchmarks); stop strings still apply. `adapter` is
        the slot of a LoRA adapter loaded with the model (0: none).
        """
        if len(prompt_ids) >= self.max_model_len:
            raise ContextOverflowError(
                f"prompt of {len(prompt_ids)} tokens does not fit the context window of {self.max_model_len} "
                "tokens (at least one token must be generated)"
            )
        if logprobs is not None and logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        if not 0 <= adapter <= len(self.adapter_slots):
            raise ValueError(f"adapter slot {adapter} does not exist ({len(self.adapter_slots)} loaded)")
        seq = Sequence(list(prompt_ids), max_new_tokens=params.max_new_tokens, adapter=adapter)
        request = Request(
            request_id=next(self._ids),
            seq=seq,
            params=params,
            detokenizer=IncrementalDetokenizer(self.decode, prompt_ids, params.stop),
            stop_token_ids=frozenset() if ignore_eos else self.stop_token_ids,
            logprobs=logprobs,
            opening_bias=self._opening_bias(params),
            copy_state=self._copy_state(params, ignore_eos),
        )
        self.scheduler.add(seq)
        self.requests[request.request_id] = request
        self._by_seq[seq.seq_id] = request
        return request

    def _opening_bias(self, params: SamplingParams) -> dict[int, float]:
        if not params.opening_bias:
            return {}
        if self.encode is None:
            raise ValueError("opening_bias needs an engine built with a tokenizer's encode")
        return opening_bias_by_token(params, self.encode)

    def _copy_state(self, params: SamplingParams, ignore_eos: bool) -> CopyState | None:
        if params.copy_spans is None:
            return None
        if self.copy_table is None:
            raise ValueError("copy_spans needs an engine built with the tokenizer's copy table")
        return CopyState(params.copy_spans, self.copy_table(), () if ignore_eos else self.stop_token_ids)

    def abort(self, request_id: int) -> Request | None:
        """Cancel a request and free its blocks at once; None if it already finished."""
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, "cancelled")
        return request

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        requests = [self._by_seq[seq.seq_id] for seq in batch.seqs]
        samples = self.runner.execute(batch, requests)
        self.scheduler.advance(batch)
        self.num_steps += 1
        now = time.perf_counter()
        outputs: list[RequestOutput] = []
        for request, n, sample in zip(requests, batch.num_tokens, samples, strict=True):
            if sample is None:  # a prompt chunk that does not reach the end yet
                self.num_prompt_tokens_computed += n
                continue
            # Every fed token but the one sampled in the previous step is (re)computed prompt/history.
            self.num_prompt_tokens_computed += n - 1 if request.completion_tokens else n
            outputs.append(self._accept(request, sample, now))
        return outputs

    def _accept(self, request: Request, sample: Sample, now: float) -> RequestOutput:
        seq = request.seq
        token = sample.token_id
        self.num_generated_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = now
        if request.logprobs is not None:
            request.token_logprobs.append(sample)
        seq.append_token(token)
        if request.copy_state is not None:
            request.copy_state.advance(token)
        reason: FinishReason | None = None
        if token in request.stop_token_ids:
            text = ""
            reason = "stop"
        else:
            text, hit_stop = request.detokenizer.add(token)
            if hit_stop:
                reason = "stop"
            elif seq.num_completion_tokens >= request.params.max_new_tokens or len(seq) >= self.max_model_len:
                reason = "length"
        if reason is not None:
            text += request.detokenizer.flush()
            self._finish(request, reason)
        return RequestOutput(request, text, [token], reason is not None)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        del self.requests[request.request_id], self._by_seq[request.seq.seq_id]
        request.finish_reason = reason
        request.finish_time = time.perf_counter()
        self.scheduler.finish(request.seq)

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        adapters: list[int] | None = None,
    ) -> list[Request]:
        """Run prompts to completion in the calling thread (tests, benchmarks, the CLI); `adapters` gives
        each prompt's adapter slot (default: none)."""
        slots = adapters or [0] * len(prompts)
        requests = [
            self.add_request(p, params, logprobs=logprobs, ignore_eos=ignore_eos, adapter=slot)
            for p, slot in zip(prompts, slots, strict=True)
        ]
        while self.has_unfinished:
            self.step()
        return requests

    def stats(self) -> dict[str, float]:
        bm = self.block_manager
        return {
            "steps": self.num_steps,
            "prompt_tokens_computed": self.num_prompt_tokens_computed,
            "generated_tokens": self.num_generated_tokens,
            "prefix_cache_hit_rate": bm.prefix_hit_rate,
            "preemptions": self.scheduler.num_preemptions,
            "free_blocks": bm.num_free_blocks,
            "total_blocks": bm.num_blocks,
            "kv_cache_usage": 1.0 - bm.num_free_blocks / bm.num_blocks,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
        }
