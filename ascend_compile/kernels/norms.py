"""Batch-invariant layer norm: one program normalises one row, statistics in fp32.

Mean, then variance of the deviations (two passes, as ``kernels/reduce.py`` sums them), then one
pass that writes ``(x - mean) * rstd * weight + bias``: one launch, the row read three times
(from L2 after the first).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.plans import row_plan
from ascend_compile.kernels.reduce import row_launch, row_total


@triton.jit
def _layer_norm_kernel(x_ptr, w_ptr, b_ptr, out_ptr, mean_ptr, rstd_ptr, rows, n, stride_row, stride_out_row, eps,
                       HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):  # one row per program off NPUs
        row = tl.cast(program_row, tl.int64)
        x_row = x_ptr + row * stride_row
        mean = row_total(x_row, n, 1, 0.0, False, BLOCK) / n
        var = row_total(x_row, n, 1, mean, True, BLOCK) / n
        rstd = 1.0 / tl.sqrt(var + eps)
        cols = tl.arange(0, BLOCK)
        for start in range(0, n, BLOCK):
            mask = start + cols < n
            y = (tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                y = y + tl.load(b_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * stride_out_row + start + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + row + tl.arange(0, 1), mean)
        tl.store(rstd_ptr + row + tl.arange(0, 1), rstd)


def bi_layer_norm(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None,
                  bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``aten.native_layer_norm``: (output, mean, rstd) with mean/rstd in fp32, shaped (..., 1, ...)."""
    n = math.prod(normalized_shape)
    stats_shape = (*x.shape[: x.dim() - len(normalized_shape)], *([1] * len(normalized_shape)))
    rows_view = x.reshape(-1, n)
    if rows_view.stride(1) != 1:
        rows_view = rows_view.contiguous()
    rows = rows_view.shape[0]
    plan = row_plan(n, x.dtype, devices.of_tensor(x))
    out = torch.empty((rows, n), dtype=plan.store_dtype(x.dtype), device=x.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows and n:
        params = [t.reshape(-1).contiguous() if t is not None else out for t in (weight, bias)]
        grid, options = row_launch(x, rows, plan)
        _layer_norm_kernel[grid](rows_view, *params, out, mean, rstd, rows, n, rows_view.stride(0), out.stride(0),
                                 eps, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK=plan.block,
                                 **options)
    return out.to(x.dtype).reshape(x.shape), mean.reshape(stats_shape), rstd.reshape(stats_shape)
