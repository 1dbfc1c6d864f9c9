"""`EngineConfig`: every setting of the inference engine, in one place (built by `app/settings.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Quantize = Literal["int8", "int4"]
CpuWeights = Literal["auto", "packed", "int8-activations", "dequantized", "kernels"]


@dataclass(frozen=True)
class EngineConfig:
    """How to load and serve one model.

    `model_path`: a GGUF file or a folder with `config.json` + `*.safetensors` + `tokenizer.json`; None means
    the default SmolLM2 GGUF (`llm.locate.default_llm_path()`).
    `quantize`: quantize a safetensors model's linear weights at load (GGUF weights stay in their own format).
    `dtype`: activation/compute dtype; "auto" is bfloat16 on CUDA, and on the CPU bfloat16 with packed weights
    or float32 with dequantized ones.
    `cpu_weights`: on the CPU, keep quantized weights packed for torch's int4/int8 matmuls ("packed") or
    expand them to dense float ("dequantized", bit-exact with the reference); "auto" = packed;
    "int8-activations" = packed, with 4-bit weights multiplied by int8 dot products where the CPU has
    AVX512-VNNI (`llm.layers.tiled_int4`: ~1.1x faster decode on SmolLM2, its activations rounded to int8 per
    block of 32 as llama.cpp does, +0.3-0.8 % perplexity, and some greedy answers change);
    "kernels" lays them out as on CUDA and multiplies through `kernels.dispatch` (with
    `ARCHIVIST_KERNELS=triton` and `TRITON_INTERPRET=1`: the GPU kernels inside the engine on the CPU; slow).
    `num_kv_blocks`: KV-cache size in blocks of `block_size` tokens; None sizes it from `kv_cache_memory` (a
    fraction of free GPU memory on CUDA, GiB on the CPU).
    `max_model_len`: longest prompt + answer; None means the model's context length, capped by the cache.
    `adapters`: folders of LoRA adapters in the PEFT format, served unmerged on top of the base weights and
    chosen per request by folder name; `default_adapter`: the one a request that names none gets (None: the
    base model). `merge_default_adapter`: fold the default adapter into the base weights, so that requests on
    it decode at the base model's speed (quantized linears it adapts become dense in the compute dtype, up to
    `llm.layers.lora.MERGE_DENSE_MAX_BYTES`); the base model and other adapters then carry the difference.
    `enforce_eager`: run decode steps op by op; otherwise they replay CUDA graphs on a GPU and run a
    `torch.compile`d step on the CPU (both prepared at load: under a minute of compiling on the first start
    of a 2-core machine, seconds once inductor's cache holds the code). `compile_in_background`: on the CPU,
    compile that step in a background thread instead; decode steps run eager until it is ready (a server
    answers at once instead of waiting for the compiler).
    """

    model_path: str | Path | None = None
    quantize: Quantize | None = None
    quantize_group_size: int = 32
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    cpu_weights: CpuWeights = "auto"
    num_threads: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory: float | None = None
    max_model_len: int | None = 4096
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    compile_in_background: bool = False
    cuda_graph_max_batch: int = 64
    seed: int = 0
    adapters: tuple[str | Path, ...] = ()
    default_adapter: str | None = None
    merge_default_adapter: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.quantize not in (None, "int8", "int4"):
            problems.append(f"quantize must be None, 'int8' or 'int4', got {self.quantize!r}")
        if self.quantize_group_size not in (32, 128):
            problems.append("quantize_group_size must be 32 or 128")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.cpu_weights not in get_args(CpuWeights):
            problems.append(f"cpu_weights must be one of {get_args(CpuWeights)}, got {self.cpu_weights!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "cuda_graph_max_batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            problems.append("num_kv_blocks must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 2:
            problems.append("max_model_len must be >= 2")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            problems.append("kv_cache_memory must be > 0")
        names = [Path(p).name for p in self.adapters]
        if len(set(names)) != len(names):
            problems.append(f"adapter folder names must be unique, got {names}")
        if self.default_adapter is not None and self.default_adapter not in names:
            problems.append(f"default_adapter {self.default_adapter!r} is not among the adapters {names}")
        if problems:
            raise ValueError("invalid engine config: " + "; ".join(problems))
