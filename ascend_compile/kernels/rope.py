"""A layer's query/key norms (if it has them), rotary embedding and key/value cache writes in one launch.

Between the query/key/value projections and attention, a Qwen3-style layer normalises every head
of the query and the key (RMSNorm), rotates both by the position's angles (RoPE, transformers'
``x * cos + rotate_half(x) * sin``) and writes the key and the value into the static cache.
Traced, that is our norm pair and three Inductor kernels: four launches of a microsecond or two
around a few kilobytes each, and Inductor's do not overlap with ours.  This kernel does all of it
in one launch, a program taking the query, the key or the value heads of one position:

* query and key heads: the norm exactly as ``kernels/rms_norm.py`` computes it (same lanes, same
  ``tree_sum``, same roundings), then the rotation with each product and the sum rounded to the
  tensor dtype as eager rounds them (no FMA contraction).  ``rotate_half`` needs the element half
  a row away, which lies in another thread: a head that fills the plan's lanes loads as its two
  halves, so each thread holds both of a pair (``HALVES``); a shorter head is normalised twice,
  once at the partner columns -- the same arithmetic on the same inputs, so the same bits.  GPT-J's
  interleaved rotation (``INTERLEAVED``: vLLM's ``is_neox_style=False``, transformers'
  ``rotate_every_two``) pairs each even column with the odd one after it, in the same thread;
  Layers without query/key norms (Llama, Mistral, Qwen2) rotate the projections as they are;
* value heads (with a cache): copied into the cache;
* key heads go to the cache at the step's slots (``index``) when there is one, else to an output;
  a paged cache (vLLM's: blocks of slots, a slot per token, ``paged``) is the same store with
  other strides;
* appending (transformers' ``StaticLayer.update``), the slots are the cache's write position and
  the positions after it, and the position then advances by the step's length: every program
  reads it, then arrives on an arrival counter (``arrival.py``); the last to arrive advances it,
  after every read.  That replaces the small kernel Inductor ran before each layer's launch for
  the slots and the increment.

A row's reduction order is the norm's, fixed by the head dim, dtype and device kind; rows never
mix, so how many heads a program takes is a schedule.  Nothing here depends on the batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.arrival import arrival_counters
from ascend_compile.kernels.overlap import release_dependents, wait_for_previous
from ascend_compile.kernels.plans import rope_heads_per_program, rope_row_plan, rope_warps
from ascend_compile.kernels.reduce import row_launch
from ascend_compile.kernels.rms_norm import WEIGHT_FORMS, NormForm, rms_normalized
from ascend_compile.kernels.rounding import TL_DTYPES, round_to
from ascend_compile.kernels.tree import tree_sum_rows

WEIGHT_FP32 = tl.constexpr(int(NormForm.WEIGHT_FP32))
WEIGHT_PLUS_ONE = tl.constexpr(int(NormForm.WEIGHT_PLUS_ONE))


@triton.jit
def _head_columns(cols, BLOCK_H: tl.constexpr):
    """Columns ``cols`` as a (``BLOCK_H``, columns) tile, each head's row the same: per-column operands (angles,
    norm weights) loaded through it take the head tile's layout, not a vector's that every use would convert
    through shared memory."""
    return tl.zeros((BLOCK_H, 1), dtype=cols.dtype) + cols[None, :]


@triton.jit
def _heads(rows, cols, n, live):
    """Head rows ``rows`` (the ``live`` ones) at columns ``cols`` (a ``_head_columns`` tile), fp32, zero past ``n``."""
    return tl.load(rows[:, None] + cols, mask=live[:, None] & (cols < n), other=0.0).to(tl.float32)


@triton.jit
def _squares(h, n, BLOCK_H: tl.constexpr, BLOCK: tl.constexpr):
    """Per-row sums of ``h``'s squares in the RMSNorm kernel's order (its lanes, then ``tree_sum_rows``)."""
    lanes = tl.zeros((BLOCK_H, BLOCK), dtype=tl.float32)
    for _ in range(0, n, n):  # once; in straight-line code Triton 3.6 moves the tree's layout conversion to
        lanes += h * h  # the heads' load and squares every element of a head in every thread
    return tree_sum_rows(lanes, BLOCK_H, BLOCK)


@triton.jit
def _normalized(h, scale, w_ptr, cols, n, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, NORM: tl.constexpr,
                FORM: tl.constexpr):
    """``weight * (h * scale).to(dtype)`` at columns ``cols``, rounded as the RMSNorm kernel rounds it in ``FORM``
    (``h`` itself without ``NORM``); ``w_ptr``: one weight, or one per row."""
    if not NORM:
        return h
    return rms_normalized(h, scale[:, None], w_ptr, cols, cols < n, DTYPE, EMULATE_BF16, True, WEIGHT_FP32 & FORM,
                          WEIGHT_PLUS_ONE & FORM)


@triton.jit
def _rotation(y, partner, cos, sin, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``y * cos + partner * sin``, each product and the sum rounded to ``DTYPE`` as eager rounds them."""
    return round_to(round_to(y * cos, DTYPE, EMULATE_BF16) + round_to(partner * sin, DTYPE, EMULATE_BF16),
                    DTYPE, EMULATE_BF16)


@triton.jit
def rotated_rows(rows, live, w_ptr, eps, cos, sin, n, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK: tl.constexpr, NORM: tl.constexpr, INTERLEAVED: tl.constexpr,
                 FORM: tl.constexpr):
    """Norm (when ``NORM``) and rotation of ``BLOCK_H`` head rows (``live`` ones) starting at pointers
    ``rows``, by angles ``cos``/``sin`` (fp32, broadcastable to (``BLOCK_H``, ``BLOCK``)): fp32 values,
    each already rounded to ``DTYPE``.  Column ``c`` pairs with ``c ^ 1`` when ``INTERLEAVED`` (the pair's
    values swap within a thread's registers), else with the column half a row away, which lies in another
    thread: the row is normalised again at the partner columns, the same arithmetic on the same inputs.  The
    first of a pair takes its partner negated.  ``FORM``: where the norm rounds (``NormForm``'s weight flags,
    as ``kernels/rms_norm.py`` rounds them)."""
    cols = _head_columns(tl.arange(0, BLOCK), BLOCK_H)
    h = _heads(rows, cols, n, live)
    scale = tl.zeros((BLOCK_H,), dtype=tl.float32)
    if NORM:
        scale = tl.math.rsqrt(_squares(h, n, BLOCK_H, BLOCK) / n + eps)
    y = _normalized(h, scale, w_ptr, cols, n, DTYPE, EMULATE_BF16, NORM, FORM)
    if INTERLEAVED:
        first, second = tl.split(tl.reshape(y, (BLOCK_H, BLOCK // 2, 2)))
        partner = tl.reshape(tl.join(-second, first), (BLOCK_H, BLOCK))
    else:
        first = cols < n // 2
        partner_cols = tl.where(first, cols + n // 2, cols - n // 2)
        partner = _normalized(_heads(rows, partner_cols, n, live), scale, w_ptr, partner_cols, n, DTYPE,
                              EMULATE_BF16, NORM, FORM)
        partner = tl.where(first, -partner, partner)
    return _rotation(y, partner, cos, sin, DTYPE, EMULATE_BF16)


@triton.jit
def _rotate_half(y, partner, cos_row, sin_row, out_rows, cols, live, stride_cd, DTYPE: tl.constexpr,
                 EMULATE_BF16: tl.constexpr):
    """Half of a rotation whose halves fill the block: ``_rotation`` at columns ``cols``, stored."""
    cos = tl.load(cos_row + cols * stride_cd).to(tl.float32)
    sin = tl.load(sin_row + cols * stride_cd).to(tl.float32)
    out = _rotation(y, partner, cos, sin, DTYPE, EMULATE_BF16)
    tl.store(out_rows[:, None] + cols, out.to(out_rows.dtype.element_ty), mask=live[:, None])


@triton.jit
def _norm_rope_heads(rows, live, w_ptr, eps, cos_row, sin_row, out_rows, n, stride_cd,
                     DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK: tl.constexpr,
                     NORM: tl.constexpr, INTERLEAVED: tl.constexpr, FORM: tl.constexpr, HALVES: tl.constexpr):
    """``rotated_rows`` of ``BLOCK_H`` head rows of one position, stored to ``out_rows``.  ``HALVES`` (a rotation
    of the halves of a head that fills the block): the two halves load as tiles of their own, so each
    thread holds a column and its partner.  The norm's sum is the two halves' trees added, which is the
    whole row's tree's last step, so the bits are ``rotated_rows``'."""
    if HALVES:
        cols = _head_columns(tl.arange(0, BLOCK // 2), BLOCK_H)
        lo = _heads(rows, cols, n, live)
        hi = _heads(rows, cols + BLOCK // 2, n, live)
        scale = tl.zeros((BLOCK_H,), dtype=tl.float32)
        if NORM:
            sums = _squares(lo, n, BLOCK_H, BLOCK // 2) + _squares(hi, n, BLOCK_H, BLOCK // 2)
            scale = tl.math.rsqrt(sums / n + eps)
        lo = _normalized(lo, scale, w_ptr, cols, n, DTYPE, EMULATE_BF16, NORM, FORM)
        hi = _normalized(hi, scale, w_ptr, cols + BLOCK // 2, n, DTYPE, EMULATE_BF16, NORM, FORM)
        _rotate_half(lo, -hi, cos_row, sin_row, out_rows, cols, live, stride_cd, DTYPE, EMULATE_BF16)
        _rotate_half(hi, lo, cos_row, sin_row, out_rows, cols + BLOCK // 2, live, stride_cd, DTYPE, EMULATE_BF16)
    else:
        cols = _head_columns(tl.arange(0, BLOCK), BLOCK_H)
        cos = tl.load(cos_row + cols * stride_cd, mask=cols < n, other=0.0).to(tl.float32)
        sin = tl.load(sin_row + cols * stride_cd, mask=cols < n, other=0.0).to(tl.float32)
        out = rotated_rows(rows, live, w_ptr, eps, cos, sin, n, DTYPE, EMULATE_BF16, BLOCK_H, BLOCK, NORM,
                           INTERLEAVED, FORM)
        tl.store(out_rows[:, None] + cols, out.to(out_rows.dtype.element_ty), mask=live[:, None] & (cols < n))


@triton.jit
def _norm_rope_kernel(q_ptr, k_ptr, v_ptr, wq_ptr, wk_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, vo_ptr, index_ptr,
                      arrival_ptr, B, L, HQ, HK, n, eps_q, eps_k, SLOTS, si_b, si_l,
                      sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, sc_b, sc_l, sc_d,
                      sqo_b, sqo_h, sqo_l, sko_b, sko_h, sko_l, svo_b, svo_h, svo_l,
                      DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK: tl.constexpr,
                      CACHE: tl.constexpr, APPEND: tl.constexpr, NORM: tl.constexpr, INTERLEAVED: tl.constexpr,
                      FORM: tl.constexpr, HALVES: tl.constexpr, OVERLAP: tl.constexpr = False):
    """Work items of one position: the query heads, the key heads and (``CACHE``) the value heads,
    ``BLOCK_H`` heads an item; one program per item off NPUs, which loop over the items with the
    grid's stride.  ``index_ptr``: the slot of each position (strides ``si_b``, ``si_l``), or
    (``APPEND``) the cache's write position, advanced by ``L`` at the end."""
    if OVERLAP:  # launched early; attention, next, launches after the last store (overlap.py)
        wait_for_previous()
    query_items = tl.cdiv(HQ, BLOCK_H)
    key_items = tl.cdiv(HK, BLOCK_H)
    per_position = query_items + key_items * (2 if CACHE else 1)
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK)
    for item in range(tl.program_id(0), B * L * per_position, tl.num_programs(0)):
        position = item // per_position
        b = tl.cast(position // L, tl.int64)
        pos = position % L
        part = item % per_position
        cos_row = cos_ptr + b * sc_b + pos * sc_l
        sin_row = sin_ptr + b * sc_b + pos * sc_l
        if part < query_items:
            h = part * BLOCK_H + heads
            _norm_rope_heads(q_ptr + b * sq_b + pos * sq_l + h * sq_h, h < HQ, wq_ptr, eps_q, cos_row, sin_row,
                             qo_ptr + b * sqo_b + h * sqo_h + pos * sqo_l, n, sc_d, DTYPE, EMULATE_BF16, BLOCK_H, BLOCK,
                             NORM, INTERLEAVED, FORM, HALVES)
        else:
            part -= query_items
            is_value = part >= key_items
            h = tl.where(is_value, part - key_items, part) * BLOCK_H + heads
            slot = pos
            if APPEND:
                slot = tl.load(index_ptr) + pos
            elif CACHE:
                slot = tl.load(index_ptr + b * si_b + pos * si_l)
            # A slot outside the cache (a full static cache) is written nowhere: a Triton store checks no bounds,
            # and the slots cannot be read on the host without a wait (ops/cache_bounds.py).
            written = (h < HK) & (tl.zeros_like(h) + slot >= 0) & (tl.zeros_like(h) + slot < SLOTS)
            if is_value:  # only with a cache: the value heads as they are, into the slot
                mask = written[:, None] & (cols[None, :] < n)
                rows = tl.load(v_ptr + b * sv_b + pos * sv_l + h[:, None] * sv_h + cols[None, :], mask=mask)
                tl.store(vo_ptr + b * svo_b + h[:, None] * svo_h + slot * svo_l + cols[None, :], rows, mask=mask)
            else:
                _norm_rope_heads(k_ptr + b * sk_b + pos * sk_l + h * sk_h, written, wk_ptr, eps_k, cos_row, sin_row,
                                 ko_ptr + b * sko_b + h * sko_h + slot * sko_l, n, sc_d, DTYPE, EMULATE_BF16,
                                 BLOCK_H, BLOCK, NORM, INTERLEAVED, FORM, HALVES)
    if APPEND:  # the last program to arrive has seen every other program's read of the position
        tl.debug_barrier()
        if tl.atomic_add(arrival_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:
            tl.store(index_ptr, tl.load(index_ptr) + L)
            tl.atomic_xchg(arrival_ptr, 0, sem="relaxed")
    if OVERLAP:
        release_dependents()


def angles(t: torch.Tensor, batch: int, length: int, n: int) -> torch.Tensor:
    """``cos`` or ``sin`` as (batch, length, n) with the last dim at unit stride (broadcast dims at stride 0)."""
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"rotary angles must broadcast over heads (dim 1 of size 1), got shape {tuple(t.shape)}")
        t = t.squeeze(1)
    t = t.expand(batch, length, n)
    return t if t.stride(2) == 1 else t.contiguous()


def check_form(form: int, caller: str) -> None:
    """Raise unless the query/key norms can round as ``form`` here."""
    if form & ~WEIGHT_FORMS:
        raise ValueError(f"{caller}: form {form!r}: the query/key norms round as NormForm.LLAMA (0) or with its "
                         f"weight flags WEIGHT_FP32 and WEIGHT_PLUS_ONE ({int(WEIGHT_FORMS)} together)")


def check_inputs(q: torch.Tensor, k: torch.Tensor,
                 cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None, append: bool,
                 caller: str = "bi_rms_norm_rope", paged: bool = False) -> None:
    """Raise unless the key fits the query (batch, length, heads, dim) and, with ``cache = (v, k_cache,
    v_cache, index)``, the value fits the key, the caches are (batch, kv heads, slots, dim) and ``index``
    holds one slot per position (with ``append``, the write position: one int64); ``paged``: the caches
    are (blocks, block size, kv heads, dim), their blocks one after another, and ``index`` holds one
    slot per token (batch x length)."""
    batch, length, kv_heads, n = k.shape
    if append and cache is None:
        raise ValueError(f"{caller}: append=True writes to a cache; pass cache=(v, k_cache, v_cache, position)")
    if (q.shape[0], q.shape[1], q.shape[3]) != (batch, length, n) or k.dtype != q.dtype:
        raise ValueError(f"{caller}: key {tuple(k.shape)} {k.dtype} does not match query "
                         f"{tuple(q.shape)} {q.dtype} (batch, length, heads, dim)")
    if cache is None:
        return
    v, k_cache, v_cache, index = cache
    if paged:
        fits, layout = k_cache.shape[2:] == (kv_heads, n) and index.shape == (batch * length,), \
            "(blocks, block size, kv heads, dim), the index one slot per token"
    else:
        fits = k_cache.shape[:2] == (batch, kv_heads) and k_cache.shape[3] == n and (
            (index.numel(), index.dtype) == (1, torch.int64) if append else index.shape == (length,))
        layout = "(batch, kv heads, slots, dim), the index one slot per position, or with append the write " \
                 "position, one int64"
    if v.shape != k.shape or v_cache.shape != k_cache.shape or not fits:
        raise ValueError(f"{caller}: value {tuple(v.shape)}, caches {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}, index {tuple(index.shape)} {index.dtype} do not fit key "
                         f"{tuple(k.shape)} (caches {layout})")
    if v.stride(3) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError(f"{caller}: the value and the caches need a unit-stride last dim")
    if paged and any(c.stride(0) != c.shape[1] * c.stride(1) for c in (k_cache, v_cache)):
        raise ValueError(f"{caller}: the paged caches' blocks must lie one after another")


def bi_rms_norm_rope(q: torch.Tensor, k: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None,
                     eps: tuple[float, float] | None, cos: torch.Tensor, sin: torch.Tensor,
                     cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                     append: bool = False, paged: bool = False, interleaved: bool = False,
                     form: int = NormForm.LLAMA) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm then RoPE of the query ``q`` (batch, length, heads, dim) and key ``k`` (batch, length,
    kv heads, dim): ``(q_rot, k_rot)``, each (batch, heads, length, dim) contiguous, as transformers'
    ``apply_rotary_pos_emb(q_norm(q).transpose(1, 2), k_norm(k).transpose(1, 2), cos, sin)`` computes
    them.  With ``cache = (v, k_cache, v_cache, index)`` the rotated key and the value ``v`` (batch,
    length, kv heads, dim) are written in place to ``k_cache``/``v_cache`` (batch, kv heads, slots,
    dim) at slots ``index`` (one per position) instead, and ``k_rot`` is ``None``.  With ``append``,
    ``index`` is the caches' write position (one int64 element): the positions go to the slots from
    it on, and it advances by ``length``, as transformers' ``StaticLayer.update`` does.  With ``paged``
    the caches are vLLM's, (blocks, block size, kv heads, dim), and ``index`` (batch x length) holds
    each token's slot, ``block * block size + offset``.  ``weights`` and ``eps`` None: no norms, the
    rotation alone (``bi_rope``).  ``interleaved``: GPT-J's rotation of each even column with the odd
    one after it, ``x * cos + rotate_every_two(x) * sin``, for transformers' ``rotate_half``.  ``form``:
    where the norms round, ``NormForm.LLAMA`` or its weight flags (Gemma's ``WEIGHT_FP32 |
    WEIGHT_PLUS_ONE``).
    """
    batch, length, heads, n = q.shape
    kv_heads = k.shape[2]
    check_inputs(q, k, cache, append, paged=paged)
    check_form(form, "bi_rms_norm_rope")
    device = devices.of_tensor(q)
    plan = rope_row_plan(n, q.dtype, device)
    q, k = (t if t.stride(3) == 1 else t.contiguous() for t in (q, k))
    cos, sin = angles(cos, batch, length, n), angles(sin, batch, length, n)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    # Under the interpreter outputs are stored in fp32 (``RowPlan.store_dtype``); the caches keep
    # their dtype, which its truncating cast reaches exactly: every value is already rounded to it.
    q_out = torch.empty((batch, heads, length, n), dtype=plan.store_dtype(q.dtype), device=q.device)
    if cache is None:
        k_out = torch.empty((batch, kv_heads, length, n), dtype=plan.store_dtype(q.dtype), device=q.device)
        v, v_out, index = k, k_out, k_out  # never read without a cache
    else:
        v, k_out, v_out, index = cache
    # A paged cache as the kernel's (batch, kv heads, slots) strides: no batch stride, slots across blocks.
    strides = [(0, t.stride(2), t.stride(1)) if paged else t.stride()[:3] for t in (k_out, v_out)]
    slots = k_out.shape[0] * k_out.shape[1] if paged else k_out.shape[2]
    block_h = rope_heads_per_program(plan, max(heads, kv_heads), q.dtype, device)
    kv_items = triton.cdiv(kv_heads, block_h) * (2 if cache is not None else 1)
    items = batch * length * (triton.cdiv(heads, block_h) + kv_items)
    if items and n:
        grid, options = row_launch(q, items, plan, fp_fusion=False, overlap=True,
                                   num_warps=rope_warps(plan, block_h))
        _norm_rope_kernel[grid](
            q, k, v, *(weights or (q, q)), cos, sin, q_out, k_out, v_out, index,
            arrival_counters(q.device) if append else index, batch, length, heads, kv_heads, n, *(eps or (0.0, 0.0)),
            slots, length if paged else 0, 1,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), cos.stride(0), cos.stride(1), cos.stride(2),
            q_out.stride(0), q_out.stride(1), q_out.stride(2), *strides[0], *strides[1],
            DTYPE=TL_DTYPES[q.dtype], EMULATE_BF16=plan.fp32_io and q.dtype == torch.bfloat16, BLOCK_H=block_h,
            BLOCK=plan.block, CACHE=cache is not None, APPEND=append, NORM=weights is not None,
            INTERLEAVED=interleaved, FORM=int(form), HALVES=not interleaved and n == plan.block, **options,
        )
    return q_out.to(q.dtype), (k_out.to(q.dtype) if cache is None else None)


def bi_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
            append: bool = False, paged: bool = False,
            interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``bi_rms_norm_rope`` without the norms: transformers' ``apply_rotary_pos_emb(q.transpose(1, 2),
    k.transpose(1, 2), cos, sin)`` (Llama, Mistral, Qwen2: no query/key norms), the same cache forms."""
    return bi_rms_norm_rope(q, k, None, None, cos, sin, cache, append, paged, interleaved)
