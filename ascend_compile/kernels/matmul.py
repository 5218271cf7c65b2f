"""Batch-invariant matmul: fixed-chunk split-K Triton template for mm, addmm and bmm.

One kernel serves every schedule of a plan (see ``plans.py``).  K is cut into the plan's chunks;
each chunk is accumulated from zero with ``tl.dot`` over ``BLOCK_K`` blocks, and the chunk
partials are added in chunk order in fp32, by ``_add_chunk`` alone.  Two schedules produce exactly
those additions:

* serial (large M): one program per output tile walks the chunks and adds each partial as it
  finishes;
* split (small M, too few tiles to fill the device): one program per (tile, chunk) writes its
  partial to a workspace and bumps the tile's arrival counter; the program that arrives last adds
  the partials in chunk order, applies the bias and writes the tile (``arrival.py``), so the split
  costs no second launch.

A split program may load its chunk of the weight before it waits for the kernel before it
(``preload_weight``, decode rows), then sums it as the other schedules do.

A serial program may also keep 2 or 4 chunks in flight (the schedule's ``chunks_in_flight``): each chunk
still sums its blocks in order from zero, in its own accumulator, and the partials join the total
in chunk order.  The chunks' MMA chains then overlap, which is what a decode tile waits on.

Operands are read through their strides, so a transposed weight (``linear`` lowers to
``mm(x, permute(w))``) is never copied.  NPU schedules (``plans.py``) launch one program per AI
core at most, each walking output tiles in a loop (``PERSISTENT``), and load an operand whose unit
stride runs along the other axis (the transposed weight of the seed's "ub overflow") in its
memory order, then transpose the tile (``A_T``/``B_T``): same values, same bits, a UB-sized load.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl

from ascend_compile import devices
from ascend_compile.kernels.addresses import element_distance
from ascend_compile.kernels.arrival import COUNTERS_PER_DEVICE, arrival_counters
from ascend_compile.kernels.gated_activation import GATED_ACTIVATIONS, gate_times_up, gated_activation
from ascend_compile.kernels.overlap import PREFETCH_BYTES, prefetch_rows, wait_for_inputs
from ascend_compile.kernels.plans import (
    PRELOAD_CHUNK_BLOCKS,
    MatmulPlan,
    MatmulSchedule,
    gated_in_one_launch,
    launch_options,
    matmul_operand_readable,
    matmul_plan,
    matmul_schedule,
)
from ascend_compile.kernels.rounding import TL_DTYPES, round_to

logger = logging.getLogger(__name__)

_EAGER_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": torch.nn.functional.silu, "gelu_tanh": functools.partial(torch.nn.functional.gelu, approximate="tanh")}


@triton.jit
def _load_a(a_ptr, rm, k, M, K, stride_am, stride_ak,
            EVEN_K: tl.constexpr, UPCAST: tl.constexpr, A_T: tl.constexpr):
    """A's (BLOCK_M, BLOCK_K) block at rows ``rm`` and K offsets ``k``, zero past M and K."""
    if A_T:  # A's unit stride runs along M: load (BLOCK_K, BLOCK_M) in memory order, transpose
        a = tl.trans(tl.load(a_ptr + k[:, None] * stride_ak + rm[None, :] * stride_am,
                             mask=(k[:, None] < K) & (rm[None, :] < M), other=0.0))
    elif EVEN_K:  # every chunk is full: only rows need masks
        a = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :] * stride_ak, mask=rm[:, None] < M, other=0.0)
    else:
        a = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=(rm[:, None] < M) & (k[None, :] < K), other=0.0)
    if UPCAST:
        a = a.to(tl.float32)
    return a


@triton.jit
def _load_b(b_ptr, rn, k, N, K, stride_bk, stride_bn,
            EVEN_K: tl.constexpr, UPCAST: tl.constexpr, B_T: tl.constexpr):
    """B's (BLOCK_K, BLOCK_N) block at K offsets ``k`` and columns ``rn``, zero past K and N."""
    if B_T:  # B's unit stride runs along K (a transposed weight): load (BLOCK_N, BLOCK_K), transpose
        b = tl.trans(tl.load(b_ptr + rn[:, None] * stride_bn + k[None, :] * stride_bk,
                             mask=(rn[:, None] < N) & (k[None, :] < K), other=0.0))
    elif EVEN_K:
        b = tl.load(b_ptr + k[:, None] * stride_bk + rn[None, :] * stride_bn, mask=rn[None, :] < N, other=0.0)
    else:
        b = tl.load(b_ptr + k[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(k[:, None] < K) & (rn[None, :] < N), other=0.0)
    if UPCAST:
        b = b.to(tl.float32)
    return b


@triton.jit
def _load_described(a_desc, b_desc, m0, n0, k0, UPCAST: tl.constexpr, B_T: tl.constexpr):
    """A's and B's blocks at tile corner (``m0``, ``n0``) and K offset ``k0``, loaded by the tensor memory
    accelerator (``TMA``), which fills past M, N and K with zeros as the masked loads do."""
    a = a_desc.load([m0, k0])
    if B_T:  # the descriptor addresses the (N, K) weight: transposing the tile is free for the dot
        b = tl.trans(b_desc.load([n0, k0]))
    else:
        b = b_desc.load([k0, n0])
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return a, b


@triton.jit
def _dot_block(a_ptr, b_ptr, up_off, rm, rn, m0, n0, k0, k, acc, up, M, N, K,
               stride_am, stride_ak, stride_bk, stride_bn,
               EVEN_K: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
               A_T: tl.constexpr, B_T: tl.constexpr, GATED: tl.constexpr, TMA: tl.constexpr):
    """One K block (offsets ``k``, from ``k0``) into a chunk's accumulator (and, when ``GATED``, the up
    product's, sharing A).  ``TMA``: ``a_ptr`` and ``b_ptr`` are descriptors, read at (``m0``, ``n0``, ``k0``)."""
    if TMA:
        a, b = _load_described(a_ptr, b_ptr, m0, n0, k0, UPCAST, B_T)
    else:
        a = _load_a(a_ptr, rm, k, M, K, stride_am, stride_ak, EVEN_K, UPCAST, A_T)
        b = _load_b(b_ptr, rn, k, N, K, stride_bk, stride_bn, EVEN_K, UPCAST, B_T)
    acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    if GATED:
        up = tl.dot(a, _load_b(b_ptr + up_off, rn, k, N, K, stride_bk, stride_bn, EVEN_K, UPCAST, B_T), up,
                    input_precision=INPUT_PRECISION)
    return acc, up


@triton.jit
def _add_chunk(total, partial):
    """The plan's one addition across chunks: the fp32 total of the chunks before, plus the next chunk's
    partial (summed from zero).  Every schedule adds its chunks here, from a zero total, in chunk order
    (serial, side by side, split, preloaded), which is why they all give one set of bits."""
    return total + partial


@triton.jit
def _sum_chunks(a_ptr, b_ptr, up_off, rm, rn, m0, n0, first_chunk, num_chunks, M, N, K,
                stride_am, stride_ak, stride_bk, stride_bn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                CHUNK_BLOCKS: tl.constexpr, IN_FLIGHT: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
                INPUT_PRECISION: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr, GATED: tl.constexpr,
                TMA: tl.constexpr):
    """``((0 + p[first]) + p[first+1]) + ...`` over ``num_chunks`` chunks of K, each from zero; with
    ``GATED``, the same sum for the up weight too (the second value; zeros otherwise).

    One flat loop over K blocks (so Triton pipelines loads across chunk boundaries).  ``IN_FLIGHT``
    chunks (1, 2 or 4, dividing ``num_chunks``) run side by side, each in its own accumulator:
    a chunk's blocks must be accumulated one after another, but the chunks are independent, so
    their MMA chains overlap.  At the end of each round their partials are added to the running
    total in chunk order and restarted from zero -- the plan's additions, whatever IN_FLIGHT.
    ``TMA``: the operands are descriptors, the tile's corner (``m0``, ``n0``) (``_dot_block``).
    """
    zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    total, up_total = zero, zero
    acc0, acc1, acc2, acc3 = zero, zero, zero, zero
    up0, up1, up2, up3 = zero, zero, zero, zero
    chunk_k = CHUNK_BLOCKS * BLOCK_K
    rk = tl.arange(0, BLOCK_K).to(rm.dtype)  # 64-bit offsets when the rows' are (WIDE_INDEX)
    for i in range((num_chunks // IN_FLIGHT) * CHUNK_BLOCKS):
        k0 = (first_chunk + (i // CHUNK_BLOCKS) * IN_FLIGHT) * chunk_k + (i % CHUNK_BLOCKS) * BLOCK_K
        acc0, up0 = _dot_block(a_ptr, b_ptr, up_off, rm, rn, m0, n0, k0, k0 + rk, acc0, up0, M, N, K,
                               stride_am, stride_ak, stride_bk, stride_bn, EVEN_K, UPCAST, INPUT_PRECISION,
                               A_T, B_T, GATED, TMA)
        if IN_FLIGHT > 1:
            acc1, up1 = _dot_block(a_ptr, b_ptr, up_off, rm, rn, m0, n0, k0 + chunk_k, k0 + chunk_k + rk, acc1, up1,
                                   M, N, K, stride_am, stride_ak, stride_bk, stride_bn, EVEN_K, UPCAST,
                                   INPUT_PRECISION, A_T, B_T, GATED, TMA)
        if IN_FLIGHT > 2:
            acc2, up2 = _dot_block(a_ptr, b_ptr, up_off, rm, rn, m0, n0, k0 + 2 * chunk_k, k0 + 2 * chunk_k + rk,
                                   acc2, up2, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, EVEN_K, UPCAST,
                                   INPUT_PRECISION, A_T, B_T, GATED, TMA)
            acc3, up3 = _dot_block(a_ptr, b_ptr, up_off, rm, rn, m0, n0, k0 + 3 * chunk_k, k0 + 3 * chunk_k + rk,
                                   acc3, up3, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, EVEN_K, UPCAST,
                                   INPUT_PRECISION, A_T, B_T, GATED, TMA)
        if i % CHUNK_BLOCKS == CHUNK_BLOCKS - 1:
            total, up_total = _add_chunk(total, acc0), _add_chunk(up_total, up0)
            if IN_FLIGHT > 1:
                total, up_total = _add_chunk(total, acc1), _add_chunk(up_total, up1)
            if IN_FLIGHT > 2:
                total, up_total = _add_chunk(total, acc2), _add_chunk(up_total, up2)
                total, up_total = _add_chunk(total, acc3), _add_chunk(up_total, up3)
            acc0, acc1, acc2, acc3 = zero, zero, zero, zero
            up0, up1, up2, up3 = zero, zero, zero, zero
    return total, up_total


@triton.jit
def _preload_b(b_ptr, rn, k, N, K, stride_bk, stride_bn, BLOCK_K: tl.constexpr, CHUNK_BLOCKS: tl.constexpr,
               EVEN_K: tl.constexpr, UPCAST: tl.constexpr, B_T: tl.constexpr):
    """B's blocks of one chunk (1, 2 or 4), from K offsets ``k`` on; unused ones repeat the first."""
    b0 = _load_b(b_ptr, rn, k, N, K, stride_bk, stride_bn, EVEN_K, UPCAST, B_T)
    b1, b2, b3 = b0, b0, b0
    if CHUNK_BLOCKS > 1:
        b1 = _load_b(b_ptr, rn, k + BLOCK_K, N, K, stride_bk, stride_bn, EVEN_K, UPCAST, B_T)
    if CHUNK_BLOCKS > 2:
        b2 = _load_b(b_ptr, rn, k + 2 * BLOCK_K, N, K, stride_bk, stride_bn, EVEN_K, UPCAST, B_T)
        b3 = _load_b(b_ptr, rn, k + 3 * BLOCK_K, N, K, stride_bk, stride_bn, EVEN_K, UPCAST, B_T)
    return b0, b1, b2, b3


@triton.jit
def _sum_preloaded(a_ptr, rm, k, b0, b1, b2, b3, M, K, stride_am, stride_ak,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK_BLOCKS: tl.constexpr,
                   EVEN_K: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, A_T: tl.constexpr):
    """One chunk's partial from B blocks ``b0..b3`` already loaded (K offsets ``k`` on): ``_sum_chunks``'
    additions, down to the ``0 + partial`` that starts its running total."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _dot_loaded(a_ptr, rm, k, b0, acc, M, K, stride_am, stride_ak, EVEN_K, UPCAST, INPUT_PRECISION, A_T)
    if CHUNK_BLOCKS > 1:
        acc = _dot_loaded(a_ptr, rm, k + BLOCK_K, b1, acc, M, K, stride_am, stride_ak, EVEN_K, UPCAST,
                          INPUT_PRECISION, A_T)
    if CHUNK_BLOCKS > 2:
        acc = _dot_loaded(a_ptr, rm, k + 2 * BLOCK_K, b2, acc, M, K, stride_am, stride_ak, EVEN_K, UPCAST,
                          INPUT_PRECISION, A_T)
        acc = _dot_loaded(a_ptr, rm, k + 3 * BLOCK_K, b3, acc, M, K, stride_am, stride_ak, EVEN_K, UPCAST,
                          INPUT_PRECISION, A_T)
    return _add_chunk(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), acc)


@triton.jit
def _dot_loaded(a_ptr, rm, k, b, acc, M, K, stride_am, stride_ak,
                EVEN_K: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr, A_T: tl.constexpr):
    """``acc`` plus A's block at K offsets ``k`` times the loaded B block ``b``."""
    return tl.dot(_load_a(a_ptr, rm, k, M, K, stride_am, stride_ak, EVEN_K, UPCAST, A_T), b, acc,
                  input_precision=INPUT_PRECISION)


@triton.jit
def _bi_matmul_kernel(
    a_ptr, b_ptr, b1_desc, b2_desc, bias_ptr, out_ptr, ws_ptr, counter_ptr,
    M, N, K, Z,
    stride_az, stride_am, stride_ak,
    stride_bz, stride_bk, stride_bn,
    stride_cz, stride_cm, stride_cn,
    stride_oz, stride_om, stride_on,
    seg_n1, seg_b1, seg_o1, seg_om1, seg_n2, seg_b2, seg_o2, seg_om2, up_off,
    HAS_BIAS: tl.constexpr, NUM_CHUNKS: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    CHUNK_BLOCKS: tl.constexpr, IN_FLIGHT: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, PERSISTENT: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr,
    SEGMENTED: tl.constexpr, WIDE_INDEX: tl.constexpr, GATED: tl.constexpr, DTYPE: tl.constexpr,
    EMULATE_BF16: tl.constexpr, PREFETCH_STEP: tl.constexpr, PRELOAD: tl.constexpr = False,
    OVERLAP: tl.constexpr = False, TMA: tl.constexpr = False,
):
    if PERSISTENT:  # NPU: programs loop over (matrix, tile) work items; never split
        tiles = ((M + BLOCK_M - 1) // BLOCK_M) * ((N + BLOCK_N - 1) // BLOCK_N)
        for w in range(tl.program_id(0), Z * tiles, tl.num_programs(0)):
            _matmul_tile(a_ptr, b_ptr, b1_desc, b2_desc, bias_ptr, out_ptr, ws_ptr, counter_ptr, w % tiles, w // tiles,
                         0, M, N, K,
                         stride_az, stride_am, stride_ak, stride_bz, stride_bk, stride_bn,
                         stride_cz, stride_cm, stride_cn, stride_oz, stride_om, stride_on,
                         0, 0, 0, 0, 0, 0, 0, 0, up_off,
                         HAS_BIAS, NUM_CHUNKS, False, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                         CHUNK_BLOCKS, 1, EVEN_K, UPCAST, INPUT_PRECISION, A_T, B_T, False, WIDE_INDEX,
                         GATED, DTYPE, EMULATE_BF16, PREFETCH_STEP, False, False, False)
    else:
        _matmul_tile(a_ptr, b_ptr, b1_desc, b2_desc, bias_ptr, out_ptr, ws_ptr, counter_ptr,
                     tl.program_id(0), tl.program_id(2), tl.program_id(1), M, N, K,
                     stride_az, stride_am, stride_ak, stride_bz, stride_bk, stride_bn,
                     stride_cz, stride_cm, stride_cn, stride_oz, stride_om, stride_on,
                     seg_n1, seg_b1, seg_o1, seg_om1, seg_n2, seg_b2, seg_o2, seg_om2, up_off,
                     HAS_BIAS, NUM_CHUNKS, SPLIT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                     CHUNK_BLOCKS, IN_FLIGHT, EVEN_K, UPCAST, INPUT_PRECISION, A_T, B_T, SEGMENTED, WIDE_INDEX,
                     GATED, DTYPE, EMULATE_BF16, PREFETCH_STEP, PRELOAD, OVERLAP, TMA)


@triton.jit
def _matmul_tile(
    a_ptr, b_ptr, b1_desc, b2_desc, bias_ptr, out_ptr, ws_ptr, counter_ptr, pid, z, chunk,
    M, N, K,
    stride_az, stride_am, stride_ak,
    stride_bz, stride_bk, stride_bn,
    stride_cz, stride_cm, stride_cn,
    stride_oz, stride_om, stride_on,
    seg_n1, seg_b1, seg_o1, seg_om1, seg_n2, seg_b2, seg_o2, seg_om2, up_off,
    HAS_BIAS: tl.constexpr, NUM_CHUNKS: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    CHUNK_BLOCKS: tl.constexpr, IN_FLIGHT: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr, SEGMENTED: tl.constexpr,
    WIDE_INDEX: tl.constexpr, GATED: tl.constexpr, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr,
    PREFETCH_STEP: tl.constexpr, PRELOAD: tl.constexpr, OVERLAP: tl.constexpr, TMA: tl.constexpr,
):
    """Output tile ``pid`` of matrix ``z`` (and, when ``SPLIT``, K-chunk ``chunk`` of it).

    ``SEGMENTED``: the columns are up to three weights side by side (``bi_matmul_group``); from
    column ``seg_n1`` (``seg_n2``) on, B and the output are shifted by ``seg_b1`` and ``seg_o1``
    elements to the second weight and output, whose row stride is ``seg_om1``.  A tile never
    straddles two weights.  ``WIDE_INDEX``: some offset passes 2**31 elements (the logits of a
    long prefill), so offsets are computed in 64 bits.  ``GATED`` (a ``GATED_ACTIVATIONS`` value,
    0: none): the tile is ``act(a @ gate) * (a @ up)`` with the up weight ``up_off`` elements after
    the gate weight, rounded to ``DTYPE`` where eager rounds (never split).  ``IN_FLIGHT``: chunks a
    serial tile sums side by side (``_sum_chunks``).  ``OVERLAP``: launched early (``overlap.py``);
    a weight whose unit stride runs along K is requested into L2 before the wait for the previous
    kernel.
    ``PRELOAD`` (split tiles): the chunk's weight blocks are loaded into registers before that wait,
    so that after it only A's loads stand between the program and its dots.
    ``TMA`` (serial tiles of one matrix): ``a_ptr`` and ``b_ptr`` are tensor descriptors (``_load_described``),
    and when ``SEGMENTED``, ``b1_desc`` and ``b2_desc`` address the second and third weights.
    """
    # Grouped tile order (schedule only: improves L2 reuse of B across neighbouring row tiles).
    tiles_m = (M + BLOCK_M - 1) // BLOCK_M
    tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    group = GROUP_M * tiles_n
    first_m = (pid // group) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % group) % rows_in_group
    tile_n = (pid % group) // rows_in_group
    m0 = tile_m * BLOCK_M
    n0 = tile_n * BLOCK_N
    rm = m0 + tl.arange(0, BLOCK_M)
    rn = n0 + tl.arange(0, BLOCK_N)
    if WIDE_INDEX:
        rm = rm.to(tl.int64)
        rn = rn.to(tl.int64)
        z = z.to(tl.int64)

    if not TMA:
        a_ptr += z * stride_az
        b_ptr += z * stride_bz
    b_n0 = n0  # the tile's first column in its weight
    if SEGMENTED:
        if TMA:  # each weight has its descriptor, addressed from the weight's first column
            if n0 >= seg_n2:
                b_ptr, b_n0 = b2_desc, n0 - seg_n2
            elif n0 >= seg_n1:
                b_ptr, b_n0 = b1_desc, n0 - seg_n1
        else:
            b_ptr += _segment_value(n0, seg_n1, seg_b1, seg_n2, seg_b2, 0)
        out_ptr += _segment_value(n0, seg_n1, seg_o1, seg_n2, seg_o2, 0)
        stride_om = _segment_value(n0, seg_n1, seg_om1, seg_n2, seg_om2, stride_om)
    if PRELOAD:  # split tiles: the chunk's weight blocks into registers, before the wait
        kb = chunk * (CHUNK_BLOCKS * BLOCK_K) + tl.arange(0, BLOCK_K).to(rm.dtype)
        b0, b1, b2, b3 = _preload_b(b_ptr, rn, kb, N, K, stride_bk, stride_bn, BLOCK_K, CHUNK_BLOCKS, EVEN_K, UPCAST,
                                    B_T)
    if OVERLAP:
        if B_T and not PRELOAD and not TMA:
            _prefetch_weight(b_ptr, rn, chunk, N, K, stride_bn, SPLIT, CHUNK_BLOCKS * BLOCK_K, PREFETCH_STEP)
            if GATED:
                _prefetch_weight(b_ptr + up_off, rn, chunk, N, K, stride_bn, SPLIT, CHUNK_BLOCKS * BLOCK_K,
                                 PREFETCH_STEP)
        wait_for_inputs()

    if SPLIT:
        if PRELOAD:
            partial = _sum_preloaded(a_ptr, rm, kb, b0, b1, b2, b3, M, K, stride_am, stride_ak, BLOCK_M, BLOCK_N,
                                     BLOCK_K, CHUNK_BLOCKS, EVEN_K, UPCAST, INPUT_PRECISION, A_T)
        else:
            partial, _ = _sum_chunks(a_ptr, b_ptr, up_off, rm, rn, m0, n0, chunk, 1, M, N, K,
                                     stride_am, stride_ak, stride_bk, stride_bn, BLOCK_M, BLOCK_N, BLOCK_K,
                                     CHUNK_BLOCKS, 1, EVEN_K, UPCAST, INPUT_PRECISION, A_T, B_T, False, False)
        tile = z * tiles_m * tiles_n + pid
        local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_ws = ws_ptr + tile * (NUM_CHUNKS * BLOCK_M * BLOCK_N)
        tl.store(tile_ws + chunk * (BLOCK_M * BLOCK_N) + local, partial)
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr + tile, 1, sem="acq_rel")
        if arrived == NUM_CHUNKS - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for c in range(NUM_CHUNKS):
                total = _add_chunk(total, tl.load(tile_ws + c * (BLOCK_M * BLOCK_N) + local, cache_modifier=".cg"))
            _epilogue(total, bias_ptr, out_ptr, z, rm, rn, M, N,
                      stride_cz, stride_cm, stride_cn, stride_oz, stride_om, stride_on, HAS_BIAS)
            tl.atomic_xchg(counter_ptr + tile, 0, sem="relaxed")
    else:
        total, up = _sum_chunks(a_ptr, b_ptr, up_off, rm, rn, m0, b_n0, 0, NUM_CHUNKS, M, N, K,
                                stride_am, stride_ak, stride_bk, stride_bn, BLOCK_M, BLOCK_N, BLOCK_K,
                                CHUNK_BLOCKS, IN_FLIGHT, EVEN_K, UPCAST, INPUT_PRECISION, A_T, B_T, GATED, TMA)
        if GATED:  # act(gate) * up as Inductor computes it unfused: gate, up and the activation rounded to DTYPE
            total = gate_times_up(round_to(total, DTYPE, EMULATE_BF16), round_to(up, DTYPE, EMULATE_BF16), GATED,
                                  DTYPE, EMULATE_BF16)
        _epilogue(total, bias_ptr, out_ptr, z, rm, rn, M, N,
                  stride_cz, stride_cm, stride_cn, stride_oz, stride_om, stride_on, HAS_BIAS)


@triton.jit
def _prefetch_weight(b_ptr, rn, chunk, N, K, stride_bn, SPLIT: tl.constexpr, CHUNK_K: tl.constexpr,
                     STEP: tl.constexpr):
    """L2 requests for the K range this program reads of its columns' weight rows (unit stride along K)."""
    k_lo = 0
    k_hi = K
    if SPLIT:
        k_lo = chunk * CHUNK_K
        k_hi = tl.minimum(k_lo + CHUNK_K, K)
    prefetch_rows(b_ptr, tl.minimum(rn, N - 1), stride_bn, k_lo, k_hi, STEP)


@triton.jit
def _segment_value(n0, start1, value1, start2, value2, first):
    """``value2`` from column ``start2`` on, ``value1`` from ``start1``, ``first`` before."""
    return tl.where(n0 >= start2, value2, tl.where(n0 >= start1, value1, first))


@triton.jit
def _epilogue(total, bias_ptr, out_ptr, z, rm, rn, M, N,
              stride_cz, stride_cm, stride_cn, stride_oz, stride_om, stride_on, HAS_BIAS: tl.constexpr):
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + z * stride_cz + rm[:, None] * stride_cm + rn[None, :] * stride_cn,
                       mask=mask, other=0.0)
        total = total + bias.to(tl.float32)
    out = out_ptr + z * stride_oz + rm[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(out, total.to(out_ptr.dtype.element_ty), mask=mask)


def bi_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    schedule: MatmulSchedule | None = None,
    b_is_weight: bool = False,
) -> torch.Tensor:
    """``bias + a @ b`` for 2-D (mm/addmm) or 3-D (bmm) operands, batch-invariantly.

    ``bias`` must broadcast to the output.  ``schedule`` overrides the launch layout (tests use
    it to show that every schedule of a plan gives the same bits).  ``b_is_weight``: no kernel
    writes ``b`` (a parameter), so a launch that overlaps the kernel before it may read it before
    that kernel ends (``MatmulSchedule.preload_weight``); activations must leave it False.
    """
    batched = a.dim() == 3
    if a.dim() not in (2, 3) or b.dim() != a.dim():
        raise ValueError(
            f"bi_matmul takes two 2-D or two 3-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dtype != b.dtype or (bias is not None and bias.dtype != a.dtype):
        dtypes = [a.dtype, b.dtype] + ([bias.dtype] if bias is not None else [])
        raise ValueError(f"bi_matmul operands must share one dtype, got {dtypes}")
    a3 = a if batched else a.unsqueeze(0)
    b3 = b if batched else b.unsqueeze(0)
    z, m, k = a3.shape
    if b3.shape[0] != z or b3.shape[1] != k:
        raise ValueError(f"bi_matmul shape mismatch: {tuple(a.shape)} @ {tuple(b.shape)}")
    n = b3.shape[2]
    out = torch.empty((z, m, n), dtype=a.dtype, device=a.device)
    if m == 0 or n == 0:
        return out if batched else out[0]
    if k == 0:
        out.zero_()
        if bias is not None:
            out += bias
        return out if batched else out[0]

    device = devices.of_tensor(a)
    plan = matmul_plan(k, n, a.dtype, device)
    if device.plan_kind == "npu":  # gathered operands would load element by element: copy them
        a3, b3 = (t if matmul_operand_readable(tuple(t.shape), t.stride(), device) else t.contiguous()
                  for t in (a3, b3))
    sched = schedule or matmul_schedule(plan, m, n, z, a.element_size(), device,
                                        _runs_along(a3, 1), _runs_along(b3, 1))
    if not batched and bias is None and _launched_by_wgmma(a, [b], [out[0]], plan, sched, device):
        return out[0]
    if plan.fp32_io:
        out32 = torch.empty(out.shape, dtype=torch.float32, device=out.device)
        _launch(a3, b3, bias, out32, plan, sched, device, b_is_weight=b_is_weight)
        out.copy_(out32)
    else:
        _launch(a3, b3, bias, out, plan, sched, device, b_is_weight=b_is_weight)
    return out if batched else out[0]


#: Weights one ``bi_matmul_group`` launch takes side by side (query, key and value).
MAX_GROUP = 3
#: Every weight of a group but the last must be this many columns wide (a multiple): a multiple of
#: any schedule's ``BLOCK_N``, so that no tile straddles two weights.
GROUP_COLUMNS = 128


def bi_matmul_group(a: torch.Tensor, bs: Sequence[torch.Tensor], *,
                    schedule: MatmulSchedule | None = None) -> list[torch.Tensor]:
    """``[a @ b for b in bs]`` in one launch, each with ``bi_matmul``'s bits.

    Projections of one activation (query, key and value; gate and up) run as one matmul over the
    weights side by side: a tile of columns finds its weight and output by their distance in
    memory from the first (nothing is concatenated or copied).  The plan is the one each product
    has alone (K, N, dtype, device); only the schedule sees the summed columns (``schedule``
    overrides it, as ``bi_matmul``'s does).  Takes 1 to ``MAX_GROUP`` weights of one K, layout and
    dtype, all but the last ``GROUP_COLUMNS``-aligned.
    """
    if not 1 <= len(bs) <= MAX_GROUP or a.dim() != 2 or any(b.dim() != 2 or b.shape[0] != a.shape[1] for b in bs):
        raise ValueError(f"bi_matmul_group takes a 2-D activation (M, K) and 1 to {MAX_GROUP} weights (K, N_i), got "
                         f"{tuple(a.shape)} and {[tuple(b.shape) for b in bs]}")
    if any(b.stride() != bs[0].stride() or b.dtype != a.dtype or b.device != a.device for b in bs):
        raise ValueError(f"bi_matmul_group weights must share one layout, dtype and device with the activation, got "
                         f"{[(b.stride(), b.dtype, str(b.device)) for b in bs]} for {a.dtype} on {a.device}")
    if any(b.shape[1] % GROUP_COLUMNS for b in bs[:-1]):
        raise ValueError(f"bi_matmul_group: every weight but the last needs a multiple of {GROUP_COLUMNS} columns, "
                         f"got {[b.shape[1] for b in bs]}")
    (m, k), widths = a.shape, [b.shape[1] for b in bs]
    device = devices.of_tensor(a)
    plans = {matmul_plan(k, n, a.dtype, device) for n in widths} if m and k and all(widths) else set()
    if len(bs) == 1 or len(plans) != 1 or device.plan_kind == "npu":  # one weight, nothing to compute,
        return [bi_matmul(a, b, schedule=schedule) for b in bs]  # other plans or NPU tiles
    plan, n = plans.pop(), sum(widths)
    sched = schedule or matmul_schedule(plan, m, n, 1, a.element_size(), device, _runs_along(a[None], 1),
                                        _runs_along(bs[0][None], 1))
    if GROUP_COLUMNS % sched.block_n:  # tiles would straddle two weights
        return [bi_matmul(a, b, schedule=schedule) for b in bs]
    outs = [torch.empty((m, w), dtype=a.dtype, device=a.device) for w in widths]
    if _launched_by_wgmma(a, bs, outs, plan, sched, device):
        return outs
    targets = [torch.empty_like(o, dtype=torch.float32) for o in outs] if plan.fp32_io else outs
    segments: list[int] = []
    start = widths[0]
    for b, target, width in zip(bs[1:], targets[1:], widths[1:], strict=True):
        segments += [start, element_distance(bs[0], b) - start * b.stride(1),
                     element_distance(targets[0], target) - start, width]
        start += width
    segments += [n, 0, 0, 0] * (MAX_GROUP - len(bs))  # absent weights start past the last column
    _launch(a[None], bs[0][None], None, targets[0][None], plan, sched, device, n=n, segments=tuple(segments),
            group=[b[None] for b in bs[1:]])
    if plan.fp32_io:
        for out, target in zip(outs, targets, strict=True):
            out.copy_(target)
    return outs


def bi_matmul_gated(a: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str = "silu", *,
                    one_launch: bool | None = None, schedule: MatmulSchedule | None = None) -> torch.Tensor:
    """``act(a @ gate) * (a @ up)``: a gated MLP's activation, ``act`` one of ``GATED_ACTIVATIONS`` (``silu``;
    ``gelu_tanh``, GELU with ``approximate="tanh"``).

    Each product has ``bi_matmul``'s plan and bits, and the combination rounds as the three unfused ops
    would (the activation as torch decomposes it): the two products and the activation to the dtype.
    Decode rows take one launch, each program computing a tile of both products and combining them,
    neither product written to memory.  Prefill rows take two (``plans.gated_in_one_launch``): the
    products as one ``bi_matmul_group``, then ``gated_activation``; the bits are the same.  Where that
    group's schedule runs the Gluon kernel, its tiles hold both products of half as many columns and
    combine them, in one launch again.  ``one_launch`` overrides the choice of one launch (tests compare
    the two), ``schedule`` the group's schedule.  ``gate`` and ``up`` are (K, N) of one layout; the one
    launch finds the up weight by its distance in memory from the gate weight.
    """
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"bi_matmul_gated: activation {activation!r}; accepted: {', '.join(GATED_ACTIVATIONS)}")
    if a.dim() != 2 or gate.dim() != 2 or gate.shape != up.shape or gate.stride() != up.stride() \
            or gate.shape[0] != a.shape[1]:
        raise ValueError(f"bi_matmul_gated takes a 2-D activation (M, K) and two weights (K, N) of one layout, got "
                         f"{tuple(a.shape)}, {tuple(gate.shape)}{gate.stride()}, {tuple(up.shape)}{up.stride()}")
    if not a.dtype == gate.dtype == up.dtype or not a.device == gate.device == up.device:
        raise ValueError(f"bi_matmul_gated operands must share one dtype and device, got {a.dtype}, {gate.dtype}, "
                         f"{up.dtype} on {a.device}, {gate.device}, {up.device}")
    (m, k), n = a.shape, gate.shape[1]
    device = devices.of_tensor(a)
    if m == 0 or n == 0 or k == 0 or device.plan_kind == "npu":  # nothing to compute, or NPU tiles
        return _EAGER_ACTIVATIONS[activation](bi_matmul(a, gate)) * bi_matmul(a, up)
    plan = matmul_plan(k, n, a.dtype, device)
    if not (gated_in_one_launch(m, device) if one_launch is None else one_launch):
        group = schedule or matmul_schedule(plan, m, 2 * n, 1, a.element_size(), device, _runs_along(a[None], 1),
                                            _runs_along(gate[None], 1))
        if group.gluon_wgmma:
            out = torch.empty((m, n), dtype=a.dtype, device=a.device)
            if _launched_by_wgmma(a, [gate, up], [out], plan, group, device, GATED_ACTIVATIONS[activation]):
                return out
        gate_out, up_out = bi_matmul_group(a, [gate, up], schedule=schedule)
        return gated_activation(gate_out, up_out, activation, a.dtype)
    sched = matmul_schedule(plan, m, n, 1, a.element_size(), device, _runs_along(a[None], 1),
                            _runs_along(gate[None], 1), gated=True)
    out = torch.empty((m, n), dtype=torch.float32 if plan.fp32_io else a.dtype, device=a.device)
    _launch(a[None], gate[None], None, out[None], plan, sched, device, up=up[None], dtype=a.dtype,
            activation=activation)
    return out.to(a.dtype)


def _span(t: torch.Tensor) -> int:
    """Elements between a tensor's first and last addressed element, plus one."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True) if size)


def _runs_along(t: torch.Tensor, dim: int) -> bool:
    """Whether a 3-D operand's unit stride runs along ``dim`` (1 or 2) and not along the other."""
    other = 3 - dim
    return t.shape[other] > 1 and t.stride(other) != 1 and (t.stride(dim) == 1 or t.shape[dim] == 1)


def _launched_by_wgmma(a: torch.Tensor, weights: Sequence[torch.Tensor], outs: Sequence[torch.Tensor],
                       plan: MatmulPlan, sched: MatmulSchedule, device: devices.Device, gated: int = 0) -> bool:
    """``outs[i] = a @ weights[i]`` (``gated``: ``outs[0] = act(a @ gate) * (a @ up)``) by ``matmul_wgmma.py``'s
    kernel, for a serial ``gluon_wgmma`` schedule on a device that has the kernel, its operands addressable by
    the TMA; False, nothing launched, where the Triton template runs instead (the same bits)."""
    if not (sched.gluon_wgmma and not sched.split and device.gluon_wgmma):
        return False
    from ascend_compile.kernels import matmul_wgmma  # Gluon's Hopper module: imported where the device has it

    if not matmul_wgmma.addressable(a, weights, outs):
        logger.debug("matmul %dx%dx%d: an operand is not TMA-addressable, the Triton template instead",
                     a.shape[0], a.shape[1], sum(w.shape[1] for w in weights))
        return False
    matmul_wgmma.launch(a, weights, outs, plan, device, gated)
    return True


def tma_addressable(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a tensor descriptor can address each 2-D tensor's rows: unit stride along the last dimension,
    start and row stride 16-byte aligned."""
    return all(t.stride(1) == 1 and t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0
               for t in tensors)


def _described(a: torch.Tensor, weights: Sequence[torch.Tensor], plan: MatmulPlan,
               sched: MatmulSchedule) -> list[object] | None:
    """Tensor descriptors for a launch's A (M, K) and its 1 to ``MAX_GROUP`` weights (K, N_i), the last
    repeated up to ``MAX_GROUP`` (the kernel's ``b_ptr``, ``b1_desc``, ``b2_desc``), or None when the tensor
    memory accelerator cannot address one of them: its unit stride must run along K (an activation, a
    weight as ``linear`` stores it), its start and row stride must be 16-byte aligned."""
    operands = [a, *(w.t() for w in weights)]  # (N, K) weights: the block a descriptor loads runs along K
    if not tma_addressable(operands):
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    blocks = [[sched.block_m, plan.block_k]] + [[sched.block_n, plan.block_k]] * len(weights)
    described = [TensorDescriptor.from_tensor(t, block) for t, block in zip(operands, blocks, strict=True)]
    return described + described[-1:] * (MAX_GROUP - len(weights))


def _launch(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
            plan: MatmulPlan, sched: MatmulSchedule, device: devices.Device,
            n: int | None = None, segments: tuple[int, ...] | None = None, up: torch.Tensor | None = None,
            dtype: torch.dtype | None = None, b_is_weight: bool = False, activation: str = "silu",
            group: Sequence[torch.Tensor] = ()) -> None:
    """Launch over 3-D operands; ``n`` columns (``b``'s unless given) in the weights that
    ``segments`` locates (``bi_matmul_group``, whose other weights are ``group``; one weight when None);
    with ``up``, ``act(a @ b) * (a @ up)`` rounded as the unfused ops round in ``dtype``, ``act`` the
    ``GATED_ACTIVATIONS`` entry ``activation`` (``bi_matmul_gated``).  Split programs preload ``b`` only
    when it ``b_is_weight`` (``bi_matmul``)."""
    z, m, k = a.shape
    n = n or b.shape[2]
    dtype = dtype or out.dtype
    if sched.chunks_in_flight not in (1, 2, 4) or plan.num_chunks % sched.chunks_in_flight:
        raise ValueError(f"matmul schedule chunks_in_flight must be 1, 2 or 4 and divide the plan's "
                         f"{plan.num_chunks} chunks, got {sched.chunks_in_flight}")
    if sched.preload_weight and plan.chunk_blocks not in PRELOAD_CHUNK_BLOCKS:
        *first, last = PRELOAD_CHUNK_BLOCKS
        accepted = f"{', '.join(map(str, first))} or {last}"
        raise ValueError(f"matmul schedule preload_weight takes chunks of {accepted} blocks, the plan's have "
                         f"{plan.chunk_blocks}")
    tiles = triton.cdiv(m, sched.block_m) * triton.cdiv(n, sched.block_n)
    split = (sched.split and not sched.programs and plan.num_chunks > 1 and up is None
             and z * tiles <= COUNTERS_PER_DEVICE)
    if split:
        workspace = torch.empty(z * tiles * plan.num_chunks * sched.block_m * sched.block_n,
                                dtype=torch.float32, device=a.device)
        counters = arrival_counters(a.device)
    else:
        workspace = counters = out  # never read when SPLIT is off
    described = None
    if sched.tma and not split and not sched.programs and up is None and z == 1 and a.element_size() == 2:
        described = _described(a[0], [w[0] for w in (b, *group)], plan, sched)
        if described is None:
            logger.debug("matmul %dx%dx%d: an operand is not TMA-addressable, pointer loads instead", m, k, n)
    tma = described is not None
    bias3 = bias.expand(out.shape) if bias is not None else out
    grid = (sched.programs,) if sched.programs else (tiles, plan.num_chunks if split else 1, z)
    _bi_matmul_kernel[grid](
        *(described or (a, b, b, b)), bias3, out, workspace, counters,
        m, n, k, z,
        *a.stride(), *b.stride(), *bias3.stride(), *out.stride(),
        *(segments or (0,) * 8), element_distance(b, up) if up is not None else 0,
        HAS_BIAS=bias is not None, NUM_CHUNKS=plan.num_chunks, SPLIT=split,
        BLOCK_M=sched.block_m, BLOCK_N=sched.block_n, BLOCK_K=plan.block_k, GROUP_M=sched.group_m,
        CHUNK_BLOCKS=plan.chunk_blocks, IN_FLIGHT=1 if split else sched.chunks_in_flight, EVEN_K=k % plan.chunk_k == 0,
        UPCAST=plan.fp32_io,
        INPUT_PRECISION=plan.input_precision, PERSISTENT=sched.programs > 0,
        A_T=sched.a_transposed, B_T=sched.b_transposed or tma, SEGMENTED=segments is not None,
        WIDE_INDEX=max(_span(a), _span(b), _span(out), m * n, k * n) >= 2**31,
        GATED=GATED_ACTIVATIONS[activation] if up is not None else 0, DTYPE=TL_DTYPES[dtype],
        EMULATE_BF16=plan.fp32_io and dtype == torch.bfloat16,
        PREFETCH_STEP=PREFETCH_BYTES // b.element_size(),
        PRELOAD=split and sched.preload_weight and b_is_weight,
        TMA=tma,
        **launch_options(device, sched.num_warps, sched.num_stages, overlap=True),
    )
