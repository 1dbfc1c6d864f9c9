"""One generation run in a worker thread: wait for a slot at the gate, stream the generator's events
out, stop on cancel or deadline, then hand the text to a `finish` callback (grounding, caching, storing)
and publish its result.

HTTP handlers never iterate a generator themselves: a blocking `next()` cannot be interrupted, and a
generator may only be closed from the thread iterating it. The worker checks for cancellation after
every event and closes the stream itself, which is what cancels the generation in the backend.
Consumers read the events synchronously (`events`) or from the event loop (`aevents`).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.ops.limits import Ticket
from llm.base import ChatMessage, FinishReason, Generator, SamplingParams

T = TypeVar("T")


class GenerationTimeoutError(TimeoutError):
    """No slot freed up before the request's deadline (503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class GenerationFailedError(RuntimeError):
    """The backend failed while generating (finish reason "error"; the engine logs the cause): 503, since
    the model, not the documents, is at fault. Such an answer is neither cached nor stored."""

    def __init__(self, model: str) -> None:
        super().__init__(f"the language model {model} failed while generating the answer; see the server log")


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass
class Outcome:
    """How a run ended. A run stopped at its deadline is "cancelled" with `timed_out` set."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def reason(self) -> str:
        return "timeout" if self.timed_out else self.finish_reason


@dataclass(frozen=True)
class Done(Generic[T]):
    result: T


_END = object()


class GenerationRun(Generic[T]):
    def __init__(
        self,
        generator: Generator,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        ticket: Ticket,
        timeout_s: float,
        finish: Callable[[Outcome], T],
    ) -> None:
        self._generator = generator
        self._messages = messages
        self._params = params
        self._ticket = ticket
        self._deadline = time.monotonic() + timeout_s
        self._finish = finish
        self._cancel = threading.Event()
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake: Callable[[], None] | None = None
        self._wake_lock = threading.Lock()
        context = contextvars.copy_context()  # keeps the request id on the worker's log lines
        self._thread = threading.Thread(target=context.run, args=(self._work,), name="generate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    # -- worker ------------------------------------------------------------------------------------------

    def _emit(self, item: object) -> None:
        self._items.put(item)
        with self._wake_lock:
            wake = self._wake
        if wake is not None:
            wake()

    def _work(self) -> None:
        try:
            outcome = self._generate()
            self._emit(Done(self._finish(outcome)))
        except BaseException as error:  # handed to the consumer, which raises or reports it
            self._emit(error)
        finally:
            self._emit(_END)

    def _generate(self) -> Outcome:
        queued = time.perf_counter()
        try:
            if not self._ticket.wait(self._cancel, self._deadline):
                if self._cancel.is_set():
                    return Outcome("", "cancelled", 0, 0, {"queue_ms": (time.perf_counter() - queued) * 1000})
                raise GenerationTimeoutError("timed out waiting for the model; try again later")
            return self._stream(queued)
        finally:
            self._ticket.release()

    def _stream(self, queued: float) -> Outcome:
        started = time.perf_counter()
        first_token: float | None = None
        pieces: list[str] = []
        finish: FinishReason = "stop"
        prompt_tokens = completion_tokens = 0
        timed_out = False
        stream = self._generator.stream(self._messages, self._params)
        try:
            for event in stream:
                if event.text:
                    if first_token is None:
                        first_token = time.perf_counter()
                    pieces.append(event.text)
                    self._emit(Delta(event.text))
                if event.finish_reason is not None:
                    finish = event.finish_reason
                    prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
                    break
                if self._cancel.is_set():
                    finish = "cancelled"
                    break
                if time.monotonic() >= self._deadline:
                    finish, timed_out = "cancelled", True
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancels the generation in the backend when it stopped early
        ended = time.perf_counter()
        timings = {"queue_ms": (started - queued) * 1000, "generate_ms": (ended - started) * 1000}
        if first_token is not None:
            timings["ttft_ms"] = (first_token - started) * 1000
        # A stream stopped early has no final event: count the pieces instead.
        completion_tokens = completion_tokens or len(pieces)
        return Outcome("".join(pieces), finish, prompt_tokens, completion_tokens, timings, timed_out)

    # -- consumers ---------------------------------------------------------------------------------------

    def events(self) -> Iterator[Delta | Done[T]]:
        """Events in the calling thread; raises what the worker raised."""
        try:
            while (item := self._items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Delta | Done)
                yield item
        finally:
            self.cancel()

    def result(self) -> T:
        for item in self.events():
            if isinstance(item, Done):
                return item.result
        raise RuntimeError("the generation ended without a result")

    async def aevents(self) -> AsyncIterator[Delta | Done[T]]:
        """Events on the event loop without holding a thread per waiting consumer. Leaving the loop early
        (the client went away) cancels the generation."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self.cancel()

        with self._wake_lock:
            self._wake = wake
        try:
            while True:
                ready.clear()
                try:
                    item = self._items.get_nowait()
                except queue.Empty:
                    await ready.wait()
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Delta | Done)
                yield item
        finally:
            self.cancel()
