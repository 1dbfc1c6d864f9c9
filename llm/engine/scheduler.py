"""Continuous batching: which sequences run in the next step, and how many of their tokens (pure Python).

Each step gets a token budget (`max_num_batched_tokens`). Running sequences are served first, oldest first:
a decoding sequence costs one token, a sequence still in its prompt costs the next chunk that fits (chunked
prefill, so a long prompt never stalls the decoders). Waiting sequences are then admitted in arrival order
while budget, sequence slots and free blocks last; the head of the queue is never overtaken (FIFO fairness).
When the cache is full, the newest running sequence is preempted: its blocks are freed and it goes back to
the head of the queue to be recomputed later (its full blocks usually survive in the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from llm.engine.block_manager import BlockManager
from llm.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """The work of one step: `num_tokens[i]` tokens of `seqs[i]`, starting at its `num_computed_tokens`."""

    seqs: list[Sequence]
    num_tokens: list[int]

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def is_decode(self) -> bool:
        """Every sequence feeds exactly one token whose key/value is not yet cached."""
        return all(n == 1 for n in self.num_tokens)

    @property
    def sample_flags(self) -> list[bool]:
        """Whether each sequence's chunk reaches its last token, so the step must sample its next one."""
        return [s.num_computed_tokens + n == len(s) for s, n in zip(self.seqs, self.num_tokens, strict=True)]


class Scheduler:
    def __init__(
        self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        bm = self.block_manager
        longest = min(self.max_model_len, len(seq) + seq.max_new_tokens)
        if len(seq) >= self.max_model_len or -(-longest // bm.block_size) > bm.num_blocks:
            raise ValueError(
                f"sequence of {len(seq)} prompt tokens does not fit (max_model_len={self.max_model_len}, "
                f"{bm.num_blocks} blocks of {bm.block_size})"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        bm = self.block_manager
        budget = self.max_num_batched_tokens
        seqs: list[Sequence] = []
        num_tokens: list[int] = []
        preempted = False

        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            n = min(seq.num_uncomputed_tokens, budget)
            while not bm.grow(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                seqs.append(seq)
                num_tokens.append(n)
                budget -= n
                index += 1
                continue
            break

        # A step that had to preempt admits nobody: the freed room belongs to the preempted, who wait first.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            prefix = bm.match_prefix(seq.token_ids, seq.adapter)
            n = min(len(seq) - len(prefix) * bm.block_size, budget)
            if not bm.admit(seq, prefix, n):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seqs.append(seq)
            num_tokens.append(n)
            budget -= n
        return ScheduledBatch(seqs, num_tokens)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def advance(self, batch: ScheduledBatch) -> None:
        """Record that the step computed its tokens (call before appending the sampled ones)."""
        for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)

    def finish(self, seq: Sequence) -> None:
        """Retire a sequence (done or cancelled), wherever it is, and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        else:
            return
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
