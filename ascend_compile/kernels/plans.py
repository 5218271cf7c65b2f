"""Reduction plans (numerics) and schedules (speed) for every kernel family.

The law of this project lives here:

    A plan fixes the order of floating-point additions.  It is a function of the reduced extent,
    the other non-batch extents, the dtype and the device kind -- never of the batch extent and
    never of a runtime benchmark.  A schedule decides grid, tile rows, warps and whether the chunks
    of a plan run in parallel programs or serially in one; it may look at the batch extent but can
    never change the order of additions.

Plans and schedules are pure functions of hashable arguments, memoised so that a launch costs
one dictionary lookup.  The law is enforced by signatures: ``matmul_plan`` has no parameter through which the number of
rows could reach it, and ``matmul_schedule`` returns nothing that the kernel uses to order sums.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from ascend_compile.devices import Device

logger = logging.getLogger(__name__)

#: Floating dtypes every kernel family takes (accumulation is always fp32).
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


class UnsupportedPlan(ValueError):
    """No batch-invariant plan exists for this op, dtype or device."""


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
    if device.kind == "cpu":
        # The interpreter pays per program and per block, not per flop: large blocks.
        block_k, chunk_elems = 128, 256
    elif device.kind == "npu":
        # Unified-buffer aware tiles come with the Ascend work; keep CUDA's order until then.
        block_k, chunk_elems = 64, 256
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
    cap = 4096 if device.triton_interpreted else 1024
    block = min(cap, max(16, 1 << max(0, n - 1).bit_length()))
    return RowPlan(block=block, chunk=8 * block, fp32_io=device.triton_interpreted and dtype != torch.float32)


def row_warps(plan: RowPlan) -> int:
    """Warps per row program: schedule only (``tree_sum`` makes the order layout-independent)."""
    return 4 if plan.block <= 1024 else 8


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


#: Shared memory a schedule may fill with pipelined A and B tiles (H100/H200 allow 227 KB).
_SMEM_FOR_STAGES = 160 * 1024
#: Above this many rows a split's partials cost more than the weight reads it spreads out.
_SPLIT_MAX_ROWS = 128


@functools.lru_cache(maxsize=4096)
def matmul_schedule(plan: MatmulPlan, m: int, n: int, batch: int, itemsize: int, device: Device) -> MatmulSchedule:
    """Tiles and split choice for ``batch`` matmuls of ``m`` rows; free to depend on ``m``.

    Chosen from a sweep of tiles x split x stages on an H200 (tools/bench_matmul.py --sweep,
    docs/BENCHMARKS.md): narrow tiles and deep pipelines for decode rows, which are bound by
    weight reads; the split whenever the output has fewer tiles than the device has SMs.
    """
    if device.triton_interpreted:
        # One fixed tile keeps the interpreter's numpy dot on one shape; few programs keep it fast.
        return MatmulSchedule(block_m=32, block_n=128, split=False, num_warps=4, num_stages=1, group_m=1)
    units = device.compute_units
    block_m = 16 if m <= 32 else 32 if m <= 64 else 64
    block_n = 32 if m <= 16 else 64

    def tiles() -> int:
        return batch * -(-m // block_m) * -(-n // block_n)

    if m > 16 and tiles() >= 4 * units:  # wide outputs (the LM head): bigger tiles, fewer re-reads
        block_m, block_n = min(64, 2 * block_m), 128 if m > 64 else block_n
    # Decode rows split only long K (short K gains nothing from 4 chunks); wider rows whenever the
    # output alone leaves SMs idle.
    split = (plan.num_chunks > 1 and tiles() < units and m <= _SPLIT_MAX_ROWS
             and (m > 16 or plan.num_chunks >= 8))
    stage_bytes = (block_m + block_n) * plan.block_k * itemsize
    stages = min(5 if m <= 16 else 3, _SMEM_FOR_STAGES // stage_bytes)
    return MatmulSchedule(block_m=block_m, block_n=block_n, split=split, num_warps=4, num_stages=stages, group_m=8)


def matmul_operand_readable(shape: tuple[int, ...], strides: tuple[int, ...], device: Device) -> bool:
    """Whether the matmul template reads this operand efficiently by its strides.

    Tiles are loaded as vectors along a unit-stride dimension; one of the two matrix dimensions
    must have stride 1 (or extent 1).  Transposed weights qualify; a gathered view such as
    ``x[:, ::2]`` does not.  The rule is the same on every device today.
    """
    return any(extent == 1 or stride == 1 for extent, stride in zip(shape[-2:], strides[-2:], strict=True))


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

    def num_splits(self, keys: int) -> int:
        return max(1, -(-keys // self.split_keys))


@functools.lru_cache(maxsize=4096)
def attention_plan(head_dim: int, value_dim: int, dtype: torch.dtype, device: Device) -> AttentionPlan:
    _check_dtype("attention", dtype)
    block_n = 64
    return AttentionPlan(
        block_n=block_n,
        split_keys=8 * block_n if device.triton_interpreted else 4 * block_n,
        block_d=max(16, 1 << (head_dim - 1).bit_length()),
        block_dv=max(16, 1 << (value_dim - 1).bit_length()),
        input_precision="ieee",
        fp32_io=device.triton_interpreted and dtype != torch.float32,
    )


@dataclass(frozen=True)
class AttentionSchedule:
    block_m: int
    #: Splits run in parallel programs and a second launch folds them (decode, few programs),
    #: instead of one program folding them as it goes.
    split: bool
    num_warps: int


@functools.lru_cache(maxsize=4096)
def attention_schedule(plan: AttentionPlan, queries: int, keys: int, heads: int, device: Device) -> AttentionSchedule:
    """Query rows per program and the split choice; free to depend on the batch (``heads`` = B*H)."""
    if device.triton_interpreted:
        return AttentionSchedule(block_m=16, split=False, num_warps=4)
    block_m = 16 if queries <= 16 else 64
    programs = heads * -(-queries // block_m)
    split = plan.num_splits(keys) > 1 and programs < device.compute_units
    return AttentionSchedule(block_m=block_m, split=split, num_warps=4 if block_m <= 16 else 8)
