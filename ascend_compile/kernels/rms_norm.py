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

Models round RMSNorm at other points too, and a fused kernel must keep each model's own
roundings: the ``NormForm`` flags say which, read from the model's graph (never from the batch).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.addresses import element_distance
from ascend_compile.kernels.overlap import wait_for_inputs
from ascend_compile.kernels.plans import RowPlan, row_plan
from ascend_compile.kernels.reduce import row_launch
from ascend_compile.kernels.rounding import TL_DTYPES, round_to
from ascend_compile.kernels.tree import tree_sum


class NormForm(enum.IntFlag):
    """Where an RMSNorm rounds, besides the normalized value ``h * rsqrt(mean(h**2) + eps)``, which is
    always fp32."""

    #: transformers' Llama/Qwen form: ``weight * y.to(dtype)``, ``h = x + residual`` rounded to x's dtype
    #: (also vLLM's with a weight of x's dtype, and ``F.rms_norm``'s composite).
    LLAMA = 0

    #: ``(y * weight).to(dtype)``: the weight multiplies the fp32 value, one rounding at the end
    #: (Gemma, torch's ``_fused_rms_norm`` decomposition, vLLM with an fp32 weight).
    WEIGHT_FP32 = 1
    #: The weight is ``1 + w``, added in fp32 (Gemma's offset weights; with ``WEIGHT_FP32``).
    WEIGHT_PLUS_ONE = 2
    #: The residual is added in fp32 and the norm reads that unrounded sum; the sum returned (the next
    #: residual) is rounded (vLLM's ``fused_add_rms_norm``).
    FP32_SUM = 4
    #: With ``FP32_SUM``: the residual is fp32 and so is the sum returned, unrounded (a residual stream kept in
    #: fp32; vLLM's norms after Inductor drops the sum's round trip through the input dtype, as torch 2.11 does).
    FP32_RESIDUAL = 8


#: The forms of a norm without a residual of its own: where the weight multiplies and whether it is ``1 + w``
#: (the query/key norms of the rotation launches, a sandwich's first norm).
WEIGHT_FORMS = NormForm.WEIGHT_FP32 | NormForm.WEIGHT_PLUS_ONE


@triton.jit
def _rms_scale(x_row, n, eps, BLOCK: tl.constexpr):
    """``rsqrt(mean(x**2) + eps)`` of a row, its squares summed as ``_rms_norm_kernel`` sums a row's."""
    cols = tl.arange(0, BLOCK)
    lanes = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        h = tl.load(x_row + start + cols, mask=start + cols < n, other=0.0).to(tl.float32)
        lanes += h * h
    return tl.math.rsqrt(tree_sum(lanes, BLOCK) / n + eps)


@triton.jit
def rms_normalized(h, scale, w_row, offsets, mask, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr,
                   HAS_WEIGHT: tl.constexpr, WEIGHT_FP32: tl.constexpr, WEIGHT_PLUS_ONE: tl.constexpr):
    """The norm's output values of ``h`` (fp32) scaled by ``scale``, rounded where the form says: every
    RMSNorm kernel rounds through here (``kernels/rope.py``'s query/key norms too)."""
    y = h * scale
    if not WEIGHT_FP32:
        y = round_to(y, DTYPE, EMULATE_BF16)
    if HAS_WEIGHT:
        weight = tl.load(w_row + offsets, mask=mask, other=0.0).to(tl.float32)
        if WEIGHT_PLUS_ONE:
            weight = weight + 1.0
        y = round_to(weight * y, DTYPE, EMULATE_BF16)
    elif WEIGHT_FP32:
        y = round_to(y, DTYPE, EMULATE_BF16)
    return y


@triton.jit
def _row_values(x_ptr, r_ptr, offsets, mask, r_scale, rw_ptr, DTYPE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                EMULATE_BF16: tl.constexpr, FP32_SUM: tl.constexpr, R_NORM: tl.constexpr,
                R_WEIGHT_FP32: tl.constexpr, R_WEIGHT_PLUS_ONE: tl.constexpr):
    """``x + residual`` rounded as the form says (``x`` without a residual); ``R_NORM``: the residual
    operand is a norm's output of the row at ``r_ptr`` (scale ``r_scale``, weight ``rw_ptr``)."""
    h = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if R_NORM:
            r = rms_normalized(r, r_scale, rw_ptr, offsets, mask, DTYPE, EMULATE_BF16, True, R_WEIGHT_FP32,
                               R_WEIGHT_PLUS_ONE)
        h = h + r
        if not FP32_SUM:
            h = round_to(h, DTYPE, EMULATE_BF16)
    return h


@triton.jit
def _summed_values(x_row, r_row, sum_row, offsets, mask, r_scale, rw_ptr, DTYPE: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr, EMULATE_BF16: tl.constexpr, FP32_SUM: tl.constexpr,
                   FP32_RESIDUAL: tl.constexpr, R_NORM: tl.constexpr, R_WEIGHT_FP32: tl.constexpr,
                   R_WEIGHT_PLUS_ONE: tl.constexpr):
    """``_row_values``, with a residual also stored at ``sum_row`` (the next residual) as the form rounds it."""
    h = _row_values(x_row, r_row, offsets, mask, r_scale, rw_ptr, DTYPE, HAS_RESIDUAL, EMULATE_BF16, FP32_SUM, R_NORM,
                    R_WEIGHT_FP32, R_WEIGHT_PLUS_ONE)
    if HAS_RESIDUAL:
        total = round_to(h, DTYPE, EMULATE_BF16) if FP32_SUM and not FP32_RESIDUAL else h
        tl.store(sum_row + offsets, total.to(sum_row.dtype.element_ty), mask=mask)
    return h


@triton.jit
def _store_normalized(h, scale, w_row, out_row, offsets, mask, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr,
                      HAS_WEIGHT: tl.constexpr, WEIGHT_FP32: tl.constexpr, WEIGHT_PLUS_ONE: tl.constexpr):
    y = rms_normalized(h, scale, w_row, offsets, mask, DTYPE, EMULATE_BF16, HAS_WEIGHT, WEIGHT_FP32, WEIGHT_PLUS_ONE)
    tl.store(out_row + offsets, y.to(out_row.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr, rows, n, stride_x, stride_r, stride_out, eps,
                     rows1, x_off2, w_off2, out_off2, stride_x2, eps2, rw_ptr, r_eps,
                     DTYPE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     EMULATE_BF16: tl.constexpr, BLOCK: tl.constexpr, PAIR: tl.constexpr,
                     WEIGHT_FP32: tl.constexpr = False, WEIGHT_PLUS_ONE: tl.constexpr = False,
                     FP32_SUM: tl.constexpr = False, FP32_RESIDUAL: tl.constexpr = False,
                     R_NORM: tl.constexpr = False, R_WEIGHT_FP32: tl.constexpr = False,
                     R_WEIGHT_PLUS_ONE: tl.constexpr = False, ONE_BLOCK: tl.constexpr = False,
                     OVERLAP: tl.constexpr = False):
    """Rows of ``bi_rms_norm`` (``bi_rms_norm_pair`` when ``PAIR``; ``bi_rms_norm_sandwich`` when
    ``R_NORM``: the residual operand is the norm, weight ``rw_ptr`` and epsilon ``r_eps``, of the rows
    at ``r_ptr``, computed here as ``bi_rms_norm`` computes it).  ``ONE_BLOCK``: a row fits the lanes
    (``_block_options``), so its values are loaded (and the residual added) once, not again for the output."""
    if OVERLAP:  # launched early (overlap.py)
        wait_for_inputs()
    cols = tl.arange(0, BLOCK)
    for program_row in range(tl.program_id(0), rows, tl.num_programs(0)):  # one row per program off NPUs
        row = tl.cast(program_row, tl.int64)
        x_row = x_ptr + row * stride_x
        w_row = w_ptr
        out_row = out_ptr + row * stride_out
        row_eps = eps
        if PAIR:  # rows from rows1 on are the second input's, found by their distance from the first's
            second = row >= rows1
            local = tl.where(second, row - rows1, row)
            x_row = x_ptr + tl.where(second, x_off2 + local * stride_x2, local * stride_x)
            w_row = w_ptr + tl.where(second, w_off2, 0)
            out_row = out_ptr + tl.where(second, out_off2, 0) + local * stride_out
            row_eps = tl.where(second, eps2, eps)
        r_scale = 1.0
        if R_NORM:
            r_scale = _rms_scale(r_ptr + row * stride_r, n, r_eps, BLOCK)
        r_row, sum_row = r_ptr + row * stride_r, sum_ptr + row * stride_out
        lanes = tl.zeros((BLOCK,), dtype=tl.float32)
        if ONE_BLOCK:  # the row fits the lanes: its values stay in registers for the output
            h = _summed_values(x_row, r_row, sum_row, cols, cols < n, r_scale, rw_ptr, DTYPE, HAS_RESIDUAL,
                               EMULATE_BF16, FP32_SUM, FP32_RESIDUAL, R_NORM, R_WEIGHT_FP32, R_WEIGHT_PLUS_ONE)
            for _ in range(0, n, BLOCK):  # once; in straight-line code Triton 3.6 moves the tree's layout
                lanes += h * h  # conversion to the row's load and squares every element in every thread
        else:
            for start in range(0, n, BLOCK):
                h = _summed_values(x_row, r_row, sum_row, start + cols, start + cols < n, r_scale, rw_ptr, DTYPE,
                                   HAS_RESIDUAL, EMULATE_BF16, FP32_SUM, FP32_RESIDUAL, R_NORM, R_WEIGHT_FP32,
                                   R_WEIGHT_PLUS_ONE)
                lanes += h * h
        scale = tl.math.rsqrt(tree_sum(lanes, BLOCK) / n + row_eps)
        if ONE_BLOCK:
            _store_normalized(h, scale, w_row, out_row, cols, cols < n, DTYPE, EMULATE_BF16, HAS_WEIGHT,
                              WEIGHT_FP32, WEIGHT_PLUS_ONE)
        else:  # the values again, block by block
            for start in range(0, n, BLOCK):
                mask = start + cols < n
                h = _row_values(x_row, r_row, start + cols, mask, r_scale, rw_ptr, DTYPE, HAS_RESIDUAL, EMULATE_BF16,
                                FP32_SUM, R_NORM, R_WEIGHT_FP32, R_WEIGHT_PLUS_ONE)
                _store_normalized(h, scale, w_row, out_row, start + cols, mask, DTYPE, EMULATE_BF16, HAS_WEIGHT,
                                  WEIGHT_FP32, WEIGHT_PLUS_ONE)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    view = t.reshape(-1, n)
    return view if view.stride(1) == 1 else view.contiguous()


def _block_options(plan: RowPlan, n: int) -> dict[str, int | bool]:
    """The kernel's lanes and whether a row of ``n`` fits them."""
    return {"BLOCK": plan.block, "ONE_BLOCK": n <= plan.block}


def _form_options(form: NormForm) -> dict[str, bool]:
    flags = (NormForm.WEIGHT_FP32, NormForm.WEIGHT_PLUS_ONE, NormForm.FP32_SUM, NormForm.FP32_RESIDUAL)
    return {flag.name: bool(form & flag) for flag in flags}


def bi_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                eps: float, form: NormForm = NormForm.LLAMA) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight * rms_normalize(h), h)`` over the last dim with ``h = x + residual`` (or ``x``),
    every intermediate rounded as ``form`` says (transformers' RMSNorm by default); ``None`` for ``h``
    without a residual.  ``h`` has the residual's dtype (fp32 under ``FP32_RESIDUAL``), the output x's."""
    n = x.shape[-1]
    device = devices.of_tensor(x)
    plan = row_plan(n, x.dtype, device)
    rows_x = _rows(x, n)
    rows_r = _rows(residual, n) if residual is not None else rows_x
    store = plan.store_dtype(x.dtype)  # fp32 under the interpreter; values are already rounded
    out = torch.empty(rows_x.shape, dtype=store, device=x.device)
    fp32_sum = bool(form & NormForm.FP32_RESIDUAL)
    if residual is not None and fp32_sum != (residual.dtype == torch.float32 != x.dtype):
        raise ValueError(f"bi_rms_norm: the FP32_RESIDUAL form takes an fp32 residual beside a low-precision x, "
                         f"got x {x.dtype}, residual {residual.dtype}, form {form!r}")
    total = torch.empty(out.shape, dtype=torch.float32 if fp32_sum else store, device=x.device) \
        if residual is not None else out
    rows = rows_x.shape[0]
    if rows and n:
        grid, options = row_launch(x, rows, plan, fp_fusion=False, overlap=True)
        _rms_norm_kernel[grid](rows_x, rows_r, weight if weight is not None else rows_x, out, total, rows, n,
                               rows_x.stride(0), rows_r.stride(0), out.stride(0), eps, 0, 0, 0, 0, 0, eps, rows_x, eps,
                               DTYPE=TL_DTYPES[x.dtype], HAS_RESIDUAL=residual is not None,
                               HAS_WEIGHT=weight is not None,
                               EMULATE_BF16=plan.fp32_io and x.dtype == torch.bfloat16, PAIR=False,
                               **_form_options(form), **_block_options(plan, n), **options)
    out = out.to(x.dtype).reshape(x.shape)
    return out, (total.to(residual.dtype).reshape(x.shape) if residual is not None else None)


def bi_rms_norm_sandwich(x: torch.Tensor, pre_x: torch.Tensor, pre_weight: torch.Tensor, pre_eps: float,
                         pre_form: NormForm, weight: torch.Tensor | None, eps: float,
                         form: NormForm = NormForm.LLAMA) -> tuple[torch.Tensor, torch.Tensor]:
    """``bi_rms_norm(x, bi_rms_norm(pre_x, None, pre_weight, pre_eps, pre_form)[0], weight, eps, form)`` in one
    launch, the same bits: a norm whose output joins the residual stream ``x``, and the norm of the sum (Gemma's
    post-attention norm, residual add and pre-feedforward norm; its post-feedforward norm and the next layer's
    input norm).  Each row normalizes ``pre_x`` with the row plan ``bi_rms_norm`` uses, adds it to ``x``
    and normalizes the sum; the first norm's output is never stored.  Returns ``(out, sum)``."""
    n = x.shape[-1]
    if pre_x.shape != x.shape or pre_x.dtype != x.dtype or pre_x.device != x.device \
            or pre_weight.shape != (n,) or (weight is not None and weight.shape != (n,)):
        raise ValueError(f"bi_rms_norm_sandwich: the stream {tuple(x.shape)} {x.dtype} and the first norm's input "
                         f"{tuple(pre_x.shape)} {pre_x.dtype} must match, the weights be ({n},); got "
                         f"{tuple(pre_weight.shape)} and {None if weight is None else tuple(weight.shape)}")
    if pre_form & ~WEIGHT_FORMS or form & (NormForm.FP32_SUM | NormForm.FP32_RESIDUAL):
        raise ValueError(f"bi_rms_norm_sandwich: forms {pre_form!r} and {form!r}; the first norm takes "
                         f"{WEIGHT_FORMS!r} flags, the second none of FP32_SUM and FP32_RESIDUAL")
    device = devices.of_tensor(x)
    plan = row_plan(n, x.dtype, device)
    rows_x, rows_pre = _rows(x, n), _rows(pre_x, n)
    store = plan.store_dtype(x.dtype)
    out, total = (torch.empty(rows_x.shape, dtype=store, device=x.device) for _ in range(2))
    rows = rows_x.shape[0]
    if rows and n:
        grid, options = row_launch(x, rows, plan, fp_fusion=False, overlap=True)
        _rms_norm_kernel[grid](rows_x, rows_pre, weight if weight is not None else rows_x, out, total, rows, n,
                               rows_x.stride(0), rows_pre.stride(0), out.stride(0), eps, 0, 0, 0, 0, 0, eps,
                               pre_weight, pre_eps, DTYPE=TL_DTYPES[x.dtype], HAS_RESIDUAL=True,
                               HAS_WEIGHT=weight is not None, EMULATE_BF16=plan.fp32_io and x.dtype == torch.bfloat16,
                               PAIR=False, R_NORM=True,
                               R_WEIGHT_FP32=bool(pre_form & NormForm.WEIGHT_FP32),
                               R_WEIGHT_PLUS_ONE=bool(pre_form & NormForm.WEIGHT_PLUS_ONE),
                               **_form_options(form), **_block_options(plan, n), **options)
    return out.to(x.dtype).reshape(x.shape), total.to(x.dtype).reshape(x.shape)


def bi_rms_norm_pair(xs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                     eps: Sequence[float], form: NormForm = NormForm.LLAMA) -> list[torch.Tensor]:
    """``[bi_rms_norm(x, None, w, e, form)[0] for x, w, e in zip(xs, weights, eps)]`` in one launch.

    Two norms of one length and dtype that depend on nothing but their inputs -- a layer's query
    and key norms, one head per row -- run as one launch over both inputs' rows; the second
    input, weight and output are found by their distance in memory from the first's (nothing is
    copied).  Each row is computed exactly as ``bi_rms_norm`` computes it.
    """
    if not len(xs) == len(weights) == len(eps) == 2:
        raise ValueError(f"bi_rms_norm_pair takes two inputs, weights and epsilons, got {len(xs)}, {len(weights)} "
                         f"and {len(eps)}")
    n = xs[0].shape[-1]
    if any(x.shape[-1] != n or x.dtype != xs[0].dtype or x.device != xs[0].device for x in xs) \
            or any(w.shape != (n,) or w.stride() != (1,) or w.dtype != weights[0].dtype or w.device != xs[0].device
                   for w in weights):
        raise ValueError(f"bi_rms_norm_pair: inputs must share their last dim, dtype and device, and weights be "
                         f"contiguous ({n},) of one dtype; got {[(tuple(x.shape), x.dtype) for x in xs]} and "
                         f"{[(tuple(w.shape), w.dtype) for w in weights]}")
    x = xs[0]
    device = devices.of_tensor(x)
    plan = row_plan(n, x.dtype, device)
    rows_x = [_rows(t, n) for t in xs]
    store = plan.store_dtype(x.dtype)
    outs = [torch.empty(r.shape, dtype=store, device=x.device) for r in rows_x]
    rows = rows_x[0].shape[0] + rows_x[1].shape[0]
    if rows and n:
        grid, options = row_launch(x, rows, plan, fp_fusion=False, overlap=True)
        _rms_norm_kernel[grid](rows_x[0], rows_x[0], weights[0], outs[0], outs[0], rows, n,
                               rows_x[0].stride(0), 0, n, eps[0], rows_x[0].shape[0],
                               element_distance(rows_x[0], rows_x[1]), element_distance(weights[0], weights[1]),
                               element_distance(outs[0], outs[1]), rows_x[1].stride(0), eps[1], weights[0], eps[0],
                               DTYPE=TL_DTYPES[x.dtype], HAS_RESIDUAL=False, HAS_WEIGHT=True,
                               EMULATE_BF16=plan.fp32_io and x.dtype == torch.bfloat16, PAIR=True,
                               **_form_options(form), **_block_options(plan, n), **options)
    return [out.to(t.dtype).reshape(t.shape) for out, t in zip(outs, xs, strict=True)]
