"""TARGET functions that break the (model, example_inputs) contract, for the CLI's usage errors."""

from __future__ import annotations

import torch


def not_a_pair() -> torch.nn.Module:
    return torch.nn.Linear(4, 4)


def mixed_batches() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    return torch.nn.Bilinear(4, 4, 2), (torch.randn(2, 4), torch.randn(3, 4))


def raises() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    raise RuntimeError("no weights here")
