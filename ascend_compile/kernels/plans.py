"""Reduction plans (numerics) and schedules (speed) for every kernel family.

The law of this project lives here:

    A plan fixes the order of floating-point additions.  It is a function of the reduced extent,
    the other non-batch extents, the dtype and the device kind -- never of the batch extent and
    never of a runtime benchmark.  A schedule decides grid, tile rows, warps and whether the chunks
    of a plan run in parallel programs or serially in one; it may look at the batch extent but can
    never change the order of additions.

NPU (Ascend, triton-ascend) plans and schedules live beside the others (``device.plan_kind``):
tiles sized so that a core's Unified Buffer holds them (``npu_ub_budget``, modelled by the
``*_ub_bytes`` functions below), 1-D grids of at most one program per core with in-kernel loops,
and no ``num_warps``/``num_stages`` (``launch_options``).

Plans and schedules are pure functions of hashable arguments, memoised so that a launch costs
one dictionary lookup.  The law is enforced by signatures: ``matmul_plan`` has no parameter through which the number of
rows could reach it, and ``matmul_schedule`` returns nothing that the kernel uses to order sums.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ascend_compile.devices import Device

logger = logging.getLogger(__name__)

#: Floating dtypes every kernel family takes (accumulation is always fp32).
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


class UnsupportedPlan(ValueError):
    """No batch-invariant plan exists for this op, dtype or device."""


_ITEMSIZE = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}

# --- Ascend NPU constants (triton-ascend on Atlas A2/A3; see docs/ASCEND.md) -------------------
#: The Ascend runtime takes at most this many programs in a launch.
NPU_MAX_GRID = 65535
#: Vector accesses move 32-byte blocks: a tile's unit-stride (tail) axis is padded to a multiple.
NPU_VECTOR_ALIGN = 32
#: Tiles that feed the cube unit (``tl.dot``) are best given 512-byte tails (no padding).
NPU_DOT_TAIL_BYTES = 512
#: Share of the Unified Buffer plans leave free for what the model does not count (scalars,
#: compiler temporaries).
NPU_UB_MARGIN = 1 / 8


def npu_ub_budget(device: Device) -> int:
    """Unified Buffer bytes an NPU plan may fill: the capacity less ``NPU_UB_MARGIN``."""
    if device.npu is None:
        raise UnsupportedPlan(f"{device.kind} has no Unified Buffer (only NPU plans have a UB budget)")
    return int(device.npu.ub_bytes * (1 - NPU_UB_MARGIN))


def _tile_bytes(rows: int, tail: int, itemsize: int) -> int:
    """UB bytes of a ``rows x tail`` tile whose ``tail`` axis is contiguous, padded to 32 bytes."""
    return rows * (-(-tail * itemsize // NPU_VECTOR_ALIGN) * NPU_VECTOR_ALIGN)


def _loads(device: Device) -> int:
    """Copies of each loaded tile the UB holds: 2 with triton-ascend's multibuffer, else 1."""
    return 2 if device.npu is not None and device.npu.multibuffer else 1


def launch_options(device: Device, num_warps: int, num_stages: int | None = None,
                   fp_fusion: bool = True, overlap: bool = False) -> dict[str, int | bool]:
    """Triton launch keywords: none on NPUs (triton-ascend takes no ``num_warps``/``num_stages``).

    ``fp_fusion=False`` keeps a multiply and the add after it as two roundings on GPUs (no FMA
    contraction), for kernels whose bits must equal those of separate kernels; the interpreter
    never contracts.  Either way the choice is passed, never left to Triton's default (contraction
    on through Triton 3.9, off from 3.10 on): a Triton upgrade must not change a kernel's bits.
    ``overlap=True`` is for kernels with an ``OVERLAP`` flag (``overlap.py``):
    where the device overlaps launches, the kernel launches early and waits for its inputs.
    """
    if device.plan_kind == "npu":
        return {}
    options: dict[str, int | bool] = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    if device.plan_kind == "cuda":
        options["enable_fp_fusion"] = fp_fusion
    if overlap and device.overlapped_launches:
        options["launch_pdl"] = options["OVERLAP"] = True
    return options


def grid_programs(work: int, device: Device, *, cube: bool = False) -> int:
    """Programs of a 1-D launch over ``work`` items; each program loops over ``work`` with that stride.

    One program per item on GPUs and the CPU; on NPUs at most one per core -- AI cores for kernels
    that use ``tl.dot`` (``cube``), vector cores otherwise -- and never more than 65535.
    """
    if device.npu is None:
        return max(1, work)
    cores = device.npu.ai_cores if cube else device.npu.vector_cores
    return max(1, min(work, cores, NPU_MAX_GRID))


@dataclass(frozen=True)
class MatmulPlan:
    """How the K extent of ``out[m, n] = sum_k a[m, k] * b[k, n]`` is summed.

    K is cut into chunks of ``chunk_blocks * block_k`` elements.  Each chunk is accumulated from
    zero, block by block, by the matrix unit; the chunk partials are then added in chunk order,
    ``((p0 + p1) + p2) + ...``, in fp32.  Bias is added last, then the result is rounded once.
    """

    block_k: int
    chunk_blocks: int
    num_chunks: int
    #: Triton ``input_precision`` for fp32 dots: "ieee" keeps true fp32 (no TF32).
    input_precision: str
    #: Only for Triton's interpreter, which mishandles 16-bit floats (triton 3.9: its bf16 dot is
    #: wrong and its fp32 -> bf16 cast truncates): upcast tiles to fp32 before ``tl.dot`` (products
    #: of 16-bit values are exact in fp32 either way) and let torch round the fp32 result once.
    fp32_io: bool

    @property
    def chunk_k(self) -> int:
        return self.block_k * self.chunk_blocks


def _check_dtype(family: str, dtype: torch.dtype) -> None:
    if dtype not in FLOAT_DTYPES:
        accepted = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise UnsupportedPlan(f"no batch-invariant {family} plan for dtype {dtype}; accepted dtypes: {accepted}")


@functools.lru_cache(maxsize=4096)
def matmul_plan(k: int, n: int, dtype: torch.dtype, device: Device) -> MatmulPlan:
    """The summation order for a matmul reducing over ``k`` into ``n`` columns.

    ``n`` is part of the key so that plans may later differ by output width; today the chunk size
    depends only on K, the dtype and the device kind.
    """
    _check_dtype("matmul", dtype)
    if k <= 0 or n <= 0:
        raise UnsupportedPlan(f"matmul extents must be positive, got K={k}, N={n}")
    if device.plan_kind == "cpu":
        # The interpreter pays per program and per block, not per flop: large blocks.
        block_k, chunk_elems = 128, 256
    elif device.plan_kind == "npu":
        # 512-byte K rows (the cube unit's preferred tail, 32-byte aligned for the vector unit)
        # in 512-element chunks.
        block_k, chunk_elems = NPU_DOT_TAIL_BYTES // _ITEMSIZE[dtype], 512
    else:
        # BLOCK_K = 64 and 256-element chunks: verified schedule-independent on H100 (ARCHITECTURE.md);
        # small chunks give decode-size matmuls enough programs to fill the GPU.
        block_k, chunk_elems = 64, 256
    blocks = -(-k // block_k)
    chunk_blocks = min(chunk_elems // block_k, blocks)
    return MatmulPlan(
        block_k=block_k,
        chunk_blocks=chunk_blocks,
        num_chunks=-(-blocks // chunk_blocks),
        input_precision="ieee",
        fp32_io=device.triton_interpreted and dtype != torch.float32,
    )


@dataclass(frozen=True)
class RowPlan:
    """How a row of ``n`` elements is reduced (sums, norms, softmax).

    ``block`` lanes each add the row's elements that fall on them, block after block, in order;
    the lanes are then added by ``tree_sum``'s fixed pairwise tree.  The order depends on
    ``block`` alone, which depends on ``n``, the dtype and the device kind.
    """

    block: int
    #: Rows longer than this (vocabulary-sized) are cut into chunks of ``chunk`` elements, each
    #: reduced as above, and the chunk results are combined in chunk order: the chunks can then
    #: run in parallel programs whatever the number of rows.
    chunk: int
    #: As ``MatmulPlan.fp32_io``: the interpreter's fp32 -> 16-bit cast truncates, so results are
    #: stored as fp32 and torch rounds them.
    fp32_io: bool

    def num_chunks(self, n: int) -> int:
        return max(1, -(-n // self.chunk))

    def store_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype kernels write results in (fp32 under ``fp32_io``; torch casts them after)."""
        return torch.float32 if self.fp32_io else dtype


@functools.lru_cache(maxsize=4096)
def row_plan(n: int, dtype: torch.dtype, device: Device) -> RowPlan:
    """The summation order for rows of ``n`` elements (n is the reduced extent)."""
    _check_dtype("reduction", dtype)
    if device.plan_kind == "npu":
        cap = NPU_ROW_LANES  # every row family fits the UB at this width (row_ub_bytes)
    else:
        cap = 4096 if device.triton_interpreted else 1024
    block = min(cap, max(16, 1 << max(0, n - 1).bit_length()))
    return RowPlan(block=block, chunk=8 * block, fp32_io=device.triton_interpreted and dtype != torch.float32)


def row_warps(plan: RowPlan) -> int:
    """Warps per row program: schedule only (``tree_sum`` makes the order layout-independent)."""
    return 4 if plan.block <= 1024 else 8


#: Lanes of NPU row plans: the same order as on GPUs, and every row family's tiles fit the UB.
NPU_ROW_LANES = 1024
#: Row kernel families and how many tiles of the plan's width each program keeps live: (loaded
#: in the input dtype, fp32 working, int32 index, 1-byte mask, output in the input dtype).
ROW_FAMILIES: dict[str, tuple[int, int, int, int, int]] = {
    "sum": (1, 3, 1, 1, 0),  # x; x in fp32, lanes, tree halves; offsets; mask
    "var_mean": (1, 4, 1, 1, 0),  # + centred deviations
    "softmax": (1, 6, 1, 1, 1),  # x; fp32 x, running max, lanes, exp, tree, y; offsets; mask; out
    "layer_norm": (3, 6, 1, 1, 1),  # x, weight, bias; their fp32 values, lanes, tree, y; ...; out
    "cumsum": (1, 6, 1, 1, 1),  # x; fp32 x, running, within, selects, y; offsets; mask; out
    "rms_norm": (3, 4, 1, 1, 2),  # x, residual, weight; h, lanes, tree, y; offsets; mask; out, sum
    # x and weight at the columns and at the partner columns, cos, sin; h, lanes, tree, y, rotated,
    # out; columns, partner columns; mask; out
    "rms_norm_rope": (6, 6, 2, 1, 1),
}


def row_ub_bytes(plan: RowPlan, family: str, dtype: torch.dtype, device: Device) -> int:
    """Unified Buffer bytes one program of a row ``family`` holds under ``plan`` (NPU model).

    Loaded tiles count twice under multibuffer; cumsum works on ``R x 16`` tiles of at most 1024
    elements (``kernels/scan.py``).
    """
    if family not in ROW_FAMILIES:
        raise ValueError(f"unknown row family {family!r}; accepted: {', '.join(ROW_FAMILIES)}")
    loaded, working, index, masks, outputs = ROW_FAMILIES[family]
    itemsize = _ITEMSIZE[dtype]
    lanes = min(plan.block, 1024) if family == "cumsum" else plan.block
    rows, tail = (lanes // 16, 16) if family == "cumsum" else (1, lanes)
    return (loaded * _loads(device) * _tile_bytes(rows, tail, itemsize) + working * _tile_bytes(rows, tail, 4)
            + index * _tile_bytes(rows, tail, 4) + masks * _tile_bytes(rows, tail, 1)
            + outputs * _tile_bytes(rows, tail, itemsize))


def rope_row_plan(n: int, dtype: torch.dtype, device: Device) -> RowPlan:
    """The norm-and-rotate row's plan (``kernels/rope.py``): the RMSNorm row plan, whose lanes must
    hold a whole head of an even ``n`` (the rotation pairs element i with element i + n/2)."""
    plan = row_plan(n, dtype, device)
    if n % 2 or n > plan.block:
        raise UnsupportedPlan(f"norm + rotary embedding needs an even head dim of at most {plan.block} elements, "
                              f"got {n}")
    return plan


#: Elements of the (heads, head dim) tile one norm-and-rotate program takes at most: 1024 on GPUs (H100 sweep of
#: heads per program x warps, Qwen3 shapes at 4 x 512, 1 x 2048 and 8 x 2048 tokens: 8 heads of 128 on 2 warps
#: were fastest, 1.35-1.42x faster than all 16 heads on 4), 4096 elsewhere (NPUs: then as many as the UB holds;
#: the interpreter pays per program).
_ROPE_TILE_ELEMENTS = {"cuda": 1024, "npu": 4096, "cpu": 4096}
#: Elements of that tile each GPU thread holds (warps = tile / (32 x this)).
_ROPE_ELEMENTS_PER_THREAD = 16


def rope_heads_per_program(plan: RowPlan, heads: int, dtype: torch.dtype, device: Device) -> int:
    """Heads of one position a norm-and-rotate program takes (``kernels/rope.py``): a schedule, since
    rows never mix.  All of them up to a tile of ``_ROPE_TILE_ELEMENTS``; on NPUs as many as the UB
    holds rows of the ``rms_norm_rope`` family."""
    tile = _ROPE_TILE_ELEMENTS[device.plan_kind]
    per_program = min(1 << max(0, heads - 1).bit_length(), max(1, tile // plan.block))
    if device.npu is not None:
        row_bytes = row_ub_bytes(plan, "rms_norm_rope", dtype, device)
        while per_program > 1 and per_program * row_bytes > npu_ub_budget(device):
            per_program //= 2
    return per_program


def rope_warps(plan: RowPlan, heads_per_program: int) -> int:
    """Warps of a norm-and-rotate program of ``heads_per_program`` heads (a schedule):
    ``_ROPE_ELEMENTS_PER_THREAD`` elements a thread, 1 to 8 warps."""
    return min(8, max(1, heads_per_program * plan.block // (32 * _ROPE_ELEMENTS_PER_THREAD)))


@dataclass(frozen=True)
class MatmulSchedule:
    """How the programs of one matmul launch are laid out; never touches the numerics."""

    block_m: int
    block_n: int
    #: Chunks of K run in parallel programs (combined by the last to arrive) instead of serially.
    split: bool
    num_warps: int
    num_stages: int
    group_m: int
    #: NPU: a 1-D launch of this many programs, each looping over output tiles (0: one program
    #: per tile and K-chunk, on GPUs and the CPU).
    programs: int = 0
    #: NPU: load A's tile along its unit stride as (BLOCK_K, BLOCK_M) and transpose it in the UB
    #: (A column-major); the same for B as (BLOCK_N, BLOCK_K) (a transposed weight).  Values are
    #: unchanged, so the bits are too.
    a_transposed: bool = False
    b_transposed: bool = False
    #: NPU: Unified Buffer bytes one program holds (``matmul_ub_bytes``); 0 elsewhere.
    ub_bytes: int = 0
    #: Chunks a serial program accumulates side by side (1, 2 or 4; divides the plan's chunks):
    #: independent MMA chains that overlap, added in chunk order as they finish.
    chunks_in_flight: int = 1
    #: Split programs load their chunk of B (the weight) into registers before they wait for the
    #: previous kernel (``overlap.py``), instead of streaming it block by block after the wait.
    preload_weight: bool = False
    #: Serial tiles of 2-D 16-bit operands are loaded by the tensor memory accelerator (sm_90+) from
    #: descriptors built at launch, instead of by every thread from pointers; the values, hence the bits,
    #: are the same.  Operands a descriptor cannot address (unaligned) keep the pointer loads.
    tma: bool = False
    #: A serial 2-D 16-bit bias-free matmul (or group) runs the sm_90 Gluon kernel of ``matmul_wgmma.py``
    #: (its own 128 x 128 tiles, whose wgmma never drain at a chunk boundary) where the device has it
    #: (``Device.gluon_wgmma``) and the TMA can address every operand; elsewhere this schedule's tiles run
    #: in the Triton template.  Same additions, same bits.  Chosen by prefill schedules only where
    #: ``ASCEND_BI_GLUON_MATMUL=1``: its speed is not measured yet (decision 0032).
    gluon_wgmma: bool = False


#: Shared memory a schedule may fill with pipelined A and B tiles (H100/H200 allow 227 KB).
_SMEM_FOR_STAGES = 160 * 1024
#: Above this many rows a split's partials cost more than the weight reads it spreads out.
_SPLIT_MAX_ROWS = 128
#: Decode rows split K only when it has this many chunks (fewer gain nothing from the split).
_SPLIT_MIN_CHUNKS = 8
#: Rows of a decode step's matmuls (batch sizes up to here) and their column tile.
_DECODE_ROWS = 32
_DECODE_BLOCK_N = 32
#: Decode rows up to here keep a one-pass tile's chunks in flight (``MatmulSchedule.chunks_in_flight``).
_IN_FLIGHT_ROWS = 16
#: Blocks per chunk a preloading split program holds (``MatmulSchedule.preload_weight``; ``_preload_b``).
PRELOAD_CHUNK_BLOCKS = (1, 2, 4)
#: Above this many rows (prefill) tiles are 64 or 128 x 128 (``_prefill_schedule``).
_PREFILL_ROWS = 64
#: Up to this many rows a gated MLP's two products and activation run in one launch (``gated_in_one_launch``).
_GATED_ONE_LAUNCH_ROWS = 128


def gated_in_one_launch(m: int, device: Device) -> bool:
    """Whether ``bi_matmul_gated`` computes ``m`` rows in one launch (both products' tiles in one program)
    rather than a grouped matmul and an elementwise launch; the bits are the same either way.

    A gated tile holds four fp32 accumulators (two products, each a running total and a chunk), so its tiles
    stay 64 columns wide; at prefill rows two launches with a plain product's tiles are faster (H100, Qwen3-0.6B
    and Llama-3.2-1B gate/up: one launch 0.53-0.67x cuBLAS from 256 rows on, the grouped product alone
    0.75-0.87x).  The interpreter keeps one launch (NPUs run the products apart before this is asked).
    """
    return device.triton_interpreted or m <= _GATED_ONE_LAUNCH_ROWS


@functools.lru_cache(maxsize=4096)
def matmul_schedule(plan: MatmulPlan, m: int, n: int, batch: int, itemsize: int, device: Device,
                    a_transposed: bool = False, b_transposed: bool = False, gated: bool = False) -> MatmulSchedule:
    """Tiles and split choice for ``batch`` matmuls of ``m`` rows; free to depend on ``m``.

    Chosen from sweeps of tiles x split x warps x stages on an H200 (tools/bench_matmul.py --sweep,
    docs/decisions/0003-decode-matmul-schedules.md): narrow tiles and deep pipelines for decode
    rows, which are bound by weight reads; the split whenever the output has fewer tiles than the
    device has SMs and K has chunks enough to spread.  ``gated``: the tile computes two products (``GATED``), so it
    is half as wide.  ``a_transposed``/``b_transposed`` (an operand's unit stride is along K for
    B, along M for A) only change NPU schedules, whose UB must hold the transposing loads.
    """
    if device.plan_kind == "npu":
        return _npu_matmul_schedule(plan, m, n, batch, itemsize, device, a_transposed, b_transposed)
    if device.triton_interpreted:
        # One fixed tile keeps the interpreter's numpy dot on one shape; few programs keep it fast.
        return MatmulSchedule(block_m=32, block_n=128, split=False, num_warps=4, num_stages=1, group_m=1)
    units = device.compute_units
    if m <= _DECODE_ROWS and (gated or plan.num_chunks < _SPLIT_MIN_CHUNKS) \
            and batch * -(-n // _DECODE_BLOCK_N) < 4 * units:
        # Decode rows of short K (or a gated pair): one pass over K per tile, many small tiles in
        # flight, deep pipelines (1.1-1.8x the earlier schedules at 8 and 32 rows on an H200).  Up
        # to 16 rows the pass waits on its MMA chain, so its chunks run side by side (H200: the gated
        # pair 1.3x, the query/key/value group 1.1x at 1-8 rows; at 32 rows the group was slower
        # and the decode step too).
        in_flight = _chunks_in_flight(plan.num_chunks) if m <= _IN_FLIGHT_ROWS else 1
        return MatmulSchedule(block_m=16, block_n=_DECODE_BLOCK_N // (2 if gated else 1), split=False,
                              num_warps=2, num_stages=4 if in_flight > 1 else 7, group_m=8,
                              chunks_in_flight=in_flight)
    block_m = 16 if m <= 32 else 32 if m <= 64 else 64
    block_n = 32 if m <= 16 else 64

    def tiles() -> int:
        return batch * -(-m // block_m) * -(-n // block_n)

    if m > 16 and tiles() >= 4 * units:  # wide outputs (the LM head): bigger tiles, fewer re-reads
        block_m, block_n = min(64, 2 * block_m), 128 if m > 64 and not gated else block_n
    # Decode rows split only long K; wider rows whenever the output alone leaves SMs idle.
    split = (plan.num_chunks > 1 and tiles() < units and m <= _SPLIT_MAX_ROWS
             and (m > 16 or plan.num_chunks >= _SPLIT_MIN_CHUNKS))
    if m > _PREFILL_ROWS and not split and not gated and itemsize == 2:  # fp32 dots run on FMA units: not swept
        return _prefill_schedule(plan, m, n, batch, itemsize, device)
    stage_bytes = (block_m + block_n * (2 if gated else 1)) * plan.block_k * itemsize  # gated: two B tiles
    stages = min(5 if m <= 16 else 3, _SMEM_FOR_STAGES // stage_bytes)
    # Decode rows' split programs hold their weight chunk in registers from before the wait (H200, 28
    # layers' o and down projections: 0.89x at 1-16 rows, 0.95-1.0x at 32; at 64 rows 1.1-1.2x).
    preload = split and m <= _DECODE_ROWS and plan.chunk_blocks in PRELOAD_CHUNK_BLOCKS
    return MatmulSchedule(block_m=block_m, block_n=block_n, split=split, num_warps=4, num_stages=stages, group_m=8,
                          preload_weight=preload)


def _prefill_schedule(plan: MatmulPlan, m: int, n: int, batch: int, itemsize: int, device: Device) -> MatmulSchedule:
    """Prefill rows: two warpgroups on 128 x 128 tiles when those tiles fill half the SMs or more, else one
    on 64 x 128; 4 stages where shared memory holds them.  H100 sweep over Qwen3-0.6B and Llama-3.2-1B
    shapes (``tools/bench_matmul.py --sweep``), geo-mean vs cuBLAS per M from 128 to 4096 rows: 0.62-0.80x,
    against 0.54-0.69x for the 64 x 64 tiles before.  (A tile's running total and chunk accumulator both
    live in registers, so 128 x 256 tiles spill.)  The 128 x 128 tiles run the Gluon kernel where the
    device chooses it (``Device.gluon_wgmma_default``)."""
    wide = 2 * batch * -(-m // 128) * -(-n // 128) >= device.compute_units
    block_m = 128 if wide else 64
    stages = min(4, _SMEM_FOR_STAGES // ((block_m + 128) * plan.block_k * itemsize))  # 4 for 16-bit operands
    return MatmulSchedule(block_m=block_m, block_n=128, split=False, num_warps=8 if wide else 4,
                          num_stages=stages, group_m=8, gluon_wgmma=wide and device.gluon_wgmma_default)


def _chunks_in_flight(num_chunks: int) -> int:
    """The most chunks (4, 2 or 1) a program can run side by side that divide ``num_chunks``."""
    return next(count for count in (4, 2, 1) if num_chunks % count == 0)


def matmul_ub_bytes(block_m: int, block_n: int, plan: MatmulPlan, itemsize: int, device: Device,
                    a_transposed: bool = False, b_transposed: bool = False) -> int:
    """Unified Buffer bytes one matmul program holds (NPU model, counted as if every tile lived in
    the UB; the cube unit's own L0/L1 buffers are not needed to fit).

    Operand tiles are loaded along their unit stride (twice under multibuffer) and transposed in
    place when that stride is not the tile's last axis; the chunk accumulator and the running
    total; the epilogue's bias, fp32 bias, output and mask.  The interpreter's fp32 copies
    (``fp32_io``) are not counted: an NPU never makes them, and simulated NPUs get its tiles.
    """
    k = plan.block_k
    loads = _loads(device)
    a = _tile_bytes(k, block_m, itemsize) if a_transposed else _tile_bytes(block_m, k, itemsize)
    b = _tile_bytes(block_n, k, itemsize) if b_transposed else _tile_bytes(k, block_n, itemsize)
    total = loads * (a + b)
    total += a_transposed * _tile_bytes(block_m, k, itemsize) + b_transposed * _tile_bytes(k, block_n, itemsize)
    total += 2 * _tile_bytes(block_m, block_n, 4)  # chunk accumulator, running total
    total += (loads * _tile_bytes(block_m, block_n, itemsize) + _tile_bytes(block_m, block_n, 4)
              + _tile_bytes(block_m, block_n, itemsize) + _tile_bytes(block_m, block_n, 1))
    return total + _tile_bytes(1, block_m + block_n + k, 4)  # row, column and K offsets


#: Candidate NPU tile widths, widest first (tails of 32 bytes or more in every dtype).
_NPU_BLOCK_N = (256, 128, 64, 32, 16)


#: NPU matmul tiles have this many rows whatever M is: nobody has yet checked on an NPU that the
#: cube unit rounds a row the same in tiles of every height (verified on GPUs), so the tile never
#: changes with the batch.  (Triton's interpreter, which runs ``tl.dot`` through numpy, does round
#: differently by tile height.)
NPU_MATMUL_BLOCK_M = 32


def _npu_matmul_schedule(plan: MatmulPlan, m: int, n: int, batch: int, itemsize: int, device: Device,
                         a_transposed: bool, b_transposed: bool) -> MatmulSchedule:
    """``NPU_MATMUL_BLOCK_M`` rows and the widest column tile the UB holds (smaller rows only if
    none does -- a choice that depends on no extent of the batch); one program per AI core at
    most, each walking its tiles serially (no split: it needs atomics, untried on NPUs)."""
    budget = npu_ub_budget(device)
    block_m = NPU_MATMUL_BLOCK_M
    while True:
        for block_n in _NPU_BLOCK_N:
            if block_n > 2 * max(16, n) and block_n > 16:
                continue  # wider than the output: wasted UB
            ub = matmul_ub_bytes(block_m, block_n, plan, itemsize, device, a_transposed, b_transposed)
            if ub <= budget:
                tiles = batch * -(-m // block_m) * -(-n // block_n)
                return MatmulSchedule(block_m=block_m, block_n=block_n, split=False, num_warps=0, num_stages=0,
                                      group_m=8, programs=grid_programs(tiles, device, cube=True),
                                      a_transposed=a_transposed, b_transposed=b_transposed, ub_bytes=ub)
        if block_m == 16:
            raise UnsupportedPlan(
                f"no matmul tile fits the NPU's Unified Buffer budget of {budget} bytes "
                f"(BLOCK_K={plan.block_k}, itemsize {itemsize}); raise ASCEND_BI_NPU_UB_BYTES if the device has more"
            )
        block_m //= 2


def matmul_operand_readable(shape: tuple[int, ...], strides: tuple[int, ...], device: Device) -> bool:
    """Whether the matmul template reads this operand efficiently by its strides.

    Tiles are loaded as vectors along a unit-stride dimension; one of the two matrix dimensions
    must have stride 1 (or extent 1).  Transposed weights qualify; a gathered view such as
    ``x[:, ::2]`` does not.  The rule is the same on every device today.  Symbolic extents and
    strides count only when they are 1 for every value (no guard is added; an unbacked batch
    extent, which cannot be guarded on, is simply not 1).
    """
    return any(statically_known_true(extent == 1) or statically_known_true(stride == 1)
               for extent, stride in zip(shape[-2:], strides[-2:], strict=True))


@dataclass(frozen=True)
class AttentionPlan:
    """How one query's softmax-weighted sum over keys is ordered.

    Keys are cut into splits of ``split_keys`` (a fixed split *size*, never a count), each split
    into tiles of ``block_n`` keys.  A split runs the online softmax over its tiles in order from
    a fresh state; split results are folded in split order.  A query's bits therefore depend on
    its keys alone: the same at any batch size, and the same in a prefill and in a decode step.
    """

    block_n: int
    split_keys: int
    block_d: int
    block_dv: int
    input_precision: str
    fp32_io: bool
    #: The denominator is a ``tl.dot`` of the weights (rounded as ``acc`` takes them) by a block of
    #: ones, not a ``tree_sum_rows`` of them: a tree across a GPU tile's columns crosses warps every
    #: tile (on an H200 decode attention alone got 3-8% faster, a 512-token prefill's 15% slower);
    #: NPUs sum rows in the vector unit and keep the tree (no round trip through the cube).
    denominator_by_dot: bool = True
    #: Bytes per element of q, k and v (sizes NPU tiles; no part of the order).
    itemsize: int = 4

    def num_splits(self, keys: int) -> int:
        return max(1, -(-keys // self.split_keys))


@functools.lru_cache(maxsize=4096)
def attention_plan(head_dim: int, value_dim: int, dtype: torch.dtype, device: Device) -> AttentionPlan:
    _check_dtype("attention", dtype)
    block_d, block_dv = max(16, 1 << (head_dim - 1).bit_length()), max(16, 1 << (value_dim - 1).bit_length())
    block_n = 64
    if device.plan_kind == "npu":  # key tiles of at most 16 KiB per operand, so that the UB holds them
        block_n = max(16, min(64, 16 * 1024 // (max(block_d, block_dv) * _ITEMSIZE[dtype])))
    return AttentionPlan(
        block_n=block_n,
        split_keys=512 if device.triton_interpreted and device.plan_kind != "npu" else 256,
        block_d=block_d,
        block_dv=block_dv,
        input_precision="ieee",
        fp32_io=device.triton_interpreted and dtype != torch.float32,
        denominator_by_dot=device.plan_kind != "npu",
        itemsize=_ITEMSIZE[dtype],
    )


@dataclass(frozen=True)
class AttentionSchedule:
    block_m: int
    #: Splits run in parallel programs and a second launch folds them (decode, few programs),
    #: instead of one program folding them as it goes.
    split: bool
    num_warps: int
    #: NPU: a 1-D launch of this many programs looping over (query block, head) pairs, keys
    #: loaded along their unit stride and transposed in the UB (0: one program per pair).
    programs: int = 0
    #: NPU: Unified Buffer bytes one program holds (``attention_ub_bytes``); 0 elsewhere.
    ub_bytes: int = 0
    #: Pipeline depth of the key loop on GPUs (None: Triton's default, 3 on sm_90).
    num_stages: int | None = None


#: Packed query rows from which GPU programs of attention without a mask take 128 rows on 8 warps.
LONG_ATTENTION_ROWS = 4096


@functools.lru_cache(maxsize=4096)
def attention_schedule(plan: AttentionPlan, queries: int, keys: int, heads: int, device: Device,
                       mask: str | None = None, copies_past: bool = False) -> AttentionSchedule:
    """Rows per program and the split choice; free to depend on the batch.

    ``queries`` counts a group's packed rows (query positions x query heads per key/value head),
    ``heads`` the (batch, key/value head) pairs; ``mask``: what the scores read, None, "boolean"
    or "additive" (a floating mask); ``copies_past``: the launch's other programs copy a grown
    cache's past (``kernels/rope_attention.py``).
    """
    if mask not in (None, "boolean", "additive"):
        raise ValueError(f"attention_schedule: mask must be None, 'boolean' or 'additive', got {mask!r}")
    if device.plan_kind == "npu":
        return _npu_attention_schedule(plan, queries, heads, device)
    if device.triton_interpreted:
        return AttentionSchedule(block_m=16, split=False, num_warps=4)
    block_m, warps, stages = (16, 4, None) if queries <= 16 else (64, 4, 2)
    # Prefill blocks: 64 rows on 4 warps loading two key tiles ahead (decision 0026), except
    # 128 rows on 8 warps loading three (decision 0030) where the scores add a floating mask (with
    # 4 warps 64 rows spill, triton 3.9's sm_90 build; H100, 4 x 512 tokens: 69.8 us against 92.6
    # for 64 rows on 8 warps), and where no mask is read and the rows are many (H100, causal: 2048
    # tokens at bs 1 0.95x the time, 8192 0.95x; 512 tokens at bs 4-8 1.04-1.07x, boolean masks
    # 1.10-1.12x).
    if block_m == 64 and (mask == "additive" or (mask is None and queries >= LONG_ATTENTION_ROWS)):
        block_m, warps, stages = 128, 8, 3
    blocks = -(-queries // block_m)
    # Splits while programs leave SMs idle and a head's keys make at least as many splits as its
    # rows make blocks: the fold's states grow with the rows (H200, split / serial time at bs 1: a
    # 512-token prefill 1.58x causal, 1.66x with a boolean mask; 128 query positions over 1024 keys
    # 0.72x, 64 over 2048 0.46x, 32 over 4096 0.35x).
    splits = plan.num_splits(keys)
    # Where copy programs fill the SMs anyway, the attention's own chain is what is left to shorten (0008).
    split = 1 < splits and blocks <= splits and (copies_past or heads * blocks < device.compute_units)
    return AttentionSchedule(block_m=block_m, split=split, num_warps=warps, num_stages=stages)


def attention_mask_ahead(schedule: AttentionSchedule, split: bool) -> bool:
    """Whether a launch's programs read each mask tile a tile ahead of the one they compute: GPU
    programs do (Triton's pipeliner prefetches dot operands only), except serial prefill blocks, which
    fold splits in their key loop and read it as they reach it (0030).  There a tile held ahead, next
    to both states, spills (sm_90) and took 2x the time (H200, 512-2048 queries).  A serial 16-row
    block (its 4 warps split a tile's keys) reading it in that loop gave other bits for a few rows
    (H100, triton 3.6, a boolean mask at batch 32), so it reads ahead as a split's programs do.  NPU
    programs read it in the loop: triton-ascend's multibuffer overlaps the load, and the UB holds no
    second tile.  ``split``: the launch runs the split schedule."""
    return not schedule.programs and (split or schedule.block_m == 16)


def attention_ub_bytes(block_m: int, plan: AttentionPlan, device: Device) -> int:
    """Unified Buffer bytes one attention program holds (NPU model, every tile counted in the UB).

    q, a key tile loaded along the head dim and transposed, a value tile and an additive mask
    tile (twice each under multibuffer); scores, their exponentials and the probabilities cast
    for the second dot; the visibility mask; the split's and the running weighted values; the
    output tile.  As in ``matmul_ub_bytes``, the interpreter's fp32 copies are not counted.
    """
    bn, bd, bdv, itemsize = plan.block_n, plan.block_d, plan.block_dv, plan.itemsize
    loads = _loads(device)
    total = loads * (_tile_bytes(block_m, bd, itemsize) + _tile_bytes(bn, bd, itemsize)
                     + _tile_bytes(bn, bdv, itemsize) + _tile_bytes(block_m, bn, 4))
    total += _tile_bytes(bd, bn, itemsize)  # transposed key tile
    total += 3 * _tile_bytes(block_m, bn, 4) + _tile_bytes(block_m, bn, itemsize) + _tile_bytes(block_m, bn, 1)
    total += 2 * _tile_bytes(block_m, bdv, 4) + _tile_bytes(block_m, bn // 2, 4)  # acc, running acc, tree
    total += _tile_bytes(block_m, bdv, itemsize)
    return total + 8 * _tile_bytes(1, block_m, 4)  # per-row max, denominators, scales, offsets


#: NPU query blocks have 16 rows in prefill and decode alike (see ``NPU_MATMUL_BLOCK_M``).
NPU_ATTENTION_BLOCK_M = 16


def _npu_attention_schedule(plan: AttentionPlan, queries: int, heads: int, device: Device) -> AttentionSchedule:
    """``NPU_ATTENTION_BLOCK_M`` query rows, serial splits, one program per AI core at most."""
    budget = npu_ub_budget(device)
    ub = attention_ub_bytes(NPU_ATTENTION_BLOCK_M, plan, device)
    if ub <= budget:
        blocks = heads * -(-queries // NPU_ATTENTION_BLOCK_M)
        return AttentionSchedule(block_m=NPU_ATTENTION_BLOCK_M, split=False, num_warps=0,
                                 programs=grid_programs(blocks, device, cube=True), ub_bytes=ub)
    raise UnsupportedPlan(
        f"no attention tile fits the NPU's Unified Buffer budget of {budget} bytes (head dim {plan.block_d}, "
        f"value dim {plan.block_dv}); raise ASCEND_BI_NPU_UB_BYTES if the device has more"
    )
