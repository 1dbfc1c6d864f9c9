"""Our inference engine: `load_engine(EngineConfig)` returns a thread-safe `Generator` (`EngineGenerator`).

`create_engine` builds the single-threaded `LLMEngine` and its tokenizer, for callers that drive it themselves
(tests, benchmarks, beam search). Everything is sized from one `EngineConfig`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from llm.config import EngineConfig
from llm.engine.block_manager import BlockManager
from llm.engine.engine import LLMEngine
from llm.engine.generator import EngineGenerator
from llm.engine.model_runner import TorchModelRunner
from llm.engine.scheduler import Scheduler
from llm.layers import decode_attention, tiled_int4
from llm.layers.linear import WeightPolicy
from llm.layers.lora import install_adapters
from llm.locate import default_llm_path
from llm.lora.adapter import load_adapter
from llm.model.loader import GGUFSource, load_model
from llm.model.presets import UnsupportedModelError
from llm.tokenizer import Tokenizer, from_folder, from_gguf_fields

__all__ = ["EngineConfig", "EngineGenerator", "LLMEngine", "create_engine", "load_engine"]

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CPU_KV_CACHE_GIB = 1.0
_GPU_KV_CACHE_FRACTION = 0.85


def _policy(config: EngineConfig) -> WeightPolicy:
    """Where the weights go and what they become, for this config on this machine."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    cpu_weights: Literal["packed", "dequantized", "kernels"] = "packed"  # auto, packed, int8-activations
    if config.cpu_weights == "dequantized" or config.cpu_weights == "kernels":
        cpu_weights = config.cpu_weights
    packed = device.type == "cpu" and cpu_weights == "packed"
    if config.dtype != "auto":
        dtype = _DTYPES[config.dtype]
    elif device.type == "cuda" or packed:
        dtype = torch.bfloat16  # torch's packed CPU matmuls are fast with bfloat16 activations only
    else:
        dtype = torch.float32
    dot_products = config.cpu_weights == "int8-activations"  # lossy: opt-in
    return WeightPolicy(device, dtype, cpu_weights, config.quantize, config.quantize_group_size, dot_products)


def _num_blocks(config: EngineConfig, model_bytes_per_block: int, device: torch.device) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * (config.kv_cache_memory or _GPU_KV_CACHE_FRACTION)
    else:
        budget = (config.kv_cache_memory or _CPU_KV_CACHE_GIB) * 2**30
    return max(1, int(budget // model_bytes_per_block))


def start_building_cpu_kernels(config: EngineConfig) -> None:
    """Start building the C++ kernels an engine of `config` takes on the CPU (decode attention; 4-bit weights
    by int8 dot products where that serves), each in a thread, so that a cold start compiles them side by side
    while other work goes on (the compiler runs as a process of its own): `create_engine` calls it before
    loading the weights, and a server may call it earlier still. A build not done when the load reaches it is
    waited for; `llm.cpu.kernel_or_none` keeps it to one build of each. Nothing on a CUDA device."""
    policy = _policy(config)
    if policy.device.type != "cpu":
        return
    builds: list[Callable[[], object]] = [decode_attention.cpu_kernel]
    if policy.int4_dot_products:
        builds.append(tiled_int4.available)
    for build in builds:
        threading.Thread(target=build, name="archivist-kernel-build", daemon=True).start()


def create_engine(config: EngineConfig | None = None) -> tuple[LLMEngine, Tokenizer, str]:
    """Load the model and tokenizer and size the KV cache; returns (engine, tokenizer, model name)."""
    config = config or EngineConfig()
    path = Path(config.model_path) if config.model_path is not None else default_llm_path()
    policy = _policy(config)
    device, dtype = policy.device, policy.dtype
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    start_building_cpu_kernels(config)
    model, source = load_model(path, policy, max_positions=config.max_model_len)
    adapters = [load_adapter(p) for p in config.adapters]
    names = [a.name for a in adapters]
    merge = (
        names.index(config.default_adapter) + 1
        if config.merge_default_adapter and config.default_adapter in names
        else None
    )
    lora = install_adapters(model, adapters, dtype, device, merge)
    cfg = model.config
    tokenizer = from_gguf_fields(source.field) if isinstance(source, GGUFSource) else from_folder(path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UnsupportedModelError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens, model {cfg.vocab_size}"
        )

    bytes_per_block = 2 * cfg.num_layers * config.block_size * cfg.kv_size * dtype.itemsize
    num_blocks = _num_blocks(config, bytes_per_block, device)
    max_model_len = min(model.rotary.cos.shape[0], num_blocks * config.block_size)

    runner = TorchModelRunner(
        model,
        device=device,
        dtype=dtype,
        num_blocks=num_blocks,
        block_size=config.block_size,
        max_model_len=max_model_len,
        use_cuda_graphs=not config.enforce_eager,
        cuda_graph_max_batch=min(config.cuda_graph_max_batch, config.max_num_seqs),
        seed=config.seed,
        compile_cpu_decode=not config.enforce_eager,
        compile_in_background=config.compile_in_background,
        max_batch=config.max_num_seqs,
        lora=lora,
    )
    block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
    scheduler = Scheduler(block_manager, config.max_num_seqs, config.max_num_batched_tokens, max_model_len)
    engine = LLMEngine(
        runner,
        tokenizer.decode,
        tokenizer.stop_token_ids,
        scheduler,
        names,
        tokenizer.encode,
        lambda: tokenizer.copy_table,
    )
    name = f"archivist-engine:{path.stem if path.is_file() else path.name}"
    log.info(
        "loaded %s on %s (%s), %d KV blocks, max_model_len %d, LoRA adapters: %s",
        name, device, dtype, num_blocks, max_model_len, ", ".join(names) or "none",
    )  # fmt: skip
    return engine, tokenizer, name


def load_engine(config: EngineConfig | None = None) -> EngineGenerator:
    """The engine as a thread-safe `Generator` with its own worker thread; call `.shutdown()` to stop it."""
    config = config or EngineConfig()
    engine, tokenizer, name = create_engine(config)
    return EngineGenerator(engine, tokenizer, name, default_adapter=config.default_adapter)
