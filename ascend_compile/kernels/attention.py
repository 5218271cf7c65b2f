"""Batch-invariant attention: fixed split *size* over keys, splits folded in order.

For each query row: keys are cut into the plan's splits (aligned to key 0); a split runs the
online softmax over its ``BLOCK_N``-key tiles in order from a fresh state (running max; weighted
values ``acc`` via ``tl.dot``; the denominator via ``tl.dot`` of the same rounded weights by ones,
or ``tree_sum_rows`` on NPUs: ``AttentionPlan.denominator_by_dot``); splits are then folded in
split order by ``_fold``.  Masked keys (causal, boolean or additive masks, keys past the end)
contribute exact zeros, and folding a fully masked tile or split changes nothing bit for bit, so a
query's result depends only on the keys it sees: the same in any batch, and the same in a prefill
and in a decode step.  So tiles no row of a block sees are not run, and tiles every row sees in
full skip the visibility mask (``_tile_bounds``): the same operations on the same values.

A program's tile rows are the query heads that share one key/value head, interleaved per query
position (GQA): each key tile is loaded once per group, not once per query head.  Rows never mix
(every row's dot products, sums and folds are its own), so the packing is a schedule, not a plan.

Two schedules fold the same splits in the same order: *serial* (one program per row block walks
its splits' tiles in one loop, ``_tiles``, and causal blocks launch those with the most keys first)
and *split* (one program per (row block, split) writes the split's state, and a second
launch folds them, ``fold_splits``): decode at small batch has few row blocks, so its splits run
in parallel.  The second launch waits for the first as any overlapped launch does (0.5 us on an
H200); the last split program to arrive folding them instead (an arrival counter, then reading
every state back) cost 3.7 us a call there.

Multiplies and adds are never contracted into FMAs (``fp_fusion=False``): which pairs the compiler
contracts depends on the code around them (the fold runs in different code in the two schedules,
the score in different code per mask kind), and one contraction more or less changes a bit.  With
every product rounded on its own, a boolean mask, the additive mask made of it and ``is_causal``
give one result, and a decode step (split schedule) gives its prefill row (serial schedule).

NPU schedules launch one program per AI core at most, each looping over (row block, batch x
key/value head) pairs with serial splits (``PERSISTENT``), and load key tiles along the head dim,
their unit stride.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.overlap import wait_for_inputs
from ascend_compile.kernels.plans import (
    AttentionPlan,
    AttentionSchedule,
    attention_mask_ahead,
    attention_plan,
    attention_schedule,
    launch_options,
)
from ascend_compile.kernels.tree import tree_sum_rows

#: Columns of the ones block the denominator is a dot with (``tl.dot``'s narrowest operand).
DENOM_COLS = tl.constexpr(16)


#: log2(e) as the fp32 constant ``tl.exp`` multiplies by.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _exp(x):
    """e^x as ``tl.exp`` computes it, 2^(x log2 e), except that results below 2^-126 are zero: on
    sm_90 the ftz ``ex2`` is one instruction where ``tl.exp``'s keeps subnormal results with three
    more per element (H100: 1 x 2048 causal prefill 0.93x the time).  Such a weight is below 2^-126
    of the row's largest, which weighs 1."""
    return tl.math.exp2(x * LOG2E)


@triton.jit
def _fold(big_m, big_l, big_a, m, denoms, a):
    """Fold one split's state into the running state (the only way splits are ever combined).
    Denominators are columns of equal sums (``_empty_state``), folded column by column; one column
    is taken when a state is stored."""
    new_m = tl.maximum(big_m, m)
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    old_scale = _exp(big_m - shift)
    scale = _exp(m - shift)
    return (new_m, big_l * old_scale[:, None] + denoms * scale[:, None],
            big_a * old_scale[:, None] + a * scale[:, None])


@triton.jit
def _fold_if(cond, big_m, big_l, big_a, m, denoms, a):
    """``_fold`` where ``cond`` holds, else the running state unchanged."""
    new_m, new_l, new_a = _fold(big_m, big_l, big_a, m, denoms, a)
    return tl.where(cond, new_m, big_m), tl.where(cond, new_l, big_l), tl.where(cond, new_a, big_a)


@triton.jit
def _stored_state(ws_m, ws_l, ws_acc, part, num_splits, bkv, Lq, group, rows, live, dv, BLOCK_DV: tl.constexpr):
    """The state split ``part``'s program stored (an empty one past the last split)."""
    state = (part * tl.num_programs(1) + bkv) * Lq * group + rows
    # The split test as a vector: Triton's interpreter takes no mask made of a vector & a scalar.
    keep = live & (tl.zeros_like(rows) + part < num_splits)
    m = tl.load(ws_m + state, mask=keep, other=float("-inf"), cache_modifier=".cg")
    denom = tl.load(ws_l + state, mask=keep, other=0.0, cache_modifier=".cg")
    acc = tl.load(ws_acc + state[:, None] * BLOCK_DV + dv[None, :], mask=keep[:, None], other=0.0, cache_modifier=".cg")
    return m, denom[:, None], acc


@triton.jit
def _empty_state(BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, COLS: tl.constexpr):
    """The state nothing was folded into yet: max -inf, denominators (``COLS`` columns holding the
    same sums) and weighted values zero."""
    return (tl.full((BLOCK_M,), float("-inf"), tl.float32), tl.zeros((BLOCK_M, COLS), tl.float32),
            tl.zeros((BLOCK_M, BLOCK_DV), tl.float32))


@triton.jit
def _visible(keys, Lk, live, pos, IS_CAUSAL: tl.constexpr):
    """(row, key) pairs that exist and, when ``IS_CAUSAL``, lie at or before the row's position."""
    visible = (keys[None, :] < Lk) & live[:, None]
    if IS_CAUSAL:
        visible = visible & (keys[None, :] <= pos[:, None])
    return visible


@triton.jit
def _mask_tile(mask_rows, keys, stride_mk, visible, keys_in, MASK_ROW: tl.constexpr):
    """The mask's (row, key) entries where ``visible``, zero elsewhere.  ``MASK_ROW``: every row's
    entries are the one row at ``mask_rows`` (a decode step's mask, shared by the heads), read once
    as a vector where ``keys_in``; entries no row sees are discarded by the caller."""
    if MASK_ROW:
        tile = tl.load(mask_rows + keys * stride_mk, mask=keys_in, other=0)[None, :]
    else:
        tile = tl.load(mask_rows[:, None] + keys[None, :] * stride_mk, mask=visible, other=0)
    return tile


@triton.jit
def _key_slots(keys, Lk, table_row, PAGE: tl.constexpr):
    """Where key positions lie in memory, in rows of the key tensor: the positions themselves, or in a
    paged cache (``PAGE`` keys a block) the slots the sequence's block-table row maps them to."""
    slots = keys
    if PAGE:
        blocks = tl.load(table_row + keys // PAGE, mask=keys < Lk, other=0).to(tl.int32)
        slots = blocks * PAGE + keys % PAGE
    return slots


@triton.jit
def _tile_bounds(block, Lk, group, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(interior, stop) of row block ``block``'s key tiles: every row sees every key of the tiles
    before ``interior`` (they take no visibility mask), no row sees a key of the tiles from ``stop``
    on (they hold only masked keys or none: running them would change nothing, so they are not run)."""
    interior = Lk // BLOCK_N
    stop = tl.cdiv(Lk, BLOCK_N)
    if IS_CAUSAL:  # a block's rows lie at positions block * BLOCK_M // group up to its last row's
        interior = tl.minimum(interior, (block * BLOCK_M // group + 1) // BLOCK_N)
        stop = tl.minimum(stop, ((block * BLOCK_M + BLOCK_M - 1) // group) // BLOCK_N + 1)
    return interior, stop


@triton.jit
def _scores(q, k_base, v_base, bias, pos, live, t, Lk, sm_scale, masked_score,
            stride_kl, stride_kd, stride_vl, stride_vd, D, DV, table_row,
            HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr, VISIBILITY: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr,
            INPUT_PRECISION: tl.constexpr, K_T: tl.constexpr, PAGE: tl.constexpr,
            past_k, past_v, past, spk_l, spv_l, GROWN: tl.constexpr):
    """Key tile ``t``'s scores and its value tile; row r is query position ``pos[r]``, ``bias`` its
    mask tile.  A boolean mask adds ``masked_score`` where it is False (-inf: the key is skipped).
    ``VISIBILITY``: keys a row does not see (past the end, after it when causal, dead rows) score
    -inf; without it every key of the tile is seen.  ``GROWN``: keys before ``past`` are read at
    ``past_k``/``past_v`` (rows ``spk_l``/``spv_l`` apart), the others at ``k_base``/``v_base``."""
    keys = t * BLOCK_N + tl.arange(0, BLOCK_N)
    dk = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    slots = _key_slots(keys, Lk, table_row, PAGE)
    k_rows = k_base + slots * stride_kl
    v_rows = v_base + slots * stride_vl
    if GROWN:
        k_rows = tl.where(keys < past, past_k + keys * spk_l, k_rows)
        v_rows = tl.where(keys < past, past_v + keys * spv_l, v_rows)
    if K_T:  # NPU: load keys along their unit stride (the head dim), transpose in the UB
        k = tl.trans(tl.load(k_rows[:, None] + dk[None, :] * stride_kd,
                             mask=(keys[:, None] < Lk) & (dk[None, :] < D), other=0.0))
    else:
        k = tl.load(k_rows[None, :] + dk[:, None] * stride_kd, mask=(keys[None, :] < Lk) & (dk[:, None] < D),
                    other=0.0)
    v = tl.load(v_rows[:, None] + dv[None, :] * stride_vd, mask=(keys[:, None] < Lk) & (dv[None, :] < DV),
                other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, k, input_precision=INPUT_PRECISION) * sm_scale
    if HAS_MASK:
        if MASK_IS_BOOL:  # the additive mask where(mask, 0, masked_score), never materialized
            s = tl.where(bias != 0, s, s + masked_score)
        else:
            s = s + bias.to(tl.float32)
    if VISIBILITY:
        s = tl.where(_visible(keys, Lk, live, pos, IS_CAUSAL), s, float("-inf"))
    return s, v


@triton.jit
def _accumulate(s, v, m, denoms, acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DENOM_DOT: tl.constexpr,
                INPUT_PRECISION: tl.constexpr):
    """A key tile's scores ``s`` and values ``v`` into a split's online-softmax state (max,
    denominators, weighted values)."""
    new_m = tl.maximum(m, tl.max(s, axis=1))
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    alpha = _exp(m - shift)
    p = _exp(s - shift[:, None])
    if DENOM_DOT:
        p = p.to(v.dtype)
        sums = tl.dot(p, tl.full((BLOCK_N, DENOM_COLS), 1.0, v.dtype), input_precision=INPUT_PRECISION)
    else:
        sums = tl.reshape(tree_sum_rows(p, BLOCK_M, BLOCK_N), (BLOCK_M, 1))
        p = p.to(v.dtype)
    return new_m, denoms * alpha[:, None] + sums, acc * alpha[:, None] + tl.dot(p, v, input_precision=INPUT_PRECISION)


@triton.jit
def _tiles(q, k_base, v_base, mask_rows, pos, live, start, stop, Lk, sm_scale, masked_score, m, denoms, acc,
           big_m, big_l, big_a, stride_kl, stride_kd, stride_vl, stride_vd, stride_mk, D, DV, table_row,
           HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, MASK_ROW: tl.constexpr, IS_CAUSAL: tl.constexpr,
           VISIBILITY: tl.constexpr, FOLD: tl.constexpr, SPLIT_TILES: tl.constexpr, BLOCK_M: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr,
           DENOM_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr, K_T: tl.constexpr, PAGE: tl.constexpr,
           MASK_AHEAD: tl.constexpr, past_k, past_v, past, spk_l, spv_l, GROWN: tl.constexpr):
    """Key tiles ``start`` to ``stop`` into the split state (m, denoms, acc), in order, in one loop.
    ``FOLD`` (a walk from key 0): at the first tile of every split after the first, the state of the
    split before is folded into the running state (big_m, big_l, big_a) and the split begins afresh;
    the caller folds the last split's.  One loop over every split's tiles keeps the pipeliner loading
    ahead across splits.  The fold comes after the tile's scores: their wait covers every dot issued
    before, so no accumulator of a ``wgmma`` in flight is read or reset (a fold after a split's last
    dots made ptxas serialize every ``wgmma`` of the loop on sm_90: decision 0031).  The mask row of
    row r starts at ``mask_rows[r]`` (at ``mask_rows`` for all rows when ``MASK_ROW``); ``MASK_AHEAD``:
    mask tiles are read a tile ahead (``plans.attention_mask_ahead``), else as the loop reaches them."""
    if HAS_MASK and MASK_AHEAD:
        ahead = tl.minimum(Lk, stop * BLOCK_N)  # no mask entry is read past the loop's last tile
        keys = start * BLOCK_N + tl.arange(0, BLOCK_N)
        bias_next = _mask_tile(mask_rows, keys, stride_mk, _visible(keys, ahead, live, pos, IS_CAUSAL), keys < ahead,
                               MASK_ROW)
    for t in range(start, stop):
        bias = 0.0
        if HAS_MASK and MASK_AHEAD:
            bias = bias_next
            keys = (t + 1) * BLOCK_N + tl.arange(0, BLOCK_N)
            bias_next = _mask_tile(mask_rows, keys, stride_mk, _visible(keys, ahead, live, pos, IS_CAUSAL),
                                   keys < ahead, MASK_ROW)
        elif HAS_MASK:
            keys = t * BLOCK_N + tl.arange(0, BLOCK_N)
            bias = _mask_tile(mask_rows, keys, stride_mk, _visible(keys, Lk, live, pos, IS_CAUSAL), keys < Lk,
                              MASK_ROW)
        s, v = _scores(q, k_base, v_base, bias, pos, live, t, Lk, sm_scale, masked_score, stride_kl, stride_kd,
                       stride_vl, stride_vd, D, DV, table_row, HAS_MASK, MASK_IS_BOOL, IS_CAUSAL, VISIBILITY,
                       BLOCK_N, BLOCK_D, BLOCK_DV, UPCAST, INPUT_PRECISION, K_T, PAGE, past_k, past_v, past, spk_l,
                       spv_l, GROWN)
        if FOLD:
            if (t % SPLIT_TILES == 0) & (t > 0):
                big_m, big_l, big_a = _fold(big_m, big_l, big_a, m, denoms, acc)
                m, denoms, acc = _empty_state(BLOCK_M, BLOCK_DV, DENOM_COLS if DENOM_DOT else 1)
        m, denoms, acc = _accumulate(s, v, m, denoms, acc, BLOCK_M, BLOCK_N, DENOM_DOT, INPUT_PRECISION)
    return m, denoms, acc, big_m, big_l, big_a


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, ws_m, ws_l, ws_acc, table_ptr, lens_ptr,
                      Lq, Lk, KVH, BKV, sm_scale, masked_score, D, DV,
                      sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                      sm_b, sm_h, sm_q, sm_k, so_b, so_h, so_l, so_d, st_b,
                      GROUP: tl.constexpr, HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr,
                      MASK_ROW: tl.constexpr, IS_CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
                      SPLIT_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DENOM_DOT: tl.constexpr,
                      INPUT_PRECISION: tl.constexpr, PERSISTENT: tl.constexpr, PAGE: tl.constexpr = 0,
                      HAS_LENS: tl.constexpr = False, MASK_AHEAD: tl.constexpr = False,
                      OVERLAP: tl.constexpr = False):
    if OVERLAP:  # launched early (overlap.py)
        wait_for_inputs()
    if PERSISTENT:  # NPU: programs loop over (row block, batch x kv head) work items; splits serial
        blocks = (Lq * GROUP + BLOCK_M - 1) // BLOCK_M
        for w in range(tl.program_id(0), blocks * BKV, tl.num_programs(0)):
            _attention_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, ws_m, ws_l, ws_acc, table_ptr, lens_ptr,
                             w % blocks, w // blocks, 0, Lq, Lk, KVH, GROUP, sm_scale, masked_score, D, DV,
                             sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                             sm_b, sm_h, sm_q, sm_k, so_b, so_h, so_l, so_d, st_b, HAS_MASK, MASK_IS_BOOL, MASK_ROW,
                             IS_CAUSAL, False, SPLIT_TILES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, UPCAST, DENOM_DOT,
                             INPUT_PRECISION, True, PAGE, HAS_LENS, MASK_AHEAD)
    else:
        block, bkv = tl.program_id(0), tl.program_id(1)
        if IS_CAUSAL and not SPLIT:  # launch order: blocks by their keys, most first, so the last wave's are few
            launch = bkv * tl.num_programs(0) + block
            block = tl.num_programs(0) - 1 - launch // tl.num_programs(1)
            bkv = launch % tl.num_programs(1)
        _attention_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, ws_m, ws_l, ws_acc, table_ptr, lens_ptr,
                         block, bkv, tl.program_id(2),
                         Lq, Lk, KVH, GROUP, sm_scale, masked_score, D, DV,
                         sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                         sm_b, sm_h, sm_q, sm_k, so_b, so_h, so_l, so_d, st_b, HAS_MASK, MASK_IS_BOOL, MASK_ROW,
                         IS_CAUSAL, SPLIT, SPLIT_TILES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, UPCAST, DENOM_DOT,
                         INPUT_PRECISION, False, PAGE, HAS_LENS, MASK_AHEAD)


@triton.jit
def _group_rows(block, Lq, group, BLOCK_M: tl.constexpr):
    """Row r of a block is query position ``r // group`` of the group's head ``r % group``: one key
    tile serves every query head that reads it (GQA reads each key once per group, not per head)."""
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    return rows, rows // group, rows % group, rows < Lq * group


@triton.jit
def _attention_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, ws_m, ws_l, ws_acc, table_ptr, lens_ptr,
                     block, bkv, split_id, Lq, Lk, KVH, group, sm_scale, masked_score, D, DV,
                     sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                     sm_b, sm_h, sm_q, sm_k, so_b, so_h, so_l, so_d, st_b,
                     HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, MASK_ROW: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, SPLIT: tl.constexpr, SPLIT_TILES: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, DENOM_DOT: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, K_T: tl.constexpr, PAGE: tl.constexpr, HAS_LENS: tl.constexpr,
                     MASK_AHEAD: tl.constexpr):
    """Row block ``block`` of batch x key/value head ``bkv`` (and, when ``SPLIT``, key split
    ``split_id`` of it).  ``PAGE``: keys and values are a paged cache read through row ``b`` of the block
    table; ``HAS_LENS``: sequence ``b`` has ``lens_ptr[b]`` keys (the keys past them are not read)."""
    b = bkv // KVH
    kvh = bkv % KVH
    if HAS_LENS:
        Lk = tl.minimum(tl.load(lens_ptr + b).to(tl.int32), Lk)
    rows, pos, g, live = _group_rows(block, Lq, group, BLOCK_M)
    h = kvh * group + g
    dk = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * sq_b + h[:, None] * sq_h + pos[:, None] * sq_l + dk[None, :] * sq_d,
                mask=live[:, None] & (dk[None, :] < D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    _attend(q, k_ptr + b * sk_b + kvh * sk_h, v_ptr + b * sv_b + kvh * sv_h,
            _mask_rows(mask_ptr, b, h, pos, sm_b, sm_h, sm_q, MASK_ROW), out_ptr,
            b * so_b + h * so_h + pos * so_l, ws_m, ws_l, ws_acc, block, bkv, split_id, rows, pos, live, Lq, Lk, group,
            sm_scale, masked_score, D, DV, sk_l, sk_d, sv_l, sv_d, sm_k, so_d, table_ptr + b * st_b,
            HAS_MASK, MASK_IS_BOOL, MASK_ROW, IS_CAUSAL, SPLIT, SPLIT_TILES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
            UPCAST, DENOM_DOT, INPUT_PRECISION, K_T, PAGE, MASK_AHEAD)


@triton.jit
def _mask_rows(mask_ptr, b, h, pos, sm_b, sm_h, sm_q, MASK_ROW: tl.constexpr):
    """Where each row's mask row starts (batch ``b``, head ``h[r]``, position ``pos[r]``), or with
    ``MASK_ROW`` the one mask row every row of the program reads."""
    rows = mask_ptr + b * sm_b
    if not MASK_ROW:
        rows += h * sm_h + pos * sm_q
    return rows


@triton.jit
def _attend(q, k_base, v_base, mask_rows, out_ptr, out_rows, ws_m, ws_l, ws_acc, block, bkv, split_id,
            rows, pos, live, Lq, Lk, group, sm_scale, masked_score, D, DV,
            sk_l, sk_d, sv_l, sv_d, sm_k, so_d, table_row,
            HAS_MASK: tl.constexpr, MASK_IS_BOOL: tl.constexpr, MASK_ROW: tl.constexpr, IS_CAUSAL: tl.constexpr,
            SPLIT: tl.constexpr, SPLIT_TILES: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
            UPCAST: tl.constexpr, DENOM_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr, K_T: tl.constexpr,
            PAGE: tl.constexpr = 0, MASK_AHEAD: tl.constexpr = False, past_k=None, past_v=None, past=0, spk_l=0,
            spv_l=0, GROWN: tl.constexpr = False):
    """Attention of query rows ``q`` (loaded) of one row block over the keys at ``k_base``/``v_base``
    (those before ``past`` at ``past_k``/``past_v`` when ``GROWN``, as ``_scores`` reads them):
    split ``split_id``'s state, for ``fold_splits`` (``SPLIT``), or every split folded in order, the
    result to ``out_ptr + out_rows``.  Serially, the tiles every row sees in full run first, without
    a visibility mask, then the others with it: the same operations on the same values, so the same bits."""
    dv = tl.arange(0, BLOCK_DV)
    interior, stop = _tile_bounds(block, Lk, group, IS_CAUSAL, BLOCK_M, BLOCK_N)
    start = 0
    # ``DENOM_DOT`` (``AttentionPlan.denominator_by_dot``): the denominator is a dot too, of the weights
    # acc sums by a block of ones; every column of the denominators holds the same sums.
    m, denoms, acc = _empty_state(BLOCK_M, BLOCK_DV, DENOM_COLS if DENOM_DOT else 1)
    big_m, big_l, big_a = _empty_state(BLOCK_M, BLOCK_DV, DENOM_COLS if DENOM_DOT else 1)
    if SPLIT:  # one split's few tiles (decode), in one loop
        start = split_id * SPLIT_TILES
        stop = tl.minimum(stop, start + SPLIT_TILES)
        interior = start
    else:
        interior = tl.minimum(interior, stop)
        m, denoms, acc, big_m, big_l, big_a = _tiles(
            q, k_base, v_base, mask_rows, pos, live, start, interior, Lk, sm_scale, masked_score, m, denoms, acc,
            big_m, big_l, big_a, sk_l, sk_d, sv_l, sv_d, sm_k, D, DV, table_row, HAS_MASK, MASK_IS_BOOL, MASK_ROW,
            IS_CAUSAL, False, True, SPLIT_TILES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, UPCAST, DENOM_DOT,
            INPUT_PRECISION, K_T, PAGE, MASK_AHEAD, past_k, past_v, past, spk_l, spv_l, GROWN)
    m, denoms, acc, big_m, big_l, big_a = _tiles(
        q, k_base, v_base, mask_rows, pos, live, interior, stop, Lk, sm_scale, masked_score, m, denoms, acc,
        big_m, big_l, big_a, sk_l, sk_d, sv_l, sv_d, sm_k, D, DV, table_row, HAS_MASK, MASK_IS_BOOL, MASK_ROW,
        IS_CAUSAL, True, not SPLIT, SPLIT_TILES, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, UPCAST, DENOM_DOT,
        INPUT_PRECISION, K_T, PAGE, MASK_AHEAD, past_k, past_v, past, spk_l, spv_l, GROWN)
    if SPLIT:
        state = (split_id * tl.num_programs(1) + bkv) * Lq * group + rows
        tl.store(ws_m + state, m, mask=live)
        tl.store(ws_l + state, tl.max(denoms, axis=1), mask=live)
        tl.store(ws_acc + state[:, None] * BLOCK_DV + dv[None, :], acc, mask=live[:, None])
    else:  # the last split's state (an empty one where no tile ran: its fold changes nothing)
        big_m, big_l, big_a = _fold(big_m, big_l, big_a, m, denoms, acc)
        _store_rows(out_ptr, big_a, tl.max(big_l, axis=1), out_rows, live, dv, so_d, DV)


@triton.jit
def _store_rows(out_ptr, acc, denom, row_offsets, live, dv, so_d, DV):
    out = acc / tl.where(live, denom, 1.0)[:, None]  # padding rows: no 0/0
    tl.store(out_ptr + row_offsets[:, None] + dv[None, :] * so_d, out.to(out_ptr.dtype.element_ty),
             mask=live[:, None] & (dv[None, :] < DV))


@triton.jit
def _fold_splits_kernel(ws_m, ws_l, ws_acc, out_ptr, index_ptr, advance, Lq, KVH, num_splits, DV,
                        so_b, so_h, so_l, so_d, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
                        ADVANCE: tl.constexpr, OVERLAP: tl.constexpr = False):
    """Row block ``program_id(0)`` of batch x key/value head ``program_id(1)``: its splits' states
    folded in split order, the result stored.  ``ADVANCE``: the first program then adds ``advance``
    to the cache's write position at ``index_ptr``, which the split programs read."""
    if OVERLAP:  # launched early (overlap.py)
        wait_for_inputs()
    if ADVANCE:  # read at entry with the states, so that program 0's store at its end waits on no load
        start = tl.load(index_ptr)
    bkv = tl.program_id(1)
    rows, pos, g, live = _group_rows(tl.program_id(0), Lq, GROUP, BLOCK_M)
    dv = tl.arange(0, BLOCK_DV)
    big_m, big_l, big_a = _empty_state(BLOCK_M, BLOCK_DV, 1)
    # Four splits' states are loaded at once, then folded one by one in split order: the loads'
    # latency is paid once per four splits, not once per split.
    for first in range(0, num_splits, 4):
        s0 = _stored_state(ws_m, ws_l, ws_acc, first, num_splits, bkv, Lq, GROUP, rows, live, dv, BLOCK_DV)
        s1 = _stored_state(ws_m, ws_l, ws_acc, first + 1, num_splits, bkv, Lq, GROUP, rows, live, dv, BLOCK_DV)
        s2 = _stored_state(ws_m, ws_l, ws_acc, first + 2, num_splits, bkv, Lq, GROUP, rows, live, dv, BLOCK_DV)
        s3 = _stored_state(ws_m, ws_l, ws_acc, first + 3, num_splits, bkv, Lq, GROUP, rows, live, dv, BLOCK_DV)
        big_m, big_l, big_a = _fold(big_m, big_l, big_a, s0[0], s0[1], s0[2])
        big_m, big_l, big_a = _fold_if(first + 1 < num_splits, big_m, big_l, big_a, s1[0], s1[1], s1[2])
        big_m, big_l, big_a = _fold_if(first + 2 < num_splits, big_m, big_l, big_a, s2[0], s2[1], s2[2])
        big_m, big_l, big_a = _fold_if(first + 3 < num_splits, big_m, big_l, big_a, s3[0], s3[1], s3[2])
    h = (bkv % KVH) * GROUP + g
    _store_rows(out_ptr, big_a, tl.max(big_l, axis=1), (bkv // KVH) * so_b + h * so_h + pos * so_l, live, dv, so_d, DV)
    if ADVANCE:
        if (tl.program_id(0) == 0) & (bkv == 0):
            tl.store(index_ptr, start + advance)


def bi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                 is_causal: bool = False, scale: float | None = None, *, heads_inner: bool = False,
                 masked_score: float = float("-inf"), schedule: AttentionSchedule | None = None,
                 block_tables: torch.Tensor | None = None, seq_lens: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, mask, is_causal=..., scale=...)`` for 4-D
    (batch, heads, length, dim) inputs, GQA when k/v have fewer heads, batch-invariantly.

    A boolean ``mask`` stands for the additive mask ``where(mask, 0, masked_score)``: -inf (SDPA's
    meaning) skips the key; a finite score (cuDNN's conversion uses -65504) gives the bits of that
    additive mask, rows with every key masked included.

    ``heads_inner`` lays the output out in memory as (batch, length, heads, dim), as the CPU and
    flash SDPA kernels do (graphs traced on them view it that way).

    ``block_tables`` (batch, blocks a sequence can have): ``k`` and ``v`` are a paged cache, (blocks, keys a
    block, heads, dim), and sequence ``b``'s keys are its blocks' in table order -- the keys
    ``k[block_tables].flatten(1, 2).transpose(1, 2)`` holds, read in place, so with the same bits.
    ``seq_lens`` (batch,): sequence ``b`` sees its first ``seq_lens[b]`` keys, as a mask
    ``arange(keys) < seq_lens[:, None]`` would let it, and the keys past them are not read.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"bi_attention takes 4-D q, k, v; got {q.dim()}-D, {k.dim()}-D, {v.dim()}-D")
    batch, heads, lq, d = q.shape
    paged = _paged(k, v, block_tables) if block_tables is not None else None
    kv_heads, lk, dv = (k.shape[2], block_tables.shape[1] * k.shape[1], v.shape[3]) if paged else \
        (k.shape[1], k.shape[2], v.shape[3])
    if heads % kv_heads:
        raise ValueError(f"bi_attention: {heads} query heads are not a multiple of {kv_heads} key/value heads")
    device = devices.of_tensor(q)
    plan: AttentionPlan = attention_plan(d, dv, q.dtype, device)
    out = attention_output(q, heads, lq, dv, plan, heads_inner)
    if out.numel() == 0:
        return out.to(q.dtype)
    group = heads // kv_heads
    sched = schedule or attention_schedule(plan, lq * group, lk, batch * kv_heads, device, mask_kind(mask))
    if mask is not None:
        mask = mask.expand(batch, heads, lq, lk)
    mask_arg = mask if mask is not None else q
    mask_strides = mask.stride() if mask is not None else (0, 0, 0, 0)
    splits = plan.num_splits(lk)
    blocks = triton.cdiv(lq * group, sched.block_m)
    split = sched.split and not sched.programs and splits > 1
    ws = split_workspace(plan, splits, batch * heads * lq, out) if split else (out,) * 3
    grid = (sched.programs,) if sched.programs else (blocks, batch * kv_heads, splits if split else 1)
    k_strides, v_strides, table = paged or (k.stride(), v.stride(), q)
    _attention_kernel[grid](
        q, k, v, mask_arg, out, *ws, table, seq_lens if seq_lens is not None else q,
        lq, lk, kv_heads, batch * kv_heads, scale if scale is not None else d ** -0.5, masked_score, d, dv,
        *q.stride(), *k_strides, *v_strides, *mask_strides, *out.stride(), table.stride(0) if paged else 0,
        GROUP=group, HAS_MASK=mask is not None, MASK_IS_BOOL=mask is not None and mask.dtype == torch.bool,
        MASK_ROW=mask_row(mask, lq, split), IS_CAUSAL=is_causal, SPLIT=split,
        SPLIT_TILES=plan.split_keys // plan.block_n, BLOCK_M=sched.block_m, BLOCK_N=plan.block_n,
        BLOCK_D=plan.block_d, BLOCK_DV=plan.block_dv,
        UPCAST=plan.fp32_io, DENOM_DOT=plan.denominator_by_dot, INPUT_PRECISION=plan.input_precision,
        PERSISTENT=sched.programs > 0, PAGE=k.shape[1] if paged else 0, HAS_LENS=seq_lens is not None,
        MASK_AHEAD=attention_mask_ahead(sched, split),
        **launch_options(device, sched.num_warps, sched.num_stages, fp_fusion=False, overlap=True),
    )
    if split:
        fold_splits(ws, out, kv_heads, splits, sched, plan, device)
    return out.to(q.dtype)


def _paged(k_cache: torch.Tensor, v_cache: torch.Tensor,
           block_tables: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], torch.Tensor]:
    """(key strides, value strides, table) of a paged cache as the kernel reads it: (batch, head, key, dim)
    strides with no batch stride (a key's slot comes from the table) and a key stride that steps over
    block boundaries; the table with unit stride along a sequence's blocks."""
    for name, cache in (("key", k_cache), ("value", v_cache)):
        if cache.stride(0) != cache.shape[1] * cache.stride(1):
            raise ValueError(f"bi_attention: the paged {name} cache's blocks must lie one after another "
                             f"(stride {cache.stride(0)} for blocks of {cache.shape[1]} x {cache.stride(1)})")
    if block_tables.dim() != 2 or block_tables.dtype.is_floating_point:
        raise ValueError(f"bi_attention: block_tables must be a 2-D integer tensor, got {tuple(block_tables.shape)} "
                         f"{block_tables.dtype}")
    strides = [(0, c.stride(2), c.stride(1), c.stride(3)) for c in (k_cache, v_cache)]
    return strides[0], strides[1], block_tables if block_tables.stride(1) == 1 else block_tables.contiguous()


def mask_kind(mask: torch.Tensor | None) -> str | None:
    """What attention's scores read of ``mask``: nothing (None), a ``"boolean"`` or an ``"additive"`` mask."""
    if mask is None:
        return None
    return "boolean" if mask.dtype == torch.bool else "additive"


def mask_row(mask: torch.Tensor | None, lq: int, split: bool) -> bool:
    """Whether attention reads ``mask`` (expanded to (batch, heads, lq, keys)) as one vector per key
    tile: when every query row of it is one row per batch (a decode step's mask shared by the heads)
    and the schedule splits the keys.  Serial programs read it per row, as other masks (H200, the
    decode shapes of docs/decisions/0013-attention-mask-reads.md: the vector read 0.3 us faster at
    bs 1-8, split; at bs 32, serial, 29.0 against 23.7 us).  The values read are the same either
    way, so are the bits."""
    return (split and mask is not None and (mask.shape[1] == 1 or mask.stride(1) == 0)
            and (lq == 1 or mask.stride(2) == 0))


def attention_output(q: torch.Tensor, heads: int, lq: int, dv: int, plan: AttentionPlan,
                     heads_inner: bool) -> torch.Tensor:
    """The (batch, heads, length, dv) output, laid out as (batch, length, heads, dv) when ``heads_inner``."""
    dtype = torch.float32 if plan.fp32_io else q.dtype
    if heads_inner:
        return torch.empty((q.shape[0], lq, heads, dv), dtype=dtype, device=q.device).transpose(1, 2)
    return torch.empty((q.shape[0], heads, lq, dv), dtype=dtype, device=q.device)


def split_workspace(plan: AttentionPlan, splits: int, rows: int,
                    out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each split's state of ``rows`` query rows: max, denominator, weighted values."""
    ws_m = torch.empty(splits * rows, dtype=torch.float32, device=out.device)
    ws_acc = torch.empty(splits * rows * plan.block_dv, dtype=torch.float32, device=out.device)
    return ws_m, torch.empty_like(ws_m), ws_acc


def fold_splits(ws: tuple[torch.Tensor, torch.Tensor, torch.Tensor], out: torch.Tensor, kv_heads: int, splits: int,
                sched: AttentionSchedule, plan: AttentionPlan, device: devices.Device,
                advance: tuple[torch.Tensor, int] | None = None) -> None:
    """The split schedule's second launch: each row block's split states (``ws``) folded in order into
    ``out`` (batch, heads, length, dv).  ``advance``: a cache's write position and the step's length,
    added to it once the split programs that read it are done (``bi_rope_attention`` appending)."""
    batch, heads, lq, dv = out.shape
    group = heads // kv_heads
    index, length = advance or (out, 0)
    _fold_splits_kernel[(triton.cdiv(lq * group, sched.block_m), batch * kv_heads)](
        *ws, out, index, length, lq, kv_heads, splits, dv, *out.stride(), GROUP=group, BLOCK_M=sched.block_m,
        BLOCK_DV=plan.block_dv, ADVANCE=advance is not None,
        **launch_options(device, sched.num_warps, fp_fusion=False, overlap=True),
    )
