"""A generic LoRA training loop on (prompt, target) token pairs for a transformers causal LM.

The base weights stay frozen (in bfloat16 where the hardware computes in it); each targeted projection
gets a trainable float32 pair `A` (rank, in), `B` (out, rank) with `B` starting at zero, so training starts
from the base model exactly. The loss is the cross-entropy of the target tokens only, and the output head
is evaluated only at the positions that predict them (the vocabulary projection of every prompt position
would cost as much as the rest of a small model). Examples come in groups that share a prompt prefix (in
RAG: several questions asked of the same passages), packed into one forward pass without padding, where a
block mask keeps each example to the prefix and itself, which costs the passages once instead of once per
question; gradients are accumulated over at least `batch_size` examples. Training starts from a new adapter
(`B` zero) or goes on from the (A, B) pairs of an earlier one. The result is the trained (A, B) pairs, keyed
like `llm.lora.adapter` expects.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm.cpu import native_bf16
from llm.lora.adapter import PROJECTIONS

Pair = tuple[torch.Tensor, torch.Tensor]
_MODULE = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = PROJECTIONS
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 8  # examples per optimizer step (accumulated, one forward pass each)
    warmup_share: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class TrainExample:
    prompt_ids: list[int]
    target_ids: list[int]


@dataclass(frozen=True)
class TrainProgress:
    step: int  # examples seen
    total: int
    loss: float  # running mean over the last optimizer steps
    examples_per_s: float


class LoraLinear(nn.Module):
    """`base(x) + scale * (x @ A.T) @ B.T`; only A and B are trained."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + delta * self.scale


def attach_lora(model: nn.Module, config: TrainConfig) -> dict[tuple[int, str], LoraLinear]:
    """Freeze `model` and wrap its targeted projections; returns the wrappers by (layer, projection)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    wrapped: dict[tuple[int, str], LoraLinear] = {}
    for name, module in list(model.named_modules()):
        match = _MODULE.search(name)
        if match is None or match[2] not in config.target_modules or not isinstance(module, nn.Linear):
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        lora = LoraLinear(module, config.rank, config.alpha / config.rank)
        setattr(parent, match[2], lora)
        wrapped[(int(match[1]), match[2])] = lora
    if not wrapped:
        raise ValueError(f"no linear layer of the model is named like {', '.join(config.target_modules)}")
    return wrapped


def start_from(wrapped: dict[tuple[int, str], LoraLinear], pairs: dict[tuple[int, str], Pair]) -> None:
    """Give the wrappers the unscaled (A, B) `pairs` of an earlier adapter, which must adapt the same
    projections with the same rank; raises ValueError naming the first that does not fit."""
    if set(pairs) != set(wrapped):
        missing = sorted(set(wrapped) ^ set(pairs))[0]
        raise ValueError(f"the adapter to go on from does not adapt the same projections (layer {missing[0]} "
                         f"{missing[1]} is in only one of them)")  # fmt: skip
    with torch.no_grad():
        for key, module in wrapped.items():
            a, b = pairs[key]
            if a.shape != module.lora_A.shape or b.shape != module.lora_B.shape:
                raise ValueError(
                    f"layer {key[0]} {key[1]}: the adapter to go on from has A {tuple(a.shape)} and B "
                    f"{tuple(b.shape)}, training needs {tuple(module.lora_A.shape)} and "
                    f"{tuple(module.lora_B.shape)}"
                )
            module.lora_A.copy_(a)
            module.lora_B.copy_(b)


def trained_weights(wrapped: dict[tuple[int, str], LoraLinear]) -> dict[tuple[int, str], Pair]:
    """The trained (A, B) pairs, unscaled, on the CPU."""
    return {key: (m.lora_A.detach().cpu(), m.lora_B.detach().cpu()) for key, m in wrapped.items()}


def compute_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA and on CPUs with native bfloat16 matmuls (twice the speed of float32 there), else
    float32."""
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16() else torch.float32


def shared_prefix(prompts: Sequence[list[int]]) -> int:
    """Length of the prefix all `prompts` share, leaving each at least its last token of its own."""
    length = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for prompt in prompts[1:]:
        length = next((i for i in range(length) if prompt[i] != first[i]), length)
    return length


def group_loss(model: Any, group: Sequence[TrainExample], device: torch.device) -> torch.Tensor:
    """Sum over the group's examples of the mean cross-entropy of each target given its prompt.

    The examples share a prompt prefix, which is computed once: each continuation (the rest of its prompt
    and its target) attends to the prefix and to itself only, with positions that go on from the prefix,
    so every example gets the logits of a pass of its own (checked in tests/llm/test_lora.py).
    """
    shared = shared_prefix([e.prompt_ids for e in group])
    ids = list(group[0].prompt_ids[:shared])
    positions = list(range(shared))
    spans = []  # (first row of the continuation, its length)
    for example in group:
        continuation = example.prompt_ids[shared:] + example.target_ids[:-1]
        spans.append((len(ids), len(continuation)))
        ids += continuation
        positions += range(shared, shared + len(continuation))
    total = len(ids)
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    allowed[:shared, :shared] = torch.ones(shared, shared, dtype=torch.bool, device=device).tril()
    for start, length in spans:
        allowed[start : start + length, :shared] = True
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed[start : start + length, start : start + length] = causal
    hidden = model.model(
        input_ids=torch.tensor([ids], device=device),
        attention_mask=allowed[None, None],
        position_ids=torch.tensor([positions], device=device),
    ).last_hidden_state[0]  # (tokens, hidden)
    loss = hidden.new_zeros((), dtype=torch.float32)
    for example, (start, _) in zip(group, spans, strict=True):
        # The row of the last prompt token predicts the first target token; the output head runs only there
        # and at the target tokens that follow.
        first = start + len(example.prompt_ids) - shared - 1
        logits = model.lm_head(hidden[first : first + len(example.target_ids)]).float()
        loss = loss + F.cross_entropy(logits, torch.tensor(example.target_ids, device=device))
    return loss


def train_lora(
    model: Any,
    groups: Sequence[Sequence[TrainExample]],
    config: TrainConfig,
    progress: Callable[[TrainProgress], None] | None = None,
    initial: dict[tuple[int, str], Pair] | None = None,
) -> dict[tuple[int, str], LoraLinear]:
    """Attach LoRA to `model` (a transformers causal LM with `.model` and `.lm_head`), starting from the
    unscaled (A, B) pairs `initial` when given, and train it on `groups` of examples that share a prompt
    prefix (a group may hold one example); the model keeps the trained wrappers (ready for evaluation),
    which are also returned. An optimizer step follows every `batch_size` examples or more (whole groups)."""
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    model.to(compute_dtype(device))  # the frozen base; the LoRA weights are created in float32
    wrapped = attach_lora(model, config)
    if initial is not None:
        start_from(wrapped, initial)
    parameters = [p for m in wrapped.values() for p in (m.lora_A, m.lora_B)]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    shuffle = random.Random(config.seed)
    order = [i for _ in range(config.epochs) for i in shuffle.sample(range(len(groups)), len(groups))]
    batches: list[list[int]] = [[]]
    for index in order:
        if sum(len(groups[i]) for i in batches[-1]) >= config.batch_size:
            batches.append([])
        batches[-1].append(index)
    total_examples = sum(len(groups[i]) for i in order)
    warmup = max(1, int(len(batches) * config.warmup_share))

    def rate(step: int) -> float:  # linear warm-up, then linear decay to zero
        remaining = len(batches) - step
        return (step + 1) / warmup if step < warmup else max(0.0, remaining / max(1, len(batches) - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    started = time.perf_counter()
    recent: list[float] = []
    seen = 0
    for batch in batches:
        examples = sum(len(groups[i]) for i in batch)
        total = 0.0
        for index in batch:
            loss = group_loss(model, groups[index], device) / examples
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [total])[-20:]
        seen += examples
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(TrainProgress(seen, total_examples, sum(recent) / len(recent), seen / elapsed))
    model.eval()
    return wrapped
