"""Limits that keep the service responsive under load: a per-key rate limit (also used for failed
authentications per client address) and admission control for generations (a bounded queue in front of
the model). Both answer 429 with `Retry-After` instead of letting work pile up."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class TooBusyError(RuntimeError):
    """Too many requests for now; `retry_after` seconds is a fair time to wait (429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, min(300, math.ceil(retry_after)))
        self.headers = {"Retry-After": str(self.retry_after)}


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, refilled continuously, bursts up to the same
    number. `per_minute == 0` turns it off. `what` names the requests counted, for the 429's message."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, what: str = "requests"
    ) -> None:
        self.per_minute = per_minute
        self.what = what
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._forgotten = clock()
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one request from `key`'s bucket; `TooBusyError` when it is empty."""
        self._take(key, 1.0)

    def peek(self, key: str) -> None:
        """`TooBusyError` when `key`'s bucket is empty, taking nothing from it."""
        self._take(key, 0.0)

    def _take(self, key: str, cost: float) -> None:
        if not self.per_minute:
            return
        rate = self.per_minute / 60.0
        now = self._clock()
        with self._lock:
            if now - self._forgotten >= 60.0:
                self._forget_full(now)
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise TooBusyError(
                    f"rate limit of {self.per_minute} {self.what} per minute exceeded", (1.0 - tokens) / rate
                )
            self._buckets[key] = (tokens - cost, now)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets untouched for a minute, which has refilled them: a full bucket is the same as
        none, and the keys (client addresses among them) are not bounded in number."""
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if now - bucket[1] < 60.0}
        self._forgotten = now


class Ticket:
    """A generation's place at the gate: waiting for a slot, holding one, or done."""

    def __init__(self, gate: GenerationGate) -> None:
        self._gate = gate
        self.state = "waiting"
        self.granted = threading.Event()

    def wait(self, cancelled: threading.Event, deadline: float) -> bool:
        """Block until a slot is ours; False when cancelled or past `deadline` (time.monotonic) first."""
        while not self.granted.wait(0.05):
            if cancelled.is_set() or time.monotonic() >= deadline:
                return False
        return True

    def release(self) -> None:
        self._gate._release(self)


class GenerationGate:
    """`slots` generations run at once (what the backend can batch); at most `max_waiting` more wait, in
    arrival order. Anything beyond is turned away at once, with a Retry-After estimated from how long
    recent generations took."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.running = 0
        self._queue: deque[Ticket] = deque()
        self._lock = threading.Lock()
        self._seconds_per_generation = 5.0  # until measured

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def admit(self) -> Ticket:
        with self._lock:
            ticket = Ticket(self)
            if self.running < self.slots and not self._queue:
                self._grant(ticket)
            elif len(self._queue) < self.max_waiting:
                self._queue.append(ticket)
            else:
                wait = self._seconds_per_generation * (len(self._queue) + 1) / self.slots
                raise TooBusyError(
                    f"the model is busy: {self.running} generations running and {len(self._queue)} "
                    "waiting; try again later",
                    wait,
                )
            return ticket

    def record(self, seconds: float) -> None:
        """Feed the duration of a finished generation into the Retry-After estimate."""
        with self._lock:
            self._seconds_per_generation = 0.8 * self._seconds_per_generation + 0.2 * seconds

    def _grant(self, ticket: Ticket) -> None:
        self.running += 1
        ticket.state = "running"
        ticket.granted.set()

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.state == "waiting":
                self._queue.remove(ticket)
            elif ticket.state == "running":
                self.running -= 1
            ticket.state = "done"
            while self._queue and self.running < self.slots:
                self._grant(self._queue.popleft())
