"""An RMS-normalised linear head with a softmax: every reduction in it has a batch-invariant template.

With ``rewrite_matmul`` disabled, the matmul below stays stock: an order-sensitive reduction
whose CPU kernel changes its summation order with the number of rows, planted for ``check``.
"""

from __future__ import annotations

import torch
from torch import nn

DIM, OUT = 256, 128


class RMSHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(DIM, OUT) / DIM**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        logits = torch.matmul(h, self.weight)  # the planted reduction
        return torch.softmax(logits, dim=-1)


def target() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return RMSHead(), (torch.randn(2, DIM),)
