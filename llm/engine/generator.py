"""`EngineGenerator`: the engine behind the `Generator` protocol, driven by one dedicated worker thread.

HTTP threads call `stream()` concurrently. Each call tokenizes its prompt, posts it to the worker's inbox and
reads events from its own queue; the worker alone touches the engine: it admits new requests and cancellations
between steps, runs one continuous-batching step at a time and fans the text deltas out to the queues. Closing
a stream early posts a cancellation, and the request's blocks are freed before the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llm.base import (
    NO_ADAPTER,
    ChatMessage,
    ContextOverflowError,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
)
from llm.engine.engine import LLMEngine, RequestOutput, Sample

log = logging.getLogger(__name__)


class ChatTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> list[int]: ...


@dataclass(eq=False)
class _Stream:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: int  # the engine's slot of the request's LoRA adapter
    events: queue.SimpleQueue[GenerationEvent | BaseException] = field(default_factory=queue.SimpleQueue)
    request_id: int | None = None
    completion_tokens: int = 0
    done: bool = False


_STOP = object()


class EngineGenerator:
    reports_logprobs = True  # honours `SamplingParams.logprobs`

    def __init__(
        self,
        engine: LLMEngine,
        tokenizer: ChatTokenizer,
        name: str,
        on_shutdown: Callable[[], None] | None = None,
        default_adapter: str | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self.adapters = tuple(engine.adapter_slots)
        if default_adapter is not None and default_adapter not in engine.adapter_slots:
            raise UnknownAdapterError(f"default adapter {default_adapter!r} is not loaded")
        self.default_adapter = default_adapter
        self.context_window = engine.max_model_len
        # How many streams the service should admit at once: the engine batches up to this many sequences.
        self.max_concurrency = engine.scheduler.max_num_seqs
        self._on_shutdown = on_shutdown
        self._inbox: queue.SimpleQueue[tuple[str, _Stream] | object] = queue.SimpleQueue()
        self._live: dict[int, _Stream] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self._thread.start()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Iterator[GenerationEvent]:
        """Validate and submit now (ContextOverflowError is raised here); events are read lazily."""
        return self._submit(self.tokenizer.apply_chat_template(messages), params)

    def complete(self, prompt: str, params: SamplingParams) -> Iterator[GenerationEvent]:
        """`stream` for a raw text prompt, continued as it is (no chat template)."""
        return self._submit(self.tokenizer.encode(prompt), params)

    def _submit(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[GenerationEvent]:
        if self._closed:
            raise RuntimeError(f"engine {self.name} is shut down")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.context_window:
            raise ContextOverflowError(
                f"prompt of {len(prompt_ids)} tokens does not fit the context window of "
                f"{self.context_window} tokens of {self.name}"
            )
        handle = _Stream(prompt_ids, params, self.adapter_slot(params.adapter))
        self._inbox.put(("add", handle))
        return self._events(handle)

    def adapter_slot(self, adapter: str | None) -> int:
        """The engine slot of a request's adapter: None is the default one, `NO_ADAPTER` the base model."""
        name = self.default_adapter if adapter is None else adapter
        if name is None or name == NO_ADAPTER:
            return 0
        slot = self.engine.adapter_slots.get(name)
        if slot is None:
            served = ", ".join(self.adapters) or "none"
            raise UnknownAdapterError(f"unknown adapter {name!r}; this model serves: {served}")
        return slot

    def _events(self, handle: _Stream) -> Iterator[GenerationEvent]:
        try:
            while True:
                event = handle.events.get()
                if isinstance(event, BaseException):
                    handle.done = True
                    raise event
                if event.finish_reason is not None:
                    handle.done = True
                yield event
                if handle.done:
                    return
        finally:
            if not handle.done:  # the consumer went away: cancel and free the blocks
                handle.done = True
                self._inbox.put(("abort", handle))

    def stats(self) -> dict[str, float]:
        """Scheduler and cache figures for the service's metrics; read without locking (plain counters)."""
        return dict(self.engine.stats())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the worker; streams still running end with finish_reason "cancelled"."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_STOP)
        self._thread.join(timeout)
        if self._on_shutdown is not None:
            self._on_shutdown()

    # --- worker thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._drain_inbox(block=not self.engine.has_unfinished):
                break
            if not self.engine.has_unfinished:
                continue
            try:
                outputs = self.engine.step()
            except Exception:  # a failed step must not kill the worker: fail the live requests instead
                log.exception("engine step failed")
                self._fail_all()
                continue
            for output in outputs:
                self._deliver(output)
        for handle in list(self._live.values()):
            self._cancel(handle)
            handle.events.put(self._final_event(handle, "cancelled"))

    def _drain_inbox(self, block: bool) -> bool:
        """Apply pending submissions and cancellations; False once shutdown was asked for."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if item is _STOP:
                return False
            assert isinstance(item, tuple)
            kind, handle = item
            if kind == "add":
                try:
                    params, adapter = handle.params, handle.adapter
                    request = self.engine.add_request(
                        handle.prompt_ids, params, logprobs=params.logprobs, adapter=adapter
                    )
                except Exception as exc:
                    handle.events.put(exc)
                    continue
                handle.request_id = request.request_id
                self._live[request.request_id] = handle
            else:
                self._cancel(handle)

    def _cancel(self, handle: _Stream) -> None:
        if handle.request_id is not None and self._live.pop(handle.request_id, None) is not None:
            self.engine.abort(handle.request_id)

    def _deliver(self, output: RequestOutput) -> None:
        handle = self._live.get(output.request.request_id)
        if handle is None:
            return
        handle.completion_tokens += len(output.token_ids)
        logprobs = self._logprobs(output)
        if output.finished:
            del self._live[output.request.request_id]
            reason = output.request.finish_reason or "stop"
            handle.events.put(self._final_event(handle, reason, output.text, logprobs))
        elif output.text or logprobs:
            handle.events.put(GenerationEvent(text=output.text, logprobs=logprobs))

    def _logprobs(self, output: RequestOutput) -> tuple[TokenLogprob, ...]:
        """The step's token with its log-probabilities, where the request asked for them; a stop token ends
        the reply and is not part of it."""
        request = output.request
        if request.logprobs is None or not request.token_logprobs:
            return ()
        sample: Sample = request.token_logprobs[-1]
        if sample.token_id in request.stop_token_ids or sample.logprob is None:
            return ()
        top = tuple((self.engine.decode([token]), logprob) for token, logprob in sample.top_logprobs or ())
        return (TokenLogprob(self.engine.decode([sample.token_id]), sample.logprob, top),)

    @staticmethod
    def _final_event(
        handle: _Stream, reason: FinishReason, text: str = "", logprobs: tuple[TokenLogprob, ...] = ()
    ) -> GenerationEvent:
        return GenerationEvent(
            text=text,
            finish_reason=reason,
            prompt_tokens=len(handle.prompt_ids),
            completion_tokens=handle.completion_tokens,
            logprobs=logprobs,
        )

    def _fail_all(self) -> None:
        for handle in list(self._live.values()):
            self._cancel(handle)
            handle.events.put(self._final_event(handle, "error"))
