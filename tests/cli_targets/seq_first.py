"""A model whose tensors hold the batch on dim 1, (sequence, batch, features), as
``nn.MultiheadAttention(batch_first=False)`` and RNNs take them; it mixes along the sequence."""

from __future__ import annotations

import torch
from torch import nn


class SeqFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A buffer: stock Inductor on the CPU computes a product with a parameter (under no_grad) the same way
        # at every batch size here, and one with a buffer not; the negative control needs the latter.
        self.register_buffer("weight", torch.randn(32, 16) / 32**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x @ self.weight, dim=0)  # over the sequence: positions are not independent


def target() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return SeqFirst(), (torch.randn(6, 2, 32),)


def batch_first_in_sequence_first_out() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Takes (batch, sequence, features) and returns (sequence, batch, features): no one dim holds the batch."""
    return (lambda x: x.transpose(0, 1) * 2), (torch.randn(2, 6, 4),)
