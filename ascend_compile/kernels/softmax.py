"""Batch-invariant softmax, log_softmax and logsumexp over rows.

Per row: the maximum (exact in any order), then ``sum(exp(x - max))`` with the row plan's fixed
order (lanes in order, then ``tree_sum``), then one pass that writes the result.  Exponentials are
taken in fp32 whatever the input dtype (NPUs have no bf16 ``exp``; it is also more accurate).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.plans import row_plan, row_warps
from ascend_compile.kernels.rows import as_rows, normalize_dims, shape_result
from ascend_compile.kernels.tree import tree_sum

SOFTMAX, LOG_SOFTMAX, LOGSUMEXP = 0, 1, 2


@triton.jit
def _softmax_rows_kernel(x_ptr, out_ptr, n, stride_row, stride_col, stride_out_row, stride_out_col,
                         MODE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_row
    cols = tl.arange(0, BLOCK)
    running = tl.full((BLOCK,), float("-inf"), tl.float32)
    for start in range(0, n, BLOCK):
        x = tl.load(x_row + (start + cols) * stride_col, mask=start + cols < n, other=float("-inf"))
        running = tl.maximum(running, x.to(tl.float32))
    row_max = tl.max(running, axis=0)
    # A row of -inf has no finite maximum; shifting by 0 keeps exp(-inf - 0) = 0 (torch's result).
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    lanes = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        x = tl.load(x_row + (start + cols) * stride_col, mask=start + cols < n, other=float("-inf"))
        lanes += tl.exp(x.to(tl.float32) - shift)
    total = tree_sum(lanes, BLOCK)
    if MODE == 2:
        tl.store(out_ptr + row * stride_out_row + tl.arange(0, 1),
                 (shift + tl.log(total)).to(out_ptr.dtype.element_ty))
    else:
        log_total = tl.log(total)
        out_row = out_ptr + row * stride_out_row
        for start in range(0, n, BLOCK):
            mask = start + cols < n
            x = tl.load(x_row + (start + cols) * stride_col, mask=mask, other=0.0).to(tl.float32)
            if MODE == 0:
                y = tl.exp(x - shift) / total
            else:
                y = x - shift - log_total
            tl.store(out_row + (start + cols) * stride_out_col, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x2: torch.Tensor, out2: torch.Tensor, mode: int) -> None:
    rows, n = x2.shape
    plan = row_plan(n, x2.dtype, devices.of_tensor(x2))
    _softmax_rows_kernel[(rows,)](x2, out2, n, x2.stride(0), x2.stride(1), out2.stride(0),
                                  out2.stride(1) if out2.dim() == 2 else 1,
                                  MODE=mode, BLOCK=plan.block, num_warps=row_warps(plan))


def _io_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if row_plan(1, x.dtype, devices.of_tensor(x)).fp32_io else dtype


def bi_softmax(x: torch.Tensor, dim: int, *, log: bool = False) -> torch.Tensor:
    """``torch.softmax(x, dim)`` (or ``log_softmax``) with a batch-invariant summation order."""
    if x.numel() == 0:
        return torch.log_softmax(x, dim) if log else torch.softmax(x, dim)
    dim = dim % max(x.dim(), 1)
    moved = x.movedim(dim, -1) if x.dim() else x.reshape(1)
    x2 = moved.reshape(-1, moved.shape[-1])
    out2 = torch.empty(x2.shape, dtype=_io_dtype(x, x.dtype), device=x.device)
    _launch(x2, out2, LOG_SOFTMAX if log else SOFTMAX)
    out = out2.to(x.dtype).reshape(moved.shape)
    return out.movedim(-1, dim) if x.dim() else out.reshape(())


def bi_logsumexp(x: torch.Tensor, dims: list[int] | None, keepdim: bool = False) -> torch.Tensor:
    """``torch.logsumexp(x, dims)`` with a batch-invariant summation order."""
    dims = normalize_dims(x, dims)
    x2, kept = as_rows(x, dims)
    if x2.numel() == 0:
        return torch.logsumexp(x, dims, keepdim)
    flat = torch.empty(x2.shape[0], dtype=_io_dtype(x, x.dtype), device=x.device)
    _launch(x2, flat, LOGSUMEXP)
    return shape_result(flat.to(x.dtype), x, dims, kept, keepdim)
