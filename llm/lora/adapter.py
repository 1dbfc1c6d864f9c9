"""LoRA adapters in the PEFT format: `adapter_config.json` + `adapter_model.safetensors`.

An adapter adds `scale * B @ A` to some linear layers, with `A` (rank, in) and `B` (out, rank) and `scale =
lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA). PEFT names the tensors after the module they adapt,
e.g. `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`; this module reads and writes those
names for the seven projections of a llama-style decoder, and reads adapters of the fused `qkv_proj` and
`gate_up_proj` of Phi-3-style checkpoints, and nothing else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Phi-3 checkpoints fuse q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; their adapters adapt those.
FUSED_PROJECTIONS = ("qkv_proj", "gate_up_proj")
ADAPTABLE = PROJECTIONS + FUSED_PROJECTIONS
MLP_PROJECTIONS = frozenset(PROJECTIONS[4:])
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")


class AdapterError(ValueError):
    """An adapter folder that is missing, malformed, or does not fit the model it is loaded on."""


@dataclass
class LoraAdapter:
    """One adapter's weights: (layer, projection) -> (A, B) in float32, with B already multiplied by the
    scale, so that applying it is `y += B @ (A @ x)`."""

    name: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    scale: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def num_layers(self) -> int:
        return 1 + max((layer for layer, _ in self.weights), default=-1)

    def unscaled_weights(self) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        """(A, B) as the file holds them, B not multiplied by the scale: what training goes on from."""
        return {key: (a, b / self.scale) for key, (a, b) in self.weights.items()}


def scaling(config: dict) -> float:
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def load_adapter(path: str | Path, name: str | None = None) -> LoraAdapter:
    """Read a PEFT LoRA folder; raises AdapterError naming the file at fault."""
    from safetensors.torch import load_file

    folder = Path(path)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterError(f"{folder}: not a LoRA adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        rank = int(config["r"])
        peft_type = config.get("peft_type", "LORA")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AdapterError(f"{config_path}: unreadable adapter config ({error})") from error
    if peft_type != "LORA" or rank < 1:
        raise AdapterError(f"{config_path}: only LoRA (r >= 1) is supported, not {peft_type} r={rank}")
    if config.get("fan_in_fan_out"):
        raise AdapterError(f"{config_path}: fan_in_fan_out adapters (Conv1D models) are not supported")
    scale = scaling(config)
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:
        raise AdapterError(f"{weights_path}: unreadable safetensors file ({error})") from error
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise AdapterError(
                f"{weights_path}: tensor {key!r} adapts a module other than {', '.join(ADAPTABLE)}"
            )
        layer, module, half = int(match[1]), match[2], match[3]
        if module not in ADAPTABLE:
            raise AdapterError(f"{weights_path}: cannot adapt {module!r}, only {', '.join(ADAPTABLE)}")
        halves.setdefault((layer, module), {})[half] = tensor.float()
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, module), pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights_path}: layer {layer} {module} lacks lora_A or lora_B")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"{weights_path}: layer {layer} {module}: A {tuple(a.shape)} and B {tuple(b.shape)} "
                "are not a LoRA pair"
            )
        weights[(layer, module)] = (a.contiguous(), (b * scale).contiguous())
    if not weights:
        raise AdapterError(f"{weights_path}: holds no LoRA weights")
    modules = tuple(sorted({module for _, module in weights}, key=ADAPTABLE.index))
    alpha = float(config.get("lora_alpha", rank))
    return LoraAdapter(name or folder.name, rank, alpha, modules, scale, weights)


def save_adapter(
    path: str | Path,
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
    *,
    rank: int,
    alpha: float,
    base_model: str,
    extra: dict | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write unscaled (A, B) pairs as a PEFT LoRA folder that `peft.PeftModel.from_pretrained` loads, in
    float16 by default (half the size of float32; LoRA factors are small numbers well inside its range)."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, module), (a, b) in sorted(weights.items()):
        block = "mlp" if module in MLP_PROJECTIONS else "self_attn"
        prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
        tensors[f"{prefix}.lora_A.weight"] = a.detach().to(dtype).contiguous().cpu()
        tensors[f"{prefix}.lora_B.weight"] = b.detach().to(dtype).contiguous().cpu()
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted({module for _, module in weights}, key=PROJECTIONS.index),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
        **(extra or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder
