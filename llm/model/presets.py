"""Model architectures as data: what differs between members of the llama family, and how to read a config.

A preset says how a family deviates from plain Llama (QKV bias, GGUF q/k row permutation, sliding window);
`ModelConfig` holds the sizes of one checkpoint, read from GGUF metadata or a Hugging Face `config.json`
through the key tables below. Adding a family is adding a row, not a branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UnsupportedModelError(ValueError):
    """The model path is missing, unreadable or not one of the supported architectures."""


@dataclass(frozen=True)
class ArchPreset:
    name: str
    qkv_bias: bool = False
    # llama.cpp's converter permutes q/k rows into its interleaved RoPE layout for these (not for Qwen2).
    gguf_permute_qk: bool = True
    hf_architectures: tuple[str, ...] = ()
    gguf_architectures: tuple[str, ...] = ()


PRESETS: dict[str, ArchPreset] = {
    p.name: p
    for p in (
        # Llama 2/3, SmolLM/SmolLM2 (tied embeddings, read from the checkpoint), and Mistral GGUFs (llama.cpp
        # writes Mistral as "llama").
        ArchPreset("llama", hf_architectures=("LlamaForCausalLM",), gguf_architectures=("llama",)),
        ArchPreset("mistral", hf_architectures=("MistralForCausalLM",), gguf_architectures=("mistral",)),
        ArchPreset(
            "qwen2",
            qkv_bias=True,
            gguf_permute_qk=False,
            hf_architectures=("Qwen2ForCausalLM",),
            gguf_architectures=("qwen2",),
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
    sliding_window: int | None = None
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


# Hugging Face config.json keys (the same across these families).
def config_from_hf(hf: dict[str, Any], path: object) -> ModelConfig:
    architectures = hf.get("architectures") or [hf.get("model_type", "?")]
    preset = preset_for(architectures[0], path)
    heads = hf["num_attention_heads"]
    # Qwen2 ships a sliding_window it does not use unless use_sliding_window is set.
    sliding = None if hf.get("use_sliding_window") is False else hf.get("sliding_window")
    # transformers >= 5 writes rope_parameters (theta + scaling); older configs rope_theta + rope_scaling.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None
    return ModelConfig(
        preset=preset,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=hf.get("rope_theta") or rope.get("rope_theta", 10000.0),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        sliding_window=sliding,
        rope_scaling=scaling,
    )


def config_from_gguf(meta: dict[str, Any], path: object, has_output_weight: bool) -> ModelConfig:
    arch = meta.get("general.architecture", "?")
    preset = preset_for(arch, path)

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise UnsupportedModelError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    heads = key("attention.head_count")
    hidden = key("embedding_length")
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    rope_scaling = None
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type, "factor": key("rope.scaling.factor", 1.0)}
    return ModelConfig(
        preset=preset,
        vocab_size=meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=key("feed_forward_length"),
        num_layers=key("block_count"),
        num_heads=heads,
        num_kv_heads=key("attention.head_count_kv", heads),
        head_dim=key("attention.key_length", hidden // heads),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon"),
        rope_theta=key("rope.freq_base", 10000.0),
        max_position_embeddings=key("context_length"),
        tie_word_embeddings=not has_output_weight,
        sliding_window=meta.get(f"{arch}.attention.sliding_window"),
        rope_scaling=rope_scaling,
    )
