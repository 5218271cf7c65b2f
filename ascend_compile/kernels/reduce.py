"""Batch-invariant sums over rows: ``sum``, ``mean``, ``var``/``std``/``var_mean``.

One program reduces one row (one kept index) of the ``(rows, n)`` view.  ``BLOCK`` lanes walk the
row block by block, each lane adding its elements in order, and ``tree_sum`` adds the lanes in a
fixed pairwise order; ``BLOCK`` comes from the row plan (n, dtype, device kind), so a row's bits do
not depend on how many rows there are.  Programs loop over rows with the grid's stride, so that
NPUs run one program per vector core (``row_launch``); elsewhere each program takes one row.
Variance is two-pass (mean first, then squared deviations): as exact as the data allows and free
of the cancellation of one-pass formulas.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.plans import RowPlan, grid_programs, launch_options, row_plan, row_warps
from ascend_compile.kernels.rows import as_rows, normalize_dims, shape_result
from ascend_compile.kernels.tree import tree_sum


@triton.jit
def row_total(x_ptr, n, stride, center, CENTERED: tl.constexpr, BLOCK: tl.constexpr):
    """Sum of ``x`` (or of ``(x - center)**2``) over one row, in the plan's fixed order."""
    lanes = tl.zeros((BLOCK,), dtype=tl.float32)
    cols = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(x_ptr + (start + cols) * stride, mask=mask, other=0.0).to(tl.float32)
        if CENTERED:
            d = tl.where(mask, x - center, 0.0)
            x = d * d
        lanes += x
    return tree_sum(lanes, BLOCK)


@triton.jit
def _sum_rows_kernel(x_ptr, out_ptr, rows, n, stride_row, stride_col, divisor, BLOCK: tl.constexpr):
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):  # one row per program off NPUs
        row = tl.cast(program_row, tl.int64)
        total = row_total(x_ptr + row * stride_row, n, stride_col, 0.0, False, BLOCK) / divisor
        tl.store(out_ptr + row + tl.arange(0, 1), total.to(out_ptr.dtype.element_ty))


@triton.jit
def _var_mean_rows_kernel(x_ptr, var_ptr, mean_ptr, rows, n, stride_row, stride_col, dof, BLOCK: tl.constexpr):
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):
        row = tl.cast(program_row, tl.int64)
        x_row = x_ptr + row * stride_row
        mean = row_total(x_row, n, stride_col, 0.0, False, BLOCK) / n
        m2 = row_total(x_row, n, stride_col, mean, True, BLOCK)
        tl.store(var_ptr + row + tl.arange(0, 1), (m2 / dof).to(var_ptr.dtype.element_ty))
        tl.store(mean_ptr + row + tl.arange(0, 1), mean.to(mean_ptr.dtype.element_ty))


def _plan(x: torch.Tensor, n: int) -> RowPlan:
    return row_plan(n, x.dtype, devices.of_tensor(x))


def row_launch(x: torch.Tensor, work: int, plan: RowPlan, fp_fusion: bool = True,
               overlap: bool = False, num_warps: int | None = None) -> tuple[tuple[int], dict[str, int | bool]]:
    """(grid, launch options) of a row kernel over ``work`` rows (or row chunks): one program each
    on GPUs and the CPU, one per vector core at most on NPUs, which loop over the rest.
    ``overlap``: the kernel takes an ``OVERLAP`` flag (``launch_options``); ``num_warps``: a program's
    warps when its tile is not one row of the plan (``row_warps``)."""
    device = devices.of_tensor(x)
    return (grid_programs(work, device),), launch_options(device, num_warps or row_warps(plan), fp_fusion=fp_fusion,
                                                          overlap=overlap)


def _empty_rows(rows: int, dtype: torch.dtype, plan: RowPlan, device: torch.device) -> torch.Tensor:
    return torch.empty(rows, dtype=plan.store_dtype(dtype), device=device)


def bi_sum(x: torch.Tensor, dims: list[int] | None, keepdim: bool = False, dtype: torch.dtype | None = None,
           *, mean: bool = False) -> torch.Tensor:
    """``x.sum(dims)`` (or ``x.mean(dims)``) with a batch-invariant summation order."""
    out_dtype = dtype or x.dtype
    dims = normalize_dims(x, dims)
    rows_view, kept = as_rows(x, dims)
    rows, n = rows_view.shape
    if n == 0 or rows == 0:  # nothing to order: aten's own empty-reduction semantics
        reduce = torch.mean if mean else torch.sum
        return reduce(x, dim=dims, keepdim=keepdim, dtype=out_dtype)
    plan = _plan(rows_view, n)
    flat = _empty_rows(rows, out_dtype, plan, x.device)
    grid, options = row_launch(x, rows, plan)
    _sum_rows_kernel[grid](rows_view, flat, rows, n, rows_view.stride(0), rows_view.stride(1),
                           float(n) if mean else 1.0, BLOCK=plan.block, **options)
    return shape_result(flat.to(out_dtype), x, dims, kept, keepdim)


def bi_var_mean(x: torch.Tensor, dims: list[int] | None, correction: float = 1.0,
                keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.var_mean(x, dims, correction=...)`` with a batch-invariant summation order."""
    dims = normalize_dims(x, dims)
    rows_view, kept = as_rows(x, dims)
    rows, n = rows_view.shape
    if n == 0 or rows == 0:
        return torch.var_mean(x, dim=dims, correction=correction, keepdim=keepdim)
    plan = _plan(rows_view, n)
    var, mean = _empty_rows(rows, x.dtype, plan, x.device), _empty_rows(rows, x.dtype, plan, x.device)
    grid, options = row_launch(x, rows, plan)
    _var_mean_rows_kernel[grid](rows_view, var, mean, rows, n, rows_view.stride(0), rows_view.stride(1),
                                max(n - correction, 0.0), BLOCK=plan.block, **options)
    return (shape_result(var.to(x.dtype), x, dims, kept, keepdim),
            shape_result(mean.to(x.dtype), x, dims, kept, keepdim))
