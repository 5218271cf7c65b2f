"""A decode step's query/key norms, rotary embedding, cache writes and attention in one launch.

At decode a layer runs the norm-and-rotate kernel (``kernels/rope.py``) and then attention: two
dependent launches, the first moving a few kilobytes.  In a chain of a layer's kernels on an H200
the first adds 3.5-4.7 us a layer (docs/decisions/0015-rope-attention-fusion.md), nearly all of
it the launch.  Here each attention program does that work itself before it reads the keys:

* one rotation over the tile's live rows (``rope.rotated_rows``, the norm-and-rotate kernel's
  arithmetic, so its bits): the query rows attention packs per key/value head
  (``kernels/attention.py``), then one row per position for the step's key of that head -- 3 of a
  16-row tile at Qwen3's group of 2, rotated as a tile of 4 (rotating all 16 was a third of the
  kernel's time on an H200) and repeated down the 16.  Rows past the query's are masked by
  attention, so the key rows and the repeats ride along at no extra pass;
* the step's key and value go to the caches at the step's slots, written by the program whose key
  split holds the slot (by the one program when it walks every split); a barrier orders the writes
  before the program's threads read its key tiles;
* over caches grown by ``torch.cat`` (a hand-written model's ``cat((past_k, k), 2)``), the grown
  caches are new buffers.  The launch's other programs (``program_id(0)`` t > 0) copy the past's key
  tile t - 1 of each split into them, on SMs that attention leaves idle, while attention reads the
  past keys where they lie and the step's key where its program wrote it: no program waits on a
  copy, and the copies cost no launch of their own (H100, one layer at bs 1: 10.8 us against 12.9
  with each program copying its splits before it attends; 63.5 against 78.6 at bs 32; 0021);
* appending (transformers' ``StaticLayer.update``), every program reads the cache's write position,
  and it is advanced by the step's length once all have read it: in the split schedule by the fold
  launch, which runs after them anyway; in the serial schedule by the program that arrives last on
  an arrival counter (``arrival.py``).  The split programs take no counter: its atomic, ordered after
  the cache writes, stood between every program and its first key tile (H200, bs 8: the decode
  step 1.131 ms without it against 1.150-1.154 with, docs/decisions/0015-rope-attention-fusion.md).

Then it is ``kernels/attention.py``'s split state (``_attend``), and in the split schedule its
fold launch (``fold_splits``): the same plan, the same bits as the two launches.  Only decode
shapes take this path -- one row block holds the query rows and the key rows, so that every program
that reads a step's key is the one that wrote it -- and ``bi_rope_attention`` launches the two
kernels otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.arrival import arrival_counters
from ascend_compile.kernels.attention import (
    _attend,
    _group_rows,
    _mask_rows,
    attention_output,
    bi_attention,
    fold_splits,
    mask_row,
    split_workspace,
)
from ascend_compile.kernels.overlap import wait_for_inputs
from ascend_compile.kernels.plans import (
    AttentionPlan,
    AttentionSchedule,
    RowPlan,
    attention_mask_ahead,
    attention_plan,
    attention_schedule,
    launch_options,
    rope_row_plan,
)
from ascend_compile.kernels.rope import angles, bi_rms_norm_rope, check_form, check_inputs, rotated_rows
from ascend_compile.kernels.rounding import TL_DTYPES

#: Rows of one decode row block: the packed query rows (positions x query heads per key/value head), then a
#: row per position for its key.
DECODE_ROWS = 16


@triton.jit
def _copy_past_tile(past_k, past_v, k_base, v_base, tile, first_split, last_split, past, spk_l, spv_l,
                    skc_l, skc_d, svc_l, svc_d, D, SPLIT_TILES: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Key tile ``tile`` of splits ``first_split`` to ``last_split`` (excluded): its rows before ``past``
    of the past keys and values (unit-stride columns) copied to the same rows at ``k_base``/``v_base``."""
    cols = tl.arange(0, BLOCK_D)
    for split in range(first_split, last_split):
        rows = (split * SPLIT_TILES + tile) * BLOCK_N + tl.arange(0, BLOCK_N)
        live = (rows < past)[:, None] & (cols[None, :] < D)
        keys = tl.load(past_k + rows[:, None] * spk_l + cols[None, :], mask=live)
        values = tl.load(past_v + rows[:, None] * spv_l + cols[None, :], mask=live)
        tl.store(k_base + rows[:, None] * skc_l + cols[None, :] * skc_d, keys, mask=live)
        tl.store(v_base + rows[:, None] * svc_l + cols[None, :] * svc_d, values, mask=live)


@triton.jit
def _rope_attention_kernel(q_ptr, k_ptr, v_ptr, wq_ptr, wk_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, index_ptr,
                           pk_ptr, pv_ptr, mask_ptr, out_ptr, ws_m, ws_l, ws_acc, position_arrivals,
                           Lq, Lk, KVH, num_splits, sm_scale, masked_score, eps_q, eps_k, D, PAST,
                           sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, sc_b, sc_l, sc_d,
                           skc_b, skc_h, skc_l, skc_d, svc_b, svc_h, svc_l, svc_d,
                           spk_b, spk_h, spk_l, spv_b, spv_h, spv_l,
                           sm_b, sm_h, sm_q, sm_k, so_b, so_h, so_l, so_d,
                           DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, NORM: tl.constexpr, FORM: tl.constexpr,
                           APPEND: tl.constexpr, GROW: tl.constexpr, INTERLEAVED: tl.constexpr, GROUP: tl.constexpr,
                           HAS_MASK: tl.constexpr,
                           MASK_IS_BOOL: tl.constexpr, MASK_ROW: tl.constexpr,
                           IS_CAUSAL: tl.constexpr, SPLIT: tl.constexpr, SPLIT_TILES: tl.constexpr,
                           ROT_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                           UPCAST: tl.constexpr, DENOM_DOT: tl.constexpr,
                           INPUT_PRECISION: tl.constexpr, MASK_AHEAD: tl.constexpr,
                           OVERLAP: tl.constexpr = False):
    """Program (batch x key/value head ``program_id(1)``, key split ``program_id(2)``) of the one row block,
    or with ``GROW`` and ``program_id(0)`` t > 0 the copy of the past's key tile t - 1 of the same splits."""
    if OVERLAP:  # launched early (overlap.py)
        wait_for_inputs()
    bkv = tl.program_id(1)
    split_id = tl.program_id(2)
    b = bkv // KVH
    kvh = bkv % KVH
    k_base = kc_ptr + b * skc_b + kvh * skc_h
    v_base = vc_ptr + b * svc_b + kvh * svc_h
    past_k = pk_ptr + b * spk_b + kvh * spk_h
    past_v = pv_ptr + b * spv_b + kvh * spv_h
    if GROW:
        if tl.program_id(0) > 0:
            _copy_past_tile(past_k, past_v, k_base, v_base, tl.program_id(0) - 1, split_id if SPLIT else 0,
                            split_id + 1 if SPLIT else num_splits, PAST, spk_l, spv_l, skc_l, skc_d, svc_l, svc_d, D,
                            SPLIT_TILES, BLOCK_N, BLOCK_D)
            return
    rows, pos, g, live = _group_rows(0, Lq, GROUP, BLOCK_M)
    h = kvh * GROUP + g
    # One rotation over the rows that hold something (``ROT_ROWS``): the packed query rows, then row
    # Lq * GROUP + p for position p's key.  Attention's tile is that tile repeated down its rows: rows
    # past the query's are not stored, so the repeats and the key rows are never read.
    r_rows, r_pos, r_g, r_live = _group_rows(0, Lq, GROUP, ROT_ROWS)
    is_key = (r_rows >= Lq * GROUP) & (r_rows < Lq * GROUP + Lq)
    p_key = tl.where(is_key, r_rows - Lq * GROUP, 0)
    if GROW:
        slots = PAST + p_key
    elif APPEND:
        start = tl.load(index_ptr)
        slots = start + p_key
    else:
        slots = tl.load(index_ptr + p_key, mask=is_key, other=0)
    cols = tl.arange(0, BLOCK_D)
    position = tl.where(is_key, p_key, r_pos)
    angle = (r_live | is_key)[:, None] & (cols[None, :] < D)
    cos = tl.load(cos_ptr + b * sc_b + position[:, None] * sc_l + cols[None, :] * sc_d, mask=angle, other=0.0)
    sin = tl.load(sin_ptr + b * sc_b + position[:, None] * sc_l + cols[None, :] * sc_d, mask=angle, other=0.0)
    heads = tl.where(is_key, k_ptr + b * sk_b + p_key * sk_l + kvh * sk_h,
                     q_ptr + b * sq_b + r_pos * sq_l + (kvh * GROUP + r_g) * sq_h)
    rotated = rotated_rows(heads, r_live | is_key, tl.where(is_key, wk_ptr, wq_ptr)[:, None],
                           tl.where(is_key, eps_k, eps_q), cos.to(tl.float32), sin.to(tl.float32), D,
                           DTYPE, EMULATE_BF16, ROT_ROWS, BLOCK_D, NORM, INTERLEAVED, FORM)
    # The step's keys and values of this key/value head, by the program whose split holds their slot.
    new = is_key & (slots >= 0) & (slots < Lk)  # a slot outside the cache is written nowhere (ops/cache_bounds.py)
    if SPLIT:
        new = new & (slots // (SPLIT_TILES * BLOCK_N) == split_id)
    written = new[:, None] & (cols[None, :] < D)
    tl.store(k_base + slots[:, None] * skc_l + cols[None, :] * skc_d, rotated.to(kc_ptr.dtype.element_ty),
             mask=written)
    value = tl.load(v_ptr + b * sv_b + p_key[:, None] * sv_l + kvh * sv_h + cols[None, :], mask=written)
    tl.store(v_base + slots[:, None] * svc_l + cols[None, :] * svc_d, value, mask=written)
    tl.debug_barrier()  # the keys just written are read below by the program's other threads
    if APPEND and not SPLIT:  # arrive now (every thread has read the position); learn whether last at the end
        arrived = tl.atomic_add(position_arrivals, 1, sem="release")
    q = rotated.to(kc_ptr.dtype.element_ty)
    q = tl.reshape(tl.broadcast_to(q[None, :, :], (BLOCK_M // ROT_ROWS, ROT_ROWS, BLOCK_D)), (BLOCK_M, BLOCK_D))
    if UPCAST:
        q = q.to(tl.float32)
    _attend(q, k_base, v_base, _mask_rows(mask_ptr, b, h, pos, sm_b, sm_h, sm_q, MASK_ROW), out_ptr,
            b * so_b + h * so_h + pos * so_l, ws_m, ws_l, ws_acc, 0, bkv, split_id, rows, pos, live, Lq, Lk, GROUP,
            sm_scale, masked_score, D, D, skc_l, skc_d, svc_l, svc_d, sm_k, so_d, k_base, HAS_MASK,
            MASK_IS_BOOL, MASK_ROW, IS_CAUSAL, SPLIT, SPLIT_TILES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_D, UPCAST,
            DENOM_DOT, INPUT_PRECISION, False, 0, MASK_AHEAD, past_k, past_v, PAST, spk_l, spv_l, GROW)
    if APPEND and not SPLIT:  # the last to arrive advances the position, after every program's read of it
        if arrived == tl.num_programs(1) * tl.num_programs(2) - 1:
            tl.store(index_ptr, start + Lq)
            tl.atomic_xchg(position_arrivals, 0, sem="relaxed")


def bi_rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      weights: tuple[torch.Tensor, torch.Tensor] | None, eps: tuple[float, float] | None,
                      cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      index: torch.Tensor, *, append: bool, mask: torch.Tensor | None = None,
                      is_causal: bool = False, scale: float | None = None, masked_score: float = float("-inf"),
                      heads_inner: bool = False, interleaved: bool = False, form: int = 0,
                      schedule: AttentionSchedule | None = None) -> torch.Tensor:
    """``bi_attention(bi_rms_norm_rope(q, k, weights, eps, cos, sin, cache=(v, k_cache, v_cache, index),
    append=append)[0], k_cache, v_cache, mask, is_causal, scale, ...)``: the query/key norms (none when
    ``weights`` is None), the rotation, the cache writes and attention over the caches, in one launch
    at decode shapes (``DECODE_ROWS`` query and key rows at most, GPUs and the CPU), the two launches
    otherwise; the same bits either way.  ``interleaved`` (GPT-J's rotation) and ``form`` (where the
    norms round) as ``bi_rms_norm_rope`` takes them.
    ``schedule`` overrides the attention schedule (tests)."""
    check_inputs(q, k, (v, k_cache, v_cache, index), append, caller="bi_rope_attention")
    attend = dict(mask=mask, is_causal=is_causal, scale=scale, masked_score=masked_score, heads_inner=heads_inner)
    plans = _one_launch_plans(q, k, v_cache)
    if plans is None:
        q_rot, _ = bi_rms_norm_rope(q, k, weights, eps, cos, sin, cache=(v, k_cache, v_cache, index), append=append,
                                    interleaved=interleaved, form=form)
        return bi_attention(q_rot, k_cache, v_cache, **attend)
    return _launch(q, k, v, weights, eps, cos, sin, k_cache, v_cache, index, None, append, (interleaved, form),
                   plans, schedule, **attend)


def bi_rope_attention_grown(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            weights: tuple[torch.Tensor, torch.Tensor] | None, eps: tuple[float, float] | None,
                            cos: torch.Tensor, sin: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, *,
                            mask: torch.Tensor | None = None, is_causal: bool = False, scale: float | None = None,
                            masked_score: float = float("-inf"), heads_inner: bool = False,
                            interleaved: bool = False, form: int = 0, schedule: AttentionSchedule | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cache grown by ``torch.cat``: ``(out, keys, values)`` with ``keys = cat((past_k, k_rot), 2)``,
    ``values = cat((past_v, v.transpose(1, 2)), 2)`` and ``out`` attention over them, ``k_rot`` the
    rotated key of ``bi_rms_norm_rope``.  At decode shapes one launch copies the past, writes the step
    and attends (the copies in programs of their own), else the rotation, ``torch.cat`` and attention;
    the same bits either way."""
    check_inputs(q, k, None, False, caller="bi_rope_attention_grown")
    batch, length, kv_heads, d = k.shape
    if past_k.dim() != 4 or past_k.shape != past_v.shape or past_k.shape[:2] != (batch, kv_heads) \
            or past_k.shape[3] != d or v.shape != k.shape or past_k.dtype != q.dtype or past_v.dtype != q.dtype:
        raise ValueError(f"bi_rope_attention_grown: past keys {tuple(past_k.shape)} {past_k.dtype} and values "
                         f"{tuple(past_v.shape)} {past_v.dtype} must both be (batch, kv heads, past, dim) of key "
                         f"{tuple(k.shape)} (batch, length, kv heads, dim) and value {tuple(v.shape)}, in {q.dtype}")
    attend = dict(mask=mask, is_causal=is_causal, scale=scale, masked_score=masked_score, heads_inner=heads_inner)
    plans = _one_launch_plans(q, k, v)
    if plans is None:
        q_rot, k_rot = bi_rms_norm_rope(q, k, weights, eps, cos, sin, interleaved=interleaved, form=form)
        keys, values = torch.cat((past_k, k_rot), 2), torch.cat((past_v, v.transpose(1, 2)), 2)
        return bi_attention(q_rot, keys, values, **attend), keys, values
    keys, values = (past.new_empty((batch, kv_heads, past.shape[2] + length, d)) for past in (past_k, past_v))
    past = tuple(p if p.stride(3) == 1 else p.contiguous() for p in (past_k, past_v))
    out = _launch(q, k, v if v.stride(3) == 1 else v.contiguous(), weights, eps, cos, sin, keys, values, keys,
                  past, False, (interleaved, form), plans, schedule, **attend)
    return out, keys, values


def _one_launch_plans(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[AttentionPlan, RowPlan] | None:
    """The attention and rotation plans of the one launch, when it takes these shapes on this device."""
    batch, length, heads, d = q.shape
    device = devices.of_tensor(q)
    group = heads // k.shape[2] if heads % k.shape[2] == 0 else 0
    if not 0 < length * (group + 1) <= DECODE_ROWS or device.plan_kind == "npu" or v.shape[3] != d:
        return None
    plans = attention_plan(d, d, q.dtype, device), rope_row_plan(d, q.dtype, device)
    return plans if plans[1].block == plans[0].block_d else None


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None,
            eps: tuple[float, float] | None, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
            v_cache: torch.Tensor, index: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, append: bool,
            rotation: tuple[bool, int], plans: tuple[AttentionPlan, RowPlan],
            schedule: AttentionSchedule | None, *, mask: torch.Tensor | None,
            is_causal: bool, scale: float | None, masked_score: float, heads_inner: bool) -> torch.Tensor:
    """The one launch (and the split schedule's fold): the step's keys go to slots ``index``, or from the
    write position ``index`` on (``append``), or after the ``past`` keys and values it copies first;
    ``rotation``: (interleaved, form), as ``bi_rms_norm_rope`` takes them; ``plans``: ``_one_launch_plans``."""
    interleaved, form = rotation
    check_form(form, "bi_rope_attention")
    plan, row_plan = plans
    batch, length, heads, d = q.shape
    kv_heads, slots = k.shape[2], k_cache.shape[2]
    device = devices.of_tensor(q)
    group = heads // kv_heads
    out = attention_output(q, heads, length, d, plan, heads_inner)
    q, k = (t if t.stride(3) == 1 else t.contiguous() for t in (q, k))
    cos, sin = angles(cos, batch, length, d), angles(sin, batch, length, d)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    if mask is not None:
        mask = mask.expand(batch, heads, length, slots)
    sched = schedule or attention_schedule(plan, length * group, slots, batch * kv_heads, device,
                                           copies_past=past is not None)
    splits = plan.num_splits(slots)
    split = sched.split and splits > 1
    ws = split_workspace(plan, splits, batch * heads * length, out) if split else (out,) * 3
    past_k, past_v = past or (k_cache, v_cache)
    tiles = plan.split_keys // plan.block_n
    _rope_attention_kernel[(1 + tiles if past else 1, batch * kv_heads, splits if split else 1)](
        q, k, v, *(weights or (q, q)), cos, sin, k_cache, v_cache, index, past_k, past_v,
        mask if mask is not None else q, out, *ws, arrival_counters(q.device),
        length, slots, kv_heads, splits, scale if scale is not None else d ** -0.5, masked_score,
        *(eps or (0.0, 0.0)), d, past_k.shape[2] if past else 0,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), cos.stride(0), cos.stride(1), cos.stride(2),
        *k_cache.stride(), *v_cache.stride(), *past_k.stride()[:3], *past_v.stride()[:3],
        *(mask.stride() if mask is not None else (0, 0, 0, 0)), *out.stride(),
        DTYPE=TL_DTYPES[q.dtype], EMULATE_BF16=row_plan.fp32_io and q.dtype == torch.bfloat16,
        NORM=weights is not None, FORM=int(form), APPEND=append, GROW=past is not None, INTERLEAVED=interleaved,
        GROUP=group, HAS_MASK=mask is not None,
        MASK_IS_BOOL=mask is not None and mask.dtype == torch.bool, MASK_ROW=mask_row(mask, length, split),
        IS_CAUSAL=is_causal, SPLIT=split, SPLIT_TILES=tiles,
        ROT_ROWS=triton.next_power_of_2(length * (group + 1)), BLOCK_M=sched.block_m, BLOCK_N=plan.block_n,
        BLOCK_D=plan.block_d, UPCAST=plan.fp32_io, DENOM_DOT=plan.denominator_by_dot,
        INPUT_PRECISION=plan.input_precision, MASK_AHEAD=attention_mask_ahead(sched, split),
        **launch_options(device, sched.num_warps, sched.num_stages, fp_fusion=False, overlap=True),
    )
    if split:
        fold_splits(ws, out, kv_heads, splits, sched, plan, device, advance=(index, length) if append else None)
    return out.to(q.dtype)
