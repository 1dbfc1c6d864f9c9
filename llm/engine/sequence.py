"""Per-request bookkeeping shared by the scheduler, block manager and engine (pure Python, no torch)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum, auto

_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass
class Sequence:
    """One request's tokens and where its KV cache lives.

    `token_ids` holds the prompt followed by every generated token. `num_computed_tokens` counts the leading
    tokens whose keys/values are already in the cache (from earlier steps or from the prefix cache); the
    scheduler hands the model the next slice `token_ids[num_computed_tokens:]`, possibly in chunks. After a
    preemption the cache is dropped and the whole sequence is recomputed, so `num_computed_tokens` goes to 0.
    """

    token_ids: list[int]
    max_new_tokens: int
    seq_id: int = field(default_factory=lambda: next(_ids))
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at the last admission
    num_hashed_blocks: int = 0  # leading blocks already registered in the prefix cache
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_preemptions: int = 0
    adapter: int = 0  # slot of the LoRA adapter the sequence is generated with (0: the base model)

    def __post_init__(self) -> None:
        if not self.token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
