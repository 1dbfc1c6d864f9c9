"""A random LoRA adapter of SmolLM2-135M's shapes in the PEFT format, for tests of adapter serving."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.lora.adapter import save_adapter

# SmolLM2-135M: 30 layers, hidden 576, 9 query and 3 key/value heads of 64, MLP 1536.
SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "v_proj": (192, 576),
    "o_proj": (576, 576),
    "gate_proj": (1536, 576),
    "up_proj": (1536, 576),
    "down_proj": (576, 1536),
}


def write_random_adapter(
    folder: Path, rank: int = 8, scale: float = 0.05, seed: int = 0,
    shapes: dict[str, tuple[int, int]] = SHAPES, layers: int = 30,
) -> Path:  # fmt: skip
    """Non-zero A and B on all seven projections of every layer, so the adapter visibly changes logits
    (SmolLM2-135M's shapes unless `shapes` and `layers` say otherwise)."""
    generator = torch.Generator().manual_seed(seed)

    def random(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=generator) * scale

    weights = {
        (layer, name): (random(rank, cols), random(rows, rank))
        for layer in range(layers)
        for name, (rows, cols) in shapes.items()
    }
    return save_adapter(folder, weights, rank=rank, alpha=2.0 * rank, base_model="SmolLM2-135M-Instruct")
