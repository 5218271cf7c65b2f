"""A model with one of everything ``ascend-bi dump`` reports.

- ``x.mean(dim=1)`` reduces a middle dim: its row template copies the input on every call;
- ``pooled[:, ::2]`` has no unit-stride dim: ``fix_contiguity`` copies it before the matmul template;
- ``prod`` is order-sensitive and has no template: it is left stock (strict off) and reported.
"""

from __future__ import annotations

import torch
from torch import nn


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 24) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=1)
        h = pooled[:, ::2] @ self.weight
        scale = h.tanh().add(1.5).prod(-1, keepdim=True)  # no template
        return h * scale


def target() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Mixed(), (torch.randn(2, 6, 32),)
