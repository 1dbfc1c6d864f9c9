"""Runs one scheduled batch through the model: inputs and step context, forward, logits, sampling.

Per step the runner builds the flat inputs in Python (token ids, positions, slot mapping, block tables,
cu_seqlens), copies them to the device in one go, runs `model(input_ids, positions)` with a `StepContext`,
samples on the device, and makes exactly one device-to-host transfer: the `.tolist()` of the sampled ids.
On CUDA, decode batches replay CUDA graphs captured at start for batch sizes 1, 2, 4, 8, 16, ... so a step
costs a few kernel launches instead of hundreds; on the CPU they run the `torch.compile`d step of
`compiled_decode` for the same reason.

The caches hold one block more than the block manager hands out: a scratch block for the dummy steps that
compile the CPU decode graphs, so compiling never writes where a sequence's keys are or will be.
"""

from __future__ import annotations

import logging
import threading

import torch

from llm.cpu import cxx_compiler_available
from llm.engine.compiled_decode import MIN_TABLE_WIDTH, CompiledDecode
from llm.engine.engine import Request, Sample
from llm.engine.sampler import Sampler
from llm.engine.scheduler import ScheduledBatch
from llm.layers.context import StepContext, set_context
from llm.layers.lora import NO_LORA, LoraLayout
from llm.model.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8]
    sizes += list(range(16, max_batch + 1, 16))
    return [s for s in sizes if s <= max_batch]


class TorchModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        *,
        device: torch.device,
        dtype: torch.dtype,
        num_blocks: int,
        block_size: int,
        max_model_len: int,
        use_cuda_graphs: bool,
        cuda_graph_max_batch: int,
        seed: int,
        compile_cpu_decode: bool = False,
        compile_in_background: bool = False,
        max_batch: int = 1,
        lora: LoraLayout = NO_LORA,
    ) -> None:
        self.model = model
        self.device, self.dtype = device, dtype
        self.lora = lora  # how the model's LoRA adapters are served (`llm.layers.lora`)
        self._lora_columns = torch.tensor(lora.slots, dtype=torch.int64, device=device)
        self.block_size = block_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        cfg = model.config
        self.scratch_block = num_blocks  # never handed out by the block manager, which owns 0..num_blocks-1
        shape = (num_blocks + 1, block_size, cfg.num_kv_heads, cfg.head_dim)
        for layer in model.attention_layers():
            layer.bind_cache(
                torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
            )
        self.sampler = Sampler(device, seed)
        self._pin = device.type == "cuda"
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if use_cuda_graphs and device.type == "cuda":
            self._capture_graphs(graph_batch_sizes(cuda_graph_max_batch))
        # Set once the compiled CPU decode step is ready; each step reads it once, so a step that starts eager
        # stays eager (its block table is not padded for the compiled graph).
        self.compiled_decode: CompiledDecode | None = None
        self._compiling: threading.Thread | None = None
        if compile_cpu_decode and device.type == "cpu":
            if compile_in_background:  # started by `start_compiling`, once the caller's checks are done
                self._compiling = threading.Thread(
                    target=self._compile_decode, args=(max_batch,), name="compile-decode", daemon=True
                )
            else:
                self._compile_decode(max_batch)

    def start_compiling(self) -> None:
        """Start compiling the decode step in the background (with `compile_in_background`). Eager steps may
        run meanwhile: the kernels take their traceable forms only for steps marked `StepContext.compiled`."""
        if self._compiling is not None and self._compiling.ident is None:
            self._compiling.start()

    def wait_for_compile(self, timeout: float | None = None) -> bool:
        """Wait for a background compile of the decode step; True once none is running."""
        if self._compiling is not None and self._compiling.ident is not None:
            self._compiling.join(timeout)
        return self._compiling is None or not self._compiling.is_alive()

    # --- one step --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, requests: list[Request]) -> list[Sample | None]:
        flags = batch.sample_flags
        compiled = self.compiled_decode
        input_ids, positions, ctx, logits_rows = self._prepare(batch, flags, compiled)
        set_context(ctx)
        try:
            hidden = self._run_model(input_ids, positions, ctx, len(batch.seqs), compiled)  # (tokens, hidden)
        finally:
            set_context(None)
        if not logits_rows:
            return [None] * len(flags)
        logits = self.model.compute_logits(hidden[logits_rows] if len(logits_rows) != len(hidden) else hidden)
        out = self.sampler(logits, [r for r, f in zip(requests, flags, strict=True) if f])
        samples = iter(out.decode(out.packed.tolist()))  # the step's one device -> host sync
        return [next(samples) if f else None for f in flags]

    @torch.inference_mode()
    def score(self, token_ids: list[int]) -> torch.Tensor:
        """Log-probability of each token given the ones before it, (len - 1,) float32, outside the cache.

        For perplexity checks: one packed prefill whose keys/values are not written (slot -1).
        """
        n = len(token_ids)
        if n < 2:
            raise ValueError("scoring needs at least two tokens")
        cu = self._to_device([0, n], torch.int32)
        ctx = StepContext(
            is_decode=False,
            slot_mapping=self._to_device([-1] * n, torch.int64),
            block_tables=self._to_device([[0]], torch.int32),
            context_lens=self._to_device([n], torch.int32),
            cu_seqlens_q=cu,
            cu_seqlens_k=cu,
            max_seqlen_q=n,
            max_seqlen_k=n,
            lora_mask=self._lora_mask([0] * n),  # the base model, also when an adapter is merged into it
        )
        ids = self._to_device(token_ids, torch.int64)
        set_context(ctx)
        try:
            hidden = self.model(ids, torch.arange(n, device=self.device))
        finally:
            set_context(None)
        logprobs = self.model.compute_logits(hidden[:-1]).log_softmax(dim=-1)
        return logprobs.gather(1, ids[1:, None])[:, 0].cpu()

    def _to_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype, pin_memory=self._pin)
        return t.to(self.device, non_blocking=True)

    def _prepare(
        self, batch: ScheduledBatch, flags: list[bool], compiled: CompiledDecode | None
    ) -> tuple[torch.Tensor, torch.Tensor, StepContext, list[int]]:
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        context_lens: list[int] = []
        cu_q, cu_k = [0], [0]
        logits_rows: list[int] = []
        adapters: list[int] = []
        cache_hit = False
        for seq, n, sample in zip(batch.seqs, batch.num_tokens, flags, strict=True):
            start = seq.num_computed_tokens
            end = start + n
            ids += seq.token_ids[start:end]
            adapters += [seq.adapter] * n
            positions += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            context_lens.append(end)
            cu_q.append(cu_q[-1] + n)
            cu_k.append(cu_k[-1] + end)
            cache_hit |= start > 0
            if sample:
                logits_rows.append(cu_q[-1] - 1)
        width = max(len(s.block_table) for s in batch.seqs)
        if batch.is_decode and compiled is not None:
            width = max(width, MIN_TABLE_WIDTH)  # padded columns point at block 0, masked by context_lens
        tables = [s.block_table + [0] * (width - len(s.block_table)) for s in batch.seqs]
        is_decode = batch.is_decode
        ctx = StepContext(
            is_decode=is_decode,
            slot_mapping=self._to_device(slots, torch.int64),
            block_tables=self._to_device(tables, torch.int32),
            context_lens=self._to_device(context_lens, torch.int32),
            cache_hit=cache_hit,
            lora_mask=self._lora_mask(adapters),
        )
        if not is_decode:
            ctx.cu_seqlens_q = self._to_device(cu_q, torch.int32)
            ctx.cu_seqlens_k = self._to_device(cu_k, torch.int32) if cache_hit else ctx.cu_seqlens_q
            ctx.max_seqlen_q = max(batch.num_tokens)
            ctx.max_seqlen_k = max(context_lens)
        return self._to_device(ids, torch.int64), self._to_device(positions, torch.int64), ctx, logits_rows

    def _lora_mask(self, adapters: list[int]) -> torch.Tensor | None:
        """The step's LoRA mask for tokens of these adapter slots (`LoraLayout.mask`)."""
        if not self.lora.slots:
            return None
        return self.lora.mask(self._to_device(adapters, torch.int64), self._lora_columns, self.dtype)

    def _run_model(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: StepContext,
        batch_size: int,
        compiled: CompiledDecode | None,
    ) -> torch.Tensor:
        if ctx.is_decode and compiled is not None and compiled.serves(ctx, batch_size):
            ctx.compiled = True
            return compiled(input_ids, positions)
        graph_size = (
            next((s for s in sorted(self.graphs) if s >= batch_size), None) if ctx.is_decode else None
        )
        if graph_size is None:
            return self.model(input_ids, positions)
        g = self._graph_io
        g["input_ids"][:batch_size] = input_ids
        g["positions"][:batch_size] = positions
        g["slot_mapping"].fill_(-1)
        g["slot_mapping"][:batch_size] = ctx.slot_mapping
        g["context_lens"].fill_(1)  # padding rows attend to one (ignored) key instead of none
        g["context_lens"][:batch_size] = ctx.context_lens
        g["block_tables"].zero_()
        g["block_tables"][:batch_size, : ctx.block_tables.shape[1]] = ctx.block_tables
        g["lora_mask"].zero_()  # no mask: every token's slot is merged into the weights
        if ctx.lora_mask is not None:
            g["lora_mask"][:batch_size] = ctx.lora_mask
        self.graphs[graph_size].replay()
        return g["hidden"][:batch_size]

    # --- CPU: compiled decode --------------------------------------------------------------------------
    def _compile_decode(self, max_batch: int) -> None:
        if not cxx_compiler_available():
            log.warning("no C++ compiler found: the CPU decode step stays eager (slower)")
            return
        mask_width = len(self.lora.slots) if self.lora.always_masked else 0
        compiled = CompiledDecode(self.model, max_batch, mask_width)
        try:
            compiled.warm_up(self.scratch_block, self.block_size, self.device)
        except Exception as error:  # a broken toolchain must not take the engine down: eager still works
            log.warning("compiling the decode step failed (%s): it stays eager", error)
            return
        self.compiled_decode = compiled
        log.info("decode steps now run compiled")

    # --- CUDA graphs -----------------------------------------------------------------------------------
    def _capture_graphs(self, sizes: list[int]) -> None:
        largest = max(sizes)
        dev = self.device
        self._graph_io = g = {
            "input_ids": torch.zeros(largest, dtype=torch.int64, device=dev),
            "positions": torch.zeros(largest, dtype=torch.int64, device=dev),
            "slot_mapping": torch.full((largest,), -1, dtype=torch.int64, device=dev),
            "context_lens": torch.ones(largest, dtype=torch.int32, device=dev),
            "block_tables": torch.zeros(largest, self.max_blocks_per_seq, dtype=torch.int32, device=dev),
            "hidden": torch.zeros(largest, self.model.config.hidden_size, dtype=self.dtype, device=dev),
            "lora_mask": torch.zeros(largest, len(self.lora.slots), dtype=self.dtype, device=dev),
        }
        pool = None
        with torch.inference_mode():
            for size in sorted(sizes, reverse=True):  # largest first, so smaller graphs reuse its memory pool
                ctx = StepContext(
                    is_decode=True,
                    slot_mapping=g["slot_mapping"][:size],
                    block_tables=g["block_tables"][:size],
                    context_lens=g["context_lens"][:size],
                    lora_mask=g["lora_mask"][:size] if self.lora.slots else None,
                )
                set_context(ctx)
                try:
                    g["hidden"][:size] = self.model(g["input_ids"][:size], g["positions"][:size])  # warm-up
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool):
                        g["hidden"][:size] = self.model(g["input_ids"][:size], g["positions"][:size])
                finally:
                    set_context(None)
                pool = graph.pool()
                self.graphs[size] = graph
                torch.cuda.synchronize()
