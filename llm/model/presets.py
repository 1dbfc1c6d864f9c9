"""Model architectures as data: what differs between the decoder families we run, and how to read a config.

A preset says how a family deviates from plain Llama (QKV bias, q/k norms, Gemma's extra norms and GeGLU, the
GGUF converter's habits); `ModelConfig` holds the sizes of one checkpoint, read from GGUF metadata or a
Hugging Face `config.json`. Adding a family is adding a row, not a branch. Families: Llama 2/3/3.1 (SmolLM2),
Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text-only) and Phi-3/Phi-4-mini.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class UnsupportedModelError(ValueError):
    """The model path is missing, unreadable or not one of the supported architectures."""


@dataclass(frozen=True)
class ArchPreset:
    name: str
    qkv_bias: bool = False
    # llama.cpp's converter permutes q/k rows into its interleaved RoPE layout for these (not for the families
    # llama.cpp runs with NeoX-style RoPE: Qwen, Gemma, Phi-3).
    gguf_permute_qk: bool = True
    qk_norm: bool = False  # each query and key head RMS-normed before RoPE (Qwen3, Gemma 3)
    # The attention and MLP outputs RMS-normed before they join the residual (Gemma: four norms a layer).
    sandwich_norms: bool = False
    # Gemma's RMSNorm scales by (1 + w) and Hugging Face stores w; llama.cpp's converter stores 1 + w.
    norm_weight_offset: float = 0.0
    embed_scale: bool = False  # embeddings multiplied by sqrt(hidden size) (Gemma)
    activation: str = "silu"  # of the gate projection: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    # Checkpoints store gate and up as one tensor (Phi-3): GGUF `ffn_up` then holds both halves.
    fused_gate_up: bool = False
    # When the checkpoint does not list its layers' kinds: every n-th layer attends globally, the others
    # within the sliding window (Gemma 3: 6, which llama.cpp hard-codes). None: every layer uses the window.
    sliding_window_pattern: int | None = None
    # RoPE base of the sliding-window layers when the checkpoint gives none (Gemma 3: 10,000, hard-coded by
    # llama.cpp); those layers' RoPE is never scaled. None: all layers share one RoPE.
    local_rope_theta: float | None = None
    # GGUF stores no query_pre_attn_scalar; llama.cpp scales queries by head_dim^-0.5, but by
    # (hidden / heads)^-0.5 for models of these layer counts (Gemma 2 27B, Gemma 3 27B).
    gguf_hidden_per_head_scale_layers: tuple[int, ...] = ()
    hf_architectures: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()


PRESETS: dict[str, ArchPreset] = {
    p.name: p
    for p in (
        # Llama 2/3/3.1, SmolLM/SmolLM2 (tied embeddings, read from the checkpoint), and Mistral GGUFs
        # (llama.cpp writes Mistral as "llama").
        ArchPreset("llama", hf_architectures=("LlamaForCausalLM",), gguf_architectures=("llama",)),
        ArchPreset("mistral", hf_architectures=("MistralForCausalLM",), gguf_architectures=("mistral",)),
        ArchPreset(
            "qwen2",
            qkv_bias=True,
            gguf_permute_qk=False,
            hf_architectures=("Qwen2ForCausalLM",),
            gguf_architectures=("qwen2",),
        ),
        ArchPreset(
            "qwen3",
            gguf_permute_qk=False,
            qk_norm=True,
            hf_architectures=("Qwen3ForCausalLM",),
            gguf_architectures=("qwen3",),
        ),
        ArchPreset(
            "gemma2",  # Gemma 3's layer without q/k norms, every other layer sliding, one RoPE, capped scores
            gguf_permute_qk=False,
            sandwich_norms=True,
            norm_weight_offset=1.0,
            embed_scale=True,
            activation="gelu_tanh",
            sliding_window_pattern=2,
            gguf_hidden_per_head_scale_layers=(46,),
            hf_architectures=("Gemma2ForCausalLM",),
            gguf_architectures=("gemma2",),
        ),
        ArchPreset(
            "gemma3",
            gguf_permute_qk=False,
            qk_norm=True,
            sandwich_norms=True,
            norm_weight_offset=1.0,
            embed_scale=True,
            activation="gelu_tanh",
            sliding_window_pattern=6,
            local_rope_theta=10000.0,
            gguf_hidden_per_head_scale_layers=(62,),
            hf_architectures=("Gemma3ForCausalLM",),
            gguf_architectures=("gemma3",),
        ),
        ArchPreset(
            "phi3",
            gguf_permute_qk=False,
            fused_gate_up=True,
            hf_architectures=("Phi3ForCausalLM",),
            gguf_architectures=("phi3",),
        ),
    )
}


def supported_architectures() -> list[str]:
    return sorted({a for p in PRESETS.values() for a in p.hf_architectures + p.gguf_architectures})


def preset_for(architecture: str, path: object) -> ArchPreset:
    for preset in PRESETS.values():
        if architecture in preset.hf_architectures or architecture in preset.gguf_architectures:
            return preset
    raise UnsupportedModelError(
        f"{path}: architecture {architecture!r} is not supported; "
        f"supported: {', '.join(supported_architectures())}"
    )


@dataclass(frozen=True)
class ModelConfig:
    preset: ArchPreset
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rotary_dim: int  # the leading dimensions of each head that RoPE rotates (partial rotary: < head_dim)
    sliding_window: int | None = None
    # Which layers attend within `sliding_window` (None: all of them, as in Mistral).
    sliding_layers: tuple[bool, ...] | None = None
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)  # of the global layers
    local_rope_theta: float | None = None  # RoPE base of the sliding layers, if they have their own
    query_pre_attn_scalar: float | None = None  # attention scores scaled by its ^-0.5 (default: head_dim)
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)
    attn_logit_softcapping: float | None = None  # scaled attention scores capped the same way (Gemma 2)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of `layer` (None: it attends to the whole context)."""
        if self.sliding_layers is not None and not self.sliding_layers[layer]:
            return None
        return self.sliding_window

    def layer_rope(self, layer: int) -> int:
        """Which of `rope_tables()` the layer's positions use."""
        return int(self.local_rope_theta is not None and self.layer_window(layer) is not None)

    def rope_tables(self) -> list[tuple[float, dict[str, Any] | None]]:
        """(theta, scaling) of each RoPE the layers use: the global one, then the local layers' own."""
        local = [] if self.local_rope_theta is None else [(self.local_rope_theta, None)]
        return [(self.rope_theta, self.rope_scaling), *local]


def _sliding_layers(
    window: int | None, num_layers: int, pattern: int | None, layer_types: list[str] | None
) -> tuple[bool, ...] | None:
    """Which layers slide, from the checkpoint's layer kinds or else every-n-th-global `pattern`; None when
    every layer uses the window (or there is none)."""
    if not window:
        return None
    if layer_types:
        sliding = tuple(kind == "sliding_attention" for kind in layer_types)
    elif pattern:
        sliding = tuple((i + 1) % pattern != 0 for i in range(num_layers))
    else:
        return None
    return None if all(sliding) else sliding


def _logit_cap(value: Any, key: str, path: object) -> float | None:
    """A soft cap (`c * tanh(x / c)`) as a config gives it: absent or 0 for none; any other value must be a
    positive number (a cap of 0 would divide by zero in every score)."""
    if not value:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UnsupportedModelError(f"{path}: {key} must be a positive number, got {value!r}")
    return float(value)


def _longrope(scaling: dict[str, Any], max_positions: int, original: int) -> dict[str, Any]:
    """LongRoPE parameters with the two values transformers derives when absent made explicit: the
    pretraining context, and the attention factor (on cos/sin) from the context extension."""
    factor = scaling.get("factor") or max_positions / original
    attention = scaling.get("attention_factor") or (
        1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    )
    return {
        **scaling,
        "rope_type": "longrope",
        "original_max_position_embeddings": original,
        "attention_factor": attention,
    }


def config_from_hf(hf: dict[str, Any], path: object) -> ModelConfig:
    """Read a Hugging Face `config.json` (transformers 4 and 5 spellings)."""
    architectures = hf.get("architectures") or [hf.get("model_type", "?")]
    preset = preset_for(architectures[0], path)
    heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    max_positions = hf.get("max_position_embeddings", 4096)
    # Qwen2 ships a sliding_window it does not use unless use_sliding_window is set.
    window = None if hf.get("use_sliding_window") is False else hf.get("sliding_window")
    # transformers >= 5 writes rope_parameters (theta, scaling, partial rotary; Gemma 3: one per layer kind),
    # older configs rope_theta + rope_scaling (+ rope_local_base_freq, partial_rotary_factor).
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    local = rope.pop("sliding_attention", None) or {}
    rope = rope.pop("full_attention", None) or rope
    if local.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"{path}: scaled RoPE on sliding-window layers is not supported")
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = None if kind == "default" else rope
    if kind in ("longrope", "su"):
        original = hf.get("original_max_position_embeddings") or rope.get(
            "original_max_position_embeddings", max_positions
        )
        scaling = _longrope(rope, max_positions, original)
    pattern = hf.get("sliding_window_pattern") or preset.sliding_window_pattern
    local_theta = hf.get("rope_local_base_freq") or local.get("rope_theta") or preset.local_rope_theta
    partial = hf.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0
    return ModelConfig(
        preset=preset,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=hf.get("rope_theta") or rope.get("rope_theta", 10000.0),
        max_position_embeddings=max_positions,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rotary_dim=int(head_dim * partial),
        sliding_window=window,
        sliding_layers=_sliding_layers(window, layers, pattern, hf.get("layer_types")),
        rope_scaling=scaling,
        local_rope_theta=local_theta if window else None,
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
        final_logit_softcapping=_logit_cap(
            hf.get("final_logit_softcapping"), "final_logit_softcapping", path
        ),
        attn_logit_softcapping=_logit_cap(hf.get("attn_logit_softcapping"), "attn_logit_softcapping", path),
    )


def config_from_gguf(
    meta: dict[str, Any], path: object, has_output_weight: bool, rope_factors: dict[str, list[float]]
) -> ModelConfig:
    """Read GGUF metadata as llama.cpp's converter writes it. `rope_factors`: the per-frequency RoPE divisors
    it stores as tensors (`rope_freqs`: Llama 3.1 scaling; `rope_factors_short`/`_long`: LongRoPE)."""
    arch = meta.get("general.architecture", "?")
    preset = preset_for(arch, path)

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise UnsupportedModelError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    heads, hidden, layers = key("attention.head_count"), key("embedding_length"), key("block_count")
    head_dim = key("attention.key_length", hidden // heads)
    context = key("context_length")
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    rope_scaling = None
    if "rope_factors_short" in rope_factors:
        rope_scaling = {
            "rope_type": "longrope",
            "short_factor": rope_factors["rope_factors_short"],
            "long_factor": rope_factors["rope_factors_long"],
            "original_max_position_embeddings": key("rope.scaling.original_context_length", context),
            "attention_factor": key("rope.scaling.attn_factor", 1.0),
        }
    elif "rope_freqs" in rope_factors:
        rope_scaling = {"rope_type": "freq_factors", "factors": rope_factors["rope_freqs"]}
    elif scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type, "factor": key("rope.scaling.factor", 1.0)}
    window = meta.get(f"{arch}.attention.sliding_window") or None  # Phi-3 writes 0 for none
    scalar = hidden // heads if layers in preset.gguf_hidden_per_head_scale_layers else None
    return ModelConfig(
        preset=preset,
        vocab_size=meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=key("feed_forward_length"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=key("attention.head_count_kv", heads),
        head_dim=head_dim,
        rms_norm_eps=key("attention.layer_norm_rms_epsilon"),
        rope_theta=key("rope.freq_base", 10000.0),
        max_position_embeddings=context,
        tie_word_embeddings=not has_output_weight,
        rotary_dim=key("rope.dimension_count", head_dim),
        sliding_window=window,
        sliding_layers=_sliding_layers(window, layers, preset.sliding_window_pattern, None),
        rope_scaling=rope_scaling,
        local_rope_theta=meta.get(f"{arch}.rope.freq_base_swa", preset.local_rope_theta) if window else None,
        query_pre_attn_scalar=scalar,
        final_logit_softcapping=_logit_cap(
            meta.get(f"{arch}.final_logit_softcapping"), f"{arch}.final_logit_softcapping", path
        ),
        attn_logit_softcapping=_logit_cap(
            meta.get(f"{arch}.attn_logit_softcapping"), f"{arch}.attn_logit_softcapping", path
        ),
    )
