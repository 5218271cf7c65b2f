"""Batch-invariant softmax, log_softmax and logsumexp over rows.

Per row: the maximum (exact in any order), then ``sum(exp(x - max))`` in the row plan's fixed
order (lanes in order, then ``tree_sum``), then one pass that writes the result.  Rows longer than
the plan's chunk (vocabulary-sized logits) are cut into chunks: one launch computes each chunk's
maximum and shifted sum in parallel programs, a second combines the chunks in chunk order --
``S = sum_c s_c * exp(m_c - M)``, a sequential loop -- and writes its chunk.  Which path a row
takes depends on its length alone.  Exponentials are taken in fp32 whatever the input dtype
(NPUs have no bf16 ``exp``; it is also more accurate).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.plans import RowPlan, row_plan
from ascend_compile.kernels.reduce import row_launch
from ascend_compile.kernels.rows import as_rows, normalize_dims, shape_result
from ascend_compile.kernels.tree import tree_sum

SOFTMAX, LOG_SOFTMAX, LOGSUMEXP = 0, 1, 2


@triton.jit
def _finite_shift(m):
    """The shift for ``exp(x - shift)``: a row of -inf has no finite maximum, and shifting by 0
    keeps ``exp(-inf) = 0`` (torch's result: nan for softmax, -inf for logsumexp)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _max_and_sum_exp(x_row, start, end, stride, BLOCK: tl.constexpr):
    """(max, sum of exp(x - shift)) over ``x_row[start:end]``, in the plan's fixed order."""
    cols = tl.arange(0, BLOCK)
    running = tl.full((BLOCK,), float("-inf"), tl.float32)
    for base in range(start, end, BLOCK):
        x = tl.load(x_row + (base + cols) * stride, mask=base + cols < end, other=float("-inf"))
        running = tl.maximum(running, x.to(tl.float32))
    m = tl.max(running, axis=0)
    shift = _finite_shift(m)
    lanes = tl.zeros((BLOCK,), dtype=tl.float32)
    for base in range(start, end, BLOCK):
        x = tl.load(x_row + (base + cols) * stride, mask=base + cols < end, other=float("-inf"))
        lanes += tl.exp(x.to(tl.float32) - shift)
    return m, tree_sum(lanes, BLOCK)


@triton.jit
def _write(x_row, out_row, start, end, stride, stride_out, shift, total, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Row outputs ``x_row[start:end]`` -> ``out_row`` given the row's shift and shifted sum."""
    cols = tl.arange(0, BLOCK)
    if MODE == 2:
        tl.store(out_row + tl.arange(0, 1), (shift + tl.log(total)).to(out_row.dtype.element_ty))
    else:
        log_total = tl.log(total)
        for base in range(start, end, BLOCK):
            mask = base + cols < end
            x = tl.load(x_row + (base + cols) * stride, mask=mask, other=0.0).to(tl.float32)
            if MODE == 0:
                y = tl.exp(x - shift) / total
            else:
                y = x - shift - log_total
            tl.store(out_row + (base + cols) * stride_out, y.to(out_row.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_rows_kernel(x_ptr, out_ptr, rows, n, stride_row, stride_col, stride_out_row, stride_out_col,
                         MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Rows of one chunk: a program does whole rows (one off NPUs)."""
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):
        row = tl.cast(program_row, tl.int64)
        x_row = x_ptr + row * stride_row
        m, total = _max_and_sum_exp(x_row, 0, n, stride_col, BLOCK)
        _write(x_row, out_ptr + row * stride_out_row, 0, n, stride_col, stride_out_col, _finite_shift(m), total,
               MODE, BLOCK)


@triton.jit
def _chunk_partials_kernel(x_ptr, max_ptr, sum_ptr, rows, n, stride_row, stride_col, num_chunks,
                           CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """(max, shifted sum) of (row, chunk) work items, chunk fastest; one item per program off NPUs."""
    for item in range(tl.program_id(0), rows * num_chunks, tl.num_programs(0)):
        row = tl.cast(item // num_chunks, tl.int64)
        chunk = item % num_chunks
        start = chunk * CHUNK
        m, total = _max_and_sum_exp(x_ptr + row * stride_row, start, tl.minimum(start + CHUNK, n), stride_col, BLOCK)
        tl.store(max_ptr + row * num_chunks + chunk + tl.arange(0, 1), m)
        tl.store(sum_ptr + row * num_chunks + chunk + tl.arange(0, 1), total)


@triton.jit
def _chunk_finish_kernel(x_ptr, out_ptr, max_ptr, sum_ptr, rows, n, stride_row, stride_col, stride_out_row,
                         stride_out_col, num_chunks, written_chunks, MODE: tl.constexpr, CHUNK: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Combine a row's chunks in chunk order, then write one of its ``written_chunks`` chunks."""
    for item in range(tl.program_id(0), rows * written_chunks, tl.num_programs(0)):
        row = tl.cast(item // written_chunks, tl.int64)
        chunk = item % written_chunks
        maxima = max_ptr + row * num_chunks
        sums = sum_ptr + row * num_chunks
        row_max = tl.load(maxima)
        for c in range(1, num_chunks):
            row_max = tl.maximum(row_max, tl.load(maxima + c))
        shift = _finite_shift(row_max)
        total = tl.zeros((1,), dtype=tl.float32)
        for c in range(0, num_chunks):
            s = tl.load(sums + c + tl.arange(0, 1))
            m = _finite_shift(tl.load(maxima + c + tl.arange(0, 1)))
            total += tl.where(s == 0.0, 0.0, s * tl.exp(m - shift))
        start = chunk * CHUNK
        _write(x_ptr + row * stride_row, out_ptr + row * stride_out_row, start, tl.minimum(start + CHUNK, n),
               stride_col, stride_out_col, shift, total, MODE, BLOCK)


def _launch(x2: torch.Tensor, out2: torch.Tensor, mode: int, plan: RowPlan) -> None:
    rows, n = x2.shape
    stride_out_col = out2.stride(1) if out2.dim() == 2 else 1
    chunks = plan.num_chunks(n)
    if chunks == 1:
        grid, options = row_launch(x2, rows, plan)
        _softmax_rows_kernel[grid](x2, out2, rows, n, x2.stride(0), x2.stride(1), out2.stride(0), stride_out_col,
                                   MODE=mode, BLOCK=plan.block, **options)
        return
    maxima = torch.empty((rows, chunks), dtype=torch.float32, device=x2.device)
    sums = torch.empty((rows, chunks), dtype=torch.float32, device=x2.device)
    grid, options = row_launch(x2, rows * chunks, plan)
    _chunk_partials_kernel[grid](x2, maxima, sums, rows, n, x2.stride(0), x2.stride(1), chunks,
                                 CHUNK=plan.chunk, BLOCK=plan.block, **options)
    written = 1 if mode == LOGSUMEXP else chunks
    grid, options = row_launch(x2, rows * written, plan)
    _chunk_finish_kernel[grid](
        x2, out2, maxima, sums, rows, n, x2.stride(0), x2.stride(1), out2.stride(0), stride_out_col, chunks, written,
        MODE=mode, CHUNK=plan.chunk, BLOCK=plan.block, **options)


def _plan(x: torch.Tensor, n: int) -> RowPlan:
    return row_plan(n, x.dtype, devices.of_tensor(x))


def bi_softmax(x: torch.Tensor, dim: int, *, log: bool = False) -> torch.Tensor:
    """``torch.softmax(x, dim)`` (or ``log_softmax``) with a batch-invariant summation order."""
    if x.numel() == 0:
        return torch.log_softmax(x, dim) if log else torch.softmax(x, dim)
    dim = dim % max(x.dim(), 1)
    moved = x.movedim(dim, -1) if x.dim() else x.reshape(1)
    x2 = moved.reshape(-1, moved.shape[-1])
    plan = _plan(x, x2.shape[1])
    out2 = torch.empty(x2.shape, dtype=plan.store_dtype(x.dtype), device=x.device)
    _launch(x2, out2, LOG_SOFTMAX if log else SOFTMAX, plan)
    out = out2.to(x.dtype).reshape(moved.shape)
    return out.movedim(-1, dim) if x.dim() else out.reshape(())


def bi_logsumexp(x: torch.Tensor, dims: list[int] | None, keepdim: bool = False) -> torch.Tensor:
    """``torch.logsumexp(x, dims)`` with a batch-invariant summation order."""
    dims = normalize_dims(x, dims)
    x2, kept = as_rows(x, dims)
    if x2.numel() == 0:
        return torch.logsumexp(x, dims, keepdim)
    plan = _plan(x, x2.shape[1])
    flat = torch.empty(x2.shape[0], dtype=plan.store_dtype(x.dtype), device=x.device)
    _launch(x2, flat, LOGSUMEXP, plan)
    return shape_result(flat.to(x.dtype), x, dims, kept, keepdim)
