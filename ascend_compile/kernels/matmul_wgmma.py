"""The matmul plan's serial schedule on sm_90 (H100/H200), written in Gluon: no drain at chunk boundaries.

The plan (``matmul.py``, ``plans.MatmulPlan``) sums each chunk of K from zero and adds the partials to a
running total in chunk order.  In plain Triton the add waits for the chunk's last ``wgmma``, so the tensor
cores drain at every boundary; and Triton decides where ``wgmma`` waits (decision 0029).  Gluon, Triton's
lower-level dialect, states the waits: each tile keeps two chunk accumulators, alternating by chunk parity.
A chunk's first ``wgmma`` is issued into the free one, then ``warpgroup_mma_wait(1)`` retires the chunk
before it, whose partial joins the total while the new chunk runs.  The additions are the plan's
(``total + partial``, in chunk order, from a zero total) and each partial is summed from zero block by
block, so the bits are the Triton schedules' (tests compare them).

Programs are persistent (one per SM at most, walking tiles in grouped order) and warp-specialized: one
loader warp keeps a ring of TMA-loaded blocks of A and the weights full; two warpgroups (8 warps, 64 rows
each) run the ``wgmma`` and write each finished tile by the TMA while the next tile's blocks load.  A
launch takes up to three weights side by side (``bi_matmul_group``): a tile of columns reads the weight
and writes the output its columns fall in.  A gated launch (``bi_matmul_gated`` at prefill rows) fills each
ring slot with a block of the gate weight and one of the up weight, so a tile holds both products of half as
many columns, and its epilogue writes ``act(gate) * up``: neither product reaches memory.  Triton 3.6 and 3.9
spell the TMA copies and the CTA barrier differently; ``_TMA_LOAD``, ``_TMA_STORE`` and ``_CTA_BARRIER`` take
whichever this Triton has.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ascend_compile.devices import Device
from ascend_compile.kernels.gated_activation import gate_times_up
from ascend_compile.kernels.matmul import MAX_GROUP, tma_addressable
from ascend_compile.kernels.plans import MatmulPlan, launch_options

_TMA_LOAD = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
_TMA_STORE = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
_CTA_BARRIER = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier

#: Tile and ring of every launch: 128 x 128 tiles on two warpgroups (three 64-register accumulators a
#: thread: the total and two chunk partials), 64-deep K blocks, four ring slots (128 KiB), a loader warp.
BLOCK_M, BLOCK_N, STAGES, GROUP_M, NUM_WARPS = 128, 128, 4, 8, 8
_LOADER_WARPS, _LOADER_REGISTERS = gl.constexpr(1), gl.constexpr(24)


@gluon.jit
def _tile_corner(tile, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """Tile ``tile``'s first row and column, ``GROUP_M`` rows of tiles at a time (L2 reuse of the weights)."""
    tiles_n = gl.cdiv(N, BLOCK_N)
    width = GROUP_M * tiles_n
    first_m = (tile // width) * GROUP_M
    rows = gl.minimum(gl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return (first_m + (tile % width) % rows) * BLOCK_M, ((tile % width) // rows) * BLOCK_N


@gluon.jit
def _load_block(a_desc, w0_desc, w1_desc, w2_desc, seg1, seg2, a_slot, w_slot, bar, m0, n0, k0,
                GATED: gl.constexpr):
    """A's and the tile's weight's blocks at K offset ``k0`` into one ring slot; ``bar`` counts their bytes.
    ``GATED``: the slot's first half of rows takes the gate weight's block, its second the up weight's."""
    if GATED:
        half: gl.constexpr = w0_desc.block_type.shape[0]
        mbarrier.expect(bar, a_desc.block_type.nbytes + 2 * w0_desc.block_type.nbytes)
        _TMA_LOAD(a_desc, [m0, k0], bar, a_slot)
        _TMA_LOAD(w0_desc, [n0, k0], bar, w_slot.slice(0, half))
        _TMA_LOAD(w1_desc, [n0, k0], bar, w_slot.slice(half, half))
    else:
        mbarrier.expect(bar, a_desc.block_type.nbytes + w0_desc.block_type.nbytes)
        _TMA_LOAD(a_desc, [m0, k0], bar, a_slot)
        if n0 >= seg2:
            _TMA_LOAD(w2_desc, [n0 - seg2, k0], bar, w_slot)
        elif n0 >= seg1:
            _TMA_LOAD(w1_desc, [n0 - seg1, k0], bar, w_slot)
        else:
            _TMA_LOAD(w0_desc, [n0, k0], bar, w_slot)


@gluon.jit
def _loader(a_desc, w0_desc, w1_desc, w2_desc, seg1, seg2, a_ring, w_ring, ready, free, M, N, blocks,
            BLOCK_M: gl.constexpr, COLUMNS: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
            GROUP_M: gl.constexpr, GATED: gl.constexpr):
    """The loader warp: every block of this program's tiles, in order, into the ring as slots come free."""
    count = 0
    for tile in range(gl.program_id(0), gl.cdiv(M, BLOCK_M) * gl.cdiv(N, COLUMNS), gl.num_programs(0)):
        m0, n0 = _tile_corner(tile, M, N, BLOCK_M, COLUMNS, GROUP_M)
        for block in range(blocks):
            slot = count % STAGES
            mbarrier.wait(free.index(slot), ((count // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1
            _load_block(a_desc, w0_desc, w1_desc, w2_desc, seg1, seg2, a_ring.index(slot), w_ring.index(slot),
                        ready.index(slot), m0, n0, block * BLOCK_K, GATED)
            count += 1


@gluon.jit
def _block_mma(a_ring, w_ring, ready, count, acc, FIRST: gl.constexpr, STAGES: gl.constexpr):
    """Ring block ``count``'s wgmma into ``acc`` (from zero when ``FIRST``), issued once the block has landed."""
    slot = count % STAGES
    mbarrier.wait(ready.index(slot), (count // STAGES) & 1)
    return warpgroup_mma(a_ring.index(slot), w_ring.index(slot).permute((1, 0)), acc, use_acc=not FIRST,
                         is_async=True)


@gluon.jit
def _release(free, count, STAGES: gl.constexpr):
    """Ring block ``count - 1`` is read by every warpgroup (each waited for it): its slot is free."""
    _CTA_BARRIER()
    mbarrier.arrive(free.index((count + STAGES - 1) % STAGES), pred=count > 0)


@gluon.jit
def _chunk(a_ring, w_ring, ready, free, count, partial, previous, total, CHUNK_BLOCKS: gl.constexpr,
           STAGES: gl.constexpr):
    """One chunk's blocks into ``partial`` from zero.  The chunk before (``previous``, still in flight)
    joins ``total`` once this chunk's first wgmma is issued: the plan's addition, without a drain."""
    partial = _block_mma(a_ring, w_ring, ready, count, partial, True, STAGES)
    partial, previous = warpgroup_mma_wait(1, deps=[partial, previous])
    total = total + previous
    _release(free, count, STAGES)
    for b in gl.static_range(1, CHUNK_BLOCKS):
        partial = _block_mma(a_ring, w_ring, ready, count + b, partial, False, STAGES)
        partial = warpgroup_mma_wait(1, deps=[partial])
        _release(free, count + b, STAGES)
    return partial, previous, total


@gluon.jit
def _store_tile(c0_desc, c1_desc, c2_desc, seg1, seg2, c_smem, total, m0, n0):
    """The tile's rounded values into the output its columns fall in, by the TMA (clipped at its edges)."""
    tma.store_wait(0)  # the previous tile's store has left c_smem
    c_smem.store(total.to(c0_desc.dtype))
    fence_async_shared()
    if n0 >= seg2:
        _TMA_STORE(c2_desc, [m0, n0 - seg2], c_smem)
    elif n0 >= seg1:
        _TMA_STORE(c1_desc, [m0, n0 - seg1], c_smem)
    else:
        _TMA_STORE(c0_desc, [m0, n0], c_smem)


@gluon.jit
def _store_gated_tile(out_desc, products, out_smem, total, m0, n0, GATED: gl.constexpr, num_warps: gl.constexpr):
    """``act(gate) * up`` of a gated tile (its gate products in the first half of its columns, the up products
    in the second) into the output by the TMA: both products rounded to the dtype, as the grouped matmul
    stores them, then ``gate_times_up``, as the elementwise launch combines them."""
    half: gl.constexpr = out_desc.block_type.shape[1]
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    products.store(total.to(out_desc.dtype))
    gate = products.slice(0, half, dim=1).load(layout).to(gl.float32)
    up = products.slice(half, half, dim=1).load(layout).to(gl.float32)
    tma.store_wait(0)  # the previous tile's store has left out_smem
    out_smem.store(gate_times_up(gate, up, GATED, out_desc.dtype, False).to(out_desc.dtype))
    fence_async_shared()
    _TMA_STORE(out_desc, [m0, n0], out_smem)


@gluon.jit
def _consumer(a_ring, w_ring, ready, free, c0_desc, c1_desc, c2_desc, seg1, seg2, c_smem, products, M, N,
              num_chunks, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, COLUMNS: gl.constexpr,
              CHUNK_BLOCKS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr, GATED: gl.constexpr,
              num_warps: gl.constexpr):
    """The two warpgroups: each tile's chunks into alternating partials and the total, then its store."""
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, BLOCK_N, 16])
    count = 0
    for tile in range(gl.program_id(0), gl.cdiv(M, BLOCK_M) * gl.cdiv(N, COLUMNS), gl.num_programs(0)):
        m0, n0 = _tile_corner(tile, M, N, BLOCK_M, COLUMNS, GROUP_M)
        total = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
        even = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
        odd = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)  # "chunk -1": total + 0 keeps the total's bits
        for _ in range(num_chunks // 2):
            even, odd, total = _chunk(a_ring, w_ring, ready, free, count, even, odd, total, CHUNK_BLOCKS, STAGES)
            odd, even, total = _chunk(a_ring, w_ring, ready, free, count + CHUNK_BLOCKS, odd, even, total,
                                      CHUNK_BLOCKS, STAGES)
            count += 2 * CHUNK_BLOCKS
        # Each branch waits for its own last partial: a copy of a partial in flight into one variable
        # would make ptxas serialize every wgmma of the kernel.
        if num_chunks % 2 == 1:
            even, odd, total = _chunk(a_ring, w_ring, ready, free, count, even, odd, total, CHUNK_BLOCKS, STAGES)
            count += CHUNK_BLOCKS
            even = warpgroup_mma_wait(0, deps=[even])
            total = total + even
        else:
            odd = warpgroup_mma_wait(0, deps=[odd])
            total = total + odd
        if GATED:
            _store_gated_tile(c0_desc, products, c_smem, total, m0, n0, GATED, num_warps)
        else:
            _store_tile(c0_desc, c1_desc, c2_desc, seg1, seg2, c_smem, total, m0, n0)
    tma.store_wait(0)


@gluon.jit
def _chunked_matmul_kernel(a_desc, w0_desc, w1_desc, w2_desc, c0_desc, c1_desc, c2_desc, seg1, seg2, M, N, K,
                           BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                           CHUNK_BLOCKS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                           GATED: gl.constexpr, num_warps: gl.constexpr):
    """``GATED`` (a ``GATED_ACTIVATIONS`` kind, 0 for none): each tile holds the gate's and the up weight's
    products of ``BLOCK_N // 2`` output columns side by side and writes ``act(gate) * up`` (``w0``, ``w1`` and
    ``c0`` are the gate, the up weight and the output; ``N`` counts output columns)."""
    COLUMNS: gl.constexpr = BLOCK_N // 2 if GATED else BLOCK_N
    num_chunks = gl.cdiv(K, CHUNK_BLOCKS * BLOCK_K)
    a_ring = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    w_ring = gl.allocate_shared_memory(w0_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w0_desc.layout)
    c_smem = gl.allocate_shared_memory(c0_desc.dtype, [BLOCK_M, COLUMNS], c0_desc.layout)
    products = c_smem
    if GATED:  # the tile's two products, rounded, for the activation to read by halves
        products = gl.allocate_shared_memory(c0_desc.dtype, [BLOCK_M, BLOCK_N], c0_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(free.index(s), count=1)
    fence_async_shared()
    gl.warp_specialize([
        (_consumer, (a_ring, w_ring, ready, free, c0_desc, c1_desc, c2_desc, seg1, seg2, c_smem, products, M, N,
                     num_chunks, BLOCK_M, BLOCK_N, COLUMNS, CHUNK_BLOCKS, STAGES, GROUP_M, GATED, num_warps)),
        (_loader, (a_desc, w0_desc, w1_desc, w2_desc, seg1, seg2, a_ring, w_ring, ready, free, M, N,
                   num_chunks * CHUNK_BLOCKS, BLOCK_M, COLUMNS, BLOCK_K, STAGES, GROUP_M, GATED)),
    ], [_LOADER_WARPS], [_LOADER_REGISTERS])


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


@functools.cache
def _layout(rows: int, cols: int, dtype: torch.dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for([rows, cols], _GL_DTYPES[dtype])


def addressable(a: torch.Tensor, weights: Sequence[torch.Tensor], outs: Sequence[torch.Tensor]) -> bool:
    """Whether the kernel can take these 16-bit operands: the TMA addresses A and each (K, N) weight (as
    ``linear`` stores it) along K, and the outputs along N."""
    return a.dtype in _GL_DTYPES and tma_addressable([a, *(w.t() for w in weights), *outs])


def _described(t: torch.Tensor, rows: int, cols: int) -> TensorDescriptor:
    return TensorDescriptor.from_tensor(t, [rows, cols], _layout(rows, cols, t.dtype))


def launch(a: torch.Tensor, weights: Sequence[torch.Tensor], outs: Sequence[torch.Tensor], plan: MatmulPlan,
           device: Device, gated: int = 0) -> None:
    """``outs[i] = a @ weights[i]`` (1 to ``MAX_GROUP`` (K, N_i) weights, all but the last a multiple of
    ``BLOCK_N`` columns wide) under ``plan``, on one program per SM at most; operands ``addressable``.
    ``gated`` (a ``GATED_ACTIVATIONS`` kind): ``outs[0] = act(a @ weights[0]) * (a @ weights[1])`` instead,
    each product rounded to the dtype first, as ``bi_matmul_gated``'s two launches round them."""
    (m, k), widths, block_k = a.shape, [w.shape[1] for w in weights], plan.block_k
    columns = BLOCK_N // 2 if gated else BLOCK_N
    n = widths[0] if gated else sum(widths)
    a_desc = _described(a, BLOCK_M, block_k)
    w_descs = [_described(w.t(), columns, block_k) for w in weights]
    c_descs = [_described(o, BLOCK_M, columns) for o in outs]
    starts = [sum(widths[:i]) for i in range(1, MAX_GROUP)]  # an absent weight starts past the last column
    w_descs += w_descs[-1:] * (MAX_GROUP - len(weights))
    c_descs += c_descs[-1:] * (MAX_GROUP - len(outs))
    tiles = triton.cdiv(m, BLOCK_M) * triton.cdiv(n, columns)
    _chunked_matmul_kernel[(min(tiles, device.compute_units),)](
        a_desc, *w_descs, *c_descs, *starts, m, n, k,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k, CHUNK_BLOCKS=plan.chunk_blocks, STAGES=STAGES,
        GROUP_M=GROUP_M, GATED=gated, **launch_options(device, NUM_WARPS))
