"""The paged KV cache's allocator: fixed-size blocks, reference counts, prefix caching, LRU eviction.

Pure Python (no torch): it only hands out block ids; the model runner turns them into slot mappings.

Prefix caching: once a block is full *and its keys/values have been computed*, it is registered under a hash
chained from its predecessor's hash and its own token ids, so a later request whose prompt starts with the
same tokens reuses those blocks instead of recomputing them (RAG prompts share a long system prefix and often
the same passages). A block whose reference count drops to zero goes to the back of the free list but keeps
its hash; it is reused from the cache until it reaches the front of the free list and is handed out for new
tokens, which is least-recently-used eviction.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from llm.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = (
        None  # content hash once full and computed; stays while the block sits in the free list
    )
    token_ids: tuple[int, ...] = ()  # the tokens hashed, to rule out hash collisions on lookup


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # front = evicted first
        self._cached: dict[int, int] = {}  # content hash -> block id
        self.prefix_query_tokens = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hit_tokens = 0  # of which found

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0

    @staticmethod
    def _chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
        return hash((parent, token_ids))

    @staticmethod
    def _root(adapter: int) -> int | None:
        """The parent hash of a sequence's first block: keys and values depend on the LoRA adapter, so
        the chains of different adapters never meet, even over the same tokens."""
        return None if adapter == 0 else hash(("adapter", adapter))

    def match_prefix(self, token_ids: list[int], adapter: int = 0) -> list[int]:
        """Ids of the cached blocks holding the longest run of leading full blocks of `token_ids`, as
        computed with `adapter`.

        The last token is never matched: the model must compute at least one position to produce logits.
        """
        if not self.enable_prefix_caching:
            return []
        matched: list[int] = []
        parent = self._root(adapter)
        bs = self.block_size
        for start in range(0, len(token_ids) - 1 - bs + 1, bs):
            chunk = tuple(token_ids[start : start + bs])
            parent = self._chain_hash(parent, chunk)
            block_id = self._cached.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            matched.append(block_id)
        return matched

    def _blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = blocks_for(seq.num_computed_tokens + num_new_tokens, self.block_size)
        return max(0, total - len(seq.block_table))

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self._cached.get(block.hash) == block_id:
                del self._cached[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id

    def admit(self, seq: Sequence, prefix: list[int], num_new_tokens: int) -> bool:
        """Give a sequence without blocks its cached `prefix` blocks and room for `num_new_tokens` more.

        Returns False, changing nothing, when the free list cannot cover it.
        """
        assert not seq.block_table, "admit() is for sequences that hold no blocks"
        revived = sum(
            1 for b in prefix if self.blocks[b].ref_count == 0
        )  # cached blocks now in the free list
        needed = blocks_for(len(prefix) * self.block_size + num_new_tokens, self.block_size) - len(prefix)
        if revived + needed > len(self._free):
            return False
        for block_id in prefix:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
        seq.block_table = list(prefix)
        seq.num_hashed_blocks = len(prefix)
        seq.num_computed_tokens = seq.num_cached_tokens = len(prefix) * self.block_size
        self.prefix_query_tokens += seq.num_prompt_tokens
        self.prefix_hit_tokens += seq.num_cached_tokens
        seq.block_table.extend(self._take_free_block() for _ in range(needed))
        return True

    def grow(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make room for `num_new_tokens` more tokens of a running sequence; False (no change) if full."""
        needed = self._blocks_needed(seq, num_new_tokens)
        if needed > len(self._free):
            return False
        seq.block_table.extend(self._take_free_block() for _ in range(needed))
        return True

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = seq.num_computed_tokens // bs
        parent = (
            self.blocks[seq.block_table[seq.num_hashed_blocks - 1]].hash
            if seq.num_hashed_blocks
            else self._root(seq.adapter)
        )
        for index in range(seq.num_hashed_blocks, full):
            block = self.blocks[seq.block_table[index]]
            if block.hash is None:
                chunk = tuple(seq.token_ids[index * bs : (index + 1) * bs])
                block.hash, block.token_ids = self._chain_hash(parent, chunk), chunk
                self._cached.setdefault(block.hash, block.block_id)
            parent = block.hash
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, full)

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; blocks nobody holds go to the back of the free list.

        The tail is released first so that, under pressure, a prompt's last blocks are evicted before the
        shared prefix at its head.
        """
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = seq.num_hashed_blocks = 0
