"""Tiny random-weight models of real families, saved as safetensors folders our loader and transformers read,
and as GGUF files laid out the way llama.cpp's converter writes them: the tests that run the whole engine
without the 98 MB SmolLM2 (Triton kernels, CUDA-graph bookkeeping, every supported architecture)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

VOCAB = 512
# (transformers family, config): GQA at head_dim 64 and 128, with and without a sliding window; and the head
# sizes the attention kernels pad (Phi-3's 96) or tile smaller (Gemma 3's 256).
FAMILIES = {
    "llama-gqa-hd64": (
        "LlamaForCausalLM",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64},
    ),
    "mistral-window-hd128": (
        "MistralForCausalLM",
        {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128, "sliding_window": 20},
    ),
    "qwen2-bias-hd64": (
        "Qwen2ForCausalLM",
        {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64},
    ),
    "llama-gqa-hd96": (
        "LlamaForCausalLM",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 96},
    ),
    "mistral-window-hd256": (
        "MistralForCausalLM",
        {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256, "sliding_window": 20},
    ),
}


def tiny_hf_model(family: str, extra: dict[str, Any], *, random_norms: bool = False) -> Any:
    """A 2-layer (unless `extra` says otherwise) random-weight transformers model of `family`; with
    `random_norms`, its norm weights are random too (initialized, they would hide a misplaced norm)."""
    import transformers

    torch.manual_seed(0)
    model_class = getattr(transformers, family)
    options: dict[str, Any] = {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": VOCAB,
        "max_position_embeddings": 512, "tie_word_embeddings": False,
    }  # fmt: skip
    model = model_class(model_class.config_class(**{**options, **extra})).eval()
    for name, param in model.named_parameters():
        if name.endswith("bias"):  # random init leaves biases at zero: make them matter
            torch.nn.init.normal_(param, std=0.5)
        elif "norm" in name and random_norms:  # around their initial one (Gemma: zero)
            torch.nn.init.normal_(param, mean=param.mean().item(), std=0.2)
    return model


def save_folder(model: Any, folder: Path) -> Path:
    """`model` saved as safetensors, with a word-level tokenizer of VOCAB words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))
    return folder


def write_tiny_model(folder: Path, family: str, extra: dict[str, Any]) -> Path:
    """A 2-layer random-weight model of `family` saved as safetensors, with a word-level tokenizer."""
    return save_folder(tiny_hf_model(family, extra), folder)


def round_trip(model: Any, qtype: str) -> None:
    """Replace every matrix of `model` by its value after storage as GGUF `qtype` (F16, Q8_0, ...), so that a
    GGUF of that type and the safetensors folder hold the same numbers."""
    from gguf import GGMLQuantizationType, quants

    kind = GGMLQuantizationType[qtype]
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                stored = quants.quantize(param.numpy(), kind)
                param.copy_(torch.from_numpy(quants.dequantize(stored, kind).reshape(param.shape)))


def llama3_rope_freqs(rope: dict[str, Any], head_dim: int, theta: float) -> np.ndarray:
    """The per-frequency divisors llama.cpp's converter stores as `rope_freqs` for Llama 3.1 scaling."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    divisors = []
    for freq in 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            divisors.append(1.0)
        elif wavelen > old_len / low:
            divisors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def write_gguf(model: Any, path: Path, qtype: str = "F32") -> Path:
    """`model` written as llama.cpp's converter lays it out: its tensor names, q/k rows permuted for
    interleaved RoPE (Llama), Gemma's norm weights with the 1 added, its logit caps as metadata, RoPE scaling
    as divisor tensors
    (Llama 3.1 `rope_freqs`, Phi-3 `rope_factors_short/long`); matrices stored as `qtype`, vectors as F32."""
    import gguf

    cfg = model.config
    family = type(model).__name__
    arch = {
        "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
        "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,
        "Gemma2ForCausalLM": gguf.MODEL_ARCH.GEMMA2,
        "Gemma3ForCausalLM": gguf.MODEL_ARCH.GEMMA3,
        "Phi3ForCausalLM": gguf.MODEL_ARCH.PHI3,
    }[family]
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = dict(cfg.rope_parameters)
    rope = rope.get("full_attention", rope)  # Gemma 3: the global layers' RoPE
    rotary_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_rope_dimension_count(rotary_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"w{i}" for i in range(VOCAB)])
    writer.add_eos_token_id(1)
    if getattr(cfg, "sliding_window", None) is not None:
        writer.add_sliding_window(cfg.sliding_window)
    if getattr(cfg, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if getattr(cfg, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif kind == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_freqs(rope, head_dim, rope["rope_theta"]))
    elif kind == "longrope":
        original = rope["original_max_position_embeddings"]
        scale = cfg.max_position_embeddings / original
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        for which in ("long", "short"):
            factors = np.array(rope[f"{which}_factor"], dtype=np.float32)
            writer.add_tensor(f"rope_factors_{which}.weight", factors)

    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.float().numpy()
        if family == "LlamaForCausalLM" and name.endswith(("q_proj.weight", "k_proj.weight")):
            n = heads if name.endswith("q_proj.weight") else kv_heads
            data = data.reshape(n, 2, data.shape[0] // n // 2, *data.shape[1:]).swapaxes(1, 2)
            data = data.reshape(tensor.shape)
        if family.startswith("Gemma") and name.endswith("norm.weight"):
            data = data + 1
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if data.ndim == 2 and qtype != "F32":
            stored_type = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, stored_type), raw_dtype=stored_type)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
