"""Batch-invariant cumulative sum over rows.

A row is walked in blocks of ``R x C`` elements (``R * C`` = the row plan's block, at most 1024).  Inside a
block, each of the ``R`` lanes scans its ``C`` consecutive elements sequentially, the lanes' totals
are scanned sequentially, and an element's result is ``(carry + lanes before it) + its lane's
prefix``; the carry then grows by the block's total.  Elements are picked out of a tile by
masked sums of one non-zero term, which are exact, so no step depends on the register layout
(``tl.cumsum`` would).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.plans import row_plan
from ascend_compile.kernels.reduce import row_launch

LANE = 16  # C: consecutive elements one lane scans
MAX_LANES = 64  # R at most: the lane totals are scanned one by one


@triton.jit
def _cumsum_rows_kernel(x_ptr, out_ptr, rows, n, stride_row, stride_col, stride_out_row, stride_out_col,
                        R: tl.constexpr, C: tl.constexpr):
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):  # one row per program off NPUs
        row = tl.cast(program_row, tl.int64)
        lanes = tl.arange(0, R)
        cols = tl.arange(0, C)[None, :]
        offsets = lanes[:, None] * C + cols
        carry = tl.sum(tl.zeros((R,), tl.float32), axis=0)
        for start in range(0, n, R * C):
            mask = start + offsets < n
            x = tl.load(x_ptr + row * stride_row + (start + offsets) * stride_col, mask=mask, other=0.0).to(tl.float32)
            running = tl.zeros((R,), tl.float32)
            within = tl.zeros((R, C), tl.float32)
            for j in range(C):
                running += tl.sum(tl.where(cols == j, x, 0.0), axis=1)
                within = tl.where(cols == j, running[:, None], within)
            before = tl.zeros((R,), tl.float32)
            block_total = tl.sum(tl.zeros((R,), tl.float32), axis=0)
            for r in range(R):
                before = tl.where(lanes == r, block_total, before)
                block_total += tl.sum(tl.where(lanes == r, running, 0.0), axis=0)
            y = (carry + before[:, None]) + within
            tl.store(out_ptr + row * stride_out_row + (start + offsets) * stride_out_col,
                     y.to(out_ptr.dtype.element_ty), mask=mask)
            carry += block_total


def bi_cumsum(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.cumsum(x, dim, dtype=dtype)`` with a batch-invariant order of additions."""
    out_dtype = dtype or x.dtype
    if x.numel() == 0 or x.dim() == 0:
        return torch.cumsum(x, dim, dtype=out_dtype)
    moved = x.movedim(dim, -1)
    x2 = moved.reshape(-1, moved.shape[-1])
    rows, n = x2.shape
    plan = row_plan(n, out_dtype, devices.of_tensor(x))
    out2 = torch.empty((rows, n), dtype=plan.store_dtype(out_dtype), device=x.device)
    grid, options = row_launch(x, rows, plan)
    _cumsum_rows_kernel[grid](x2, out2, rows, n, x2.stride(0), x2.stride(1), out2.stride(0), out2.stride(1),
                              R=min(MAX_LANES, max(1, plan.block // LANE)), C=LANE, **options)
    return out2.to(out_dtype).reshape(moved.shape).movedim(-1, dim)
