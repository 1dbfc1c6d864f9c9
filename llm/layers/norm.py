"""RMSNorm with the residual add fused in (through `kernels.dispatch`); also the per-head q/k norms.

The weight multiplies the normalized rows as stored: Gemma's (1 + w) is folded into it at load.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels import dispatch


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (tokens, hidden) -> (normed, new residual = x + residual)."""
        return dispatch.rms_norm(x, self.weight, self.eps, residual)

    def set_weight(self, weight: torch.Tensor) -> None:
        self.weight = nn.Parameter(weight.to(self.weight.device, self.weight.dtype), requires_grad=False)
