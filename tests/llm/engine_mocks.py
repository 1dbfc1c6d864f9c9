"""A mock model and a byte tokenizer for testing the engine's pure-Python parts without torch.

The mock keeps a fake paged KV cache: every step it writes, at each computed token's slot, a fingerprint of
the whole prefix up to that token (what a real key/value depends on), and before sampling it reads back every
position through the block table and checks the fingerprints. A block handed to two sequences by mistake, a
prefix-cache hit on the wrong block or a stale slot after preemption therefore fails the test, exactly where a
real model would silently produce wrong text.
"""

from __future__ import annotations

from llm.base import ChatMessage
from llm.engine.engine import Request, Sample
from llm.engine.scheduler import ScheduledBatch

EOS = 0


class ByteTokenizer:
    """UTF-8 bytes as token ids 1..256 (0 is EOS)."""

    stop_token_ids = frozenset({EOS})

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 1 for i in ids if i != EOS).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[ChatMessage]) -> list[int]:
        return self.encode("".join(f"<{m.role}>{m.content}" for m in messages) + "<assistant>")


def _fingerprint(parent: int, token: int) -> int:
    return hash((parent, token))


class MockRunner:
    def __init__(self, num_blocks: int, block_size: int, script: dict[int, list[int]] | None = None) -> None:
        self.block_size = block_size
        self.cache: list[int | None] = [None] * (num_blocks * block_size)
        self.script = script or {}  # request id -> tokens to emit, in order (else a deterministic function)
        self.steps = 0
        self.max_batch = 0
        self.step_tokens: list[int] = []  # tokens fed per step

    def _slot(self, table: list[int], pos: int) -> int:
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def execute(self, batch: ScheduledBatch, requests: list[Request]) -> list[Sample | None]:
        self.steps += 1
        self.max_batch = max(self.max_batch, len(batch.seqs))
        self.step_tokens.append(sum(batch.num_tokens))
        out: list[Sample | None] = []
        for seq, n, request, sample in zip(
            batch.seqs, batch.num_tokens, requests, batch.sample_flags, strict=True
        ):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            assert end <= len(seq.block_table) * self.block_size, "not enough blocks for the scheduled tokens"
            fp = 0
            for pos in range(end):
                fp = _fingerprint(fp, seq.token_ids[pos])
                slot = self._slot(seq.block_table, pos)
                if pos >= start:
                    self.cache[slot] = fp
                else:
                    assert self.cache[slot] == fp, f"seq {seq.seq_id}: stale or foreign KV at position {pos}"
            if not sample:
                out.append(None)
                continue
            script = self.script.get(request.request_id)
            if script is not None:
                token = script[seq.num_completion_tokens]
            else:
                token = 1 + (fp % 255)  # never EOS: length is set by max_new_tokens
            out.append(Sample(token))
        return out
