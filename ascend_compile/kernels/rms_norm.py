"""Batch-invariant RMSNorm in one launch, with the residual add before it when there is one.

transformers writes RMSNorm out: ``h = x.float(); y = h * rsqrt(mean(h**2) + eps);
weight * y.to(x.dtype)``.  Run as traced that is an elementwise kernel, the row template's mean
and another elementwise kernel -- three launches a norm, four with the residual add, in a
decode step made of little else.  This kernel computes the same values with the same
roundings in one pass over the row: ``h = x + residual`` rounded to x's dtype (and stored, it is
the next residual), squares summed by the row plan's lanes and ``tree_sum`` (the order of
``kernels/reduce.py``, fixed by the row length, dtype and device kind), divided by n, then ``y``
rounded to x's dtype and multiplied by the weight.  Floating-point contraction is off so that a
square is rounded before it is added, as it is when the kernels are separate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.plans import row_plan
from ascend_compile.kernels.reduce import row_launch
from ascend_compile.kernels.rounding import TL_DTYPES, round_to
from ascend_compile.kernels.tree import tree_sum


@triton.jit
def _row_values(x_ptr, r_ptr, offsets, mask, DTYPE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                EMULATE_BF16: tl.constexpr):
    h = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h = round_to(h + tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32), DTYPE, EMULATE_BF16)
    return h


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr, rows, n, stride_x, stride_r, stride_out, eps,
                     DTYPE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     EMULATE_BF16: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):  # one row per program off NPUs
        row = tl.cast(program_row, tl.int64)
        lanes = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, n, BLOCK):
            mask = start + cols < n
            h = _row_values(x_ptr + row * stride_x, r_ptr + row * stride_r, start + cols, mask, DTYPE,
                            HAS_RESIDUAL, EMULATE_BF16)
            if HAS_RESIDUAL:
                tl.store(sum_ptr + row * stride_out + start + cols, h.to(sum_ptr.dtype.element_ty), mask=mask)
            lanes += h * h
        scale = tl.math.rsqrt(tree_sum(lanes, BLOCK) / n + eps)
        for start in range(0, n, BLOCK):
            mask = start + cols < n
            h = _row_values(x_ptr + row * stride_x, r_ptr + row * stride_r, start + cols, mask, DTYPE,
                            HAS_RESIDUAL, EMULATE_BF16)
            y = round_to(h * scale, DTYPE, EMULATE_BF16)
            if HAS_WEIGHT:
                weight = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
                y = round_to(weight * y, DTYPE, EMULATE_BF16)
            tl.store(out_ptr + row * stride_out + start + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    view = t.reshape(-1, n)
    return view if view.stride(1) == 1 else view.contiguous()


def bi_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight * rms_normalize(h), h)`` over the last dim with ``h = x + residual`` (or ``x``),
    every intermediate rounded as transformers' RMSNorm rounds it; ``None`` for ``h`` without a residual."""
    n = x.shape[-1]
    device = devices.of_tensor(x)
    plan = row_plan(n, x.dtype, device)
    rows_x = _rows(x, n)
    rows_r = _rows(residual, n) if residual is not None else rows_x
    store = plan.store_dtype(x.dtype)  # fp32 under the interpreter; values are already rounded
    out = torch.empty(rows_x.shape, dtype=store, device=x.device)
    total = torch.empty_like(out) if residual is not None else out
    rows = rows_x.shape[0]
    if rows and n:
        grid, options = row_launch(x, rows, plan, fp_fusion=False)
        _rms_norm_kernel[grid](rows_x, rows_r, weight if weight is not None else rows_x, out, total, rows, n,
                               rows_x.stride(0), rows_r.stride(0), out.stride(0), eps,
                               DTYPE=TL_DTYPES[x.dtype], HAS_RESIDUAL=residual is not None,
                               HAS_WEIGHT=weight is not None,
                               EMULATE_BF16=plan.fp32_io and x.dtype == torch.bfloat16, BLOCK=plan.block, **options)
    out = out.to(x.dtype).reshape(x.shape)
    return out, (total.to(x.dtype).reshape(x.shape) if residual is not None else None)
