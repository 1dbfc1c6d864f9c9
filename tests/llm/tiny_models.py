"""Tiny random-weight models of real families, saved as safetensors folders our loader and transformers read:
the tests that run the whole engine without the 98 MB SmolLM2 (Triton kernels, CUDA-graph bookkeeping)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 512
# (transformers family, config): GQA at head_dim 64 and 128, with and without a sliding window.
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
}


def write_tiny_model(folder: Path, family: str, extra: dict[str, object]) -> Path:
    """A 2-layer random-weight model of `family` saved as safetensors, with a word-level tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config_class = getattr(transformers, family.replace("ForCausalLM", "Config"))
    config = config_class(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, vocab_size=VOCAB,
        max_position_embeddings=512, tie_word_embeddings=False, **extra,
    )  # fmt: skip
    model = getattr(transformers, family)(config).eval()
    for module in model.modules():  # random init leaves biases at zero: make them matter
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.5)
    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))
    return folder
