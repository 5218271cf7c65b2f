"""The law, checked on the plan functions themselves."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from ascend_compile.devices import Device
from ascend_compile.kernels.plans import (
    LONG_ATTENTION_ROWS,
    AttentionSchedule,
    attention_mask_ahead,
    attention_plan,
    attention_schedule,
    gated_in_one_launch,
    matmul_operand_readable,
    matmul_plan,
    matmul_schedule,
    rope_heads_per_program,
    rope_row_plan,
    rope_warps,
)

GPU = Device(kind="cuda", index=0, compute_units=132, triton_interpreted=False)
CPU = Device(kind="cpu", index=0, compute_units=2, triton_interpreted=True)


def test_plan_cannot_see_the_batch_extent() -> None:
    assert list(inspect.signature(matmul_plan).parameters) == ["k", "n", "dtype", "device"]


@pytest.mark.parametrize("device", [GPU, CPU])
@pytest.mark.parametrize("k", [1, 64, 1000, 1024, 3072])
def test_chunks_cover_k_exactly_once(device: Device, k: int) -> None:
    plan = matmul_plan(k, 1024, torch.bfloat16, device)
    assert plan.num_chunks * plan.chunk_k >= k > (plan.num_chunks - 1) * plan.chunk_k


def test_gpu_schedules_vary_with_rows_but_never_touch_the_plan() -> None:
    plan = matmul_plan(3072, 1024, torch.bfloat16, GPU)
    schedules = {matmul_schedule(plan, m, 1024, 1, 2, GPU) for m in (1, 8, 32, 64, 128, 512)}
    assert len(schedules) > 1
    assert any(s.split for s in schedules) and any(not s.split for s in schedules)


def test_fp32_keeps_ieee_precision() -> None:
    assert matmul_plan(256, 256, torch.float32, GPU).input_precision == "ieee"


@pytest.mark.parametrize("k,n", [(4096, 151936), (1024, 3072), (3072, 1024), (2048, 1024)])
def test_schedules_fit_shared_memory(k: int, n: int) -> None:
    for dtype_size in (2, 4):
        plan = matmul_plan(k, n, torch.float32 if dtype_size == 4 else torch.bfloat16, GPU)
        for m in (1, 16, 33, 64, 100, 512, 4096):
            for gated in (False, True):
                s = matmul_schedule(plan, m, n, 1, dtype_size, GPU, gated=gated)
                columns = s.block_n * (2 if gated else 1)
                stage = s.chunks_in_flight * (s.block_m + columns) * plan.block_k * dtype_size
                assert stage * s.num_stages <= 227 * 1024


def test_prefill_rows_take_wide_tiles_and_gated_products_two_launches() -> None:
    """Prefill (16-bit): 128 x 128 tiles on two warpgroups when they fill half the SMs, 64 x 128 on one otherwise;
    a gated MLP's tiles never pass 64 columns (four accumulators) and prefill rows take two launches."""
    plan = matmul_plan(1024, 3072, torch.bfloat16, GPU)
    wide = matmul_schedule(plan, 2048, 3072, 1, 2, GPU)
    assert (wide.block_m, wide.block_n, wide.num_warps, wide.split) == (128, 128, 8, False)
    narrow = matmul_schedule(matmul_plan(3072, 1024, torch.bfloat16, GPU), 512, 1024, 1, 2, GPU)
    assert (narrow.block_m, narrow.block_n, narrow.num_warps) == (64, 128, 4)
    fp32 = matmul_schedule(matmul_plan(1024, 3072, torch.float32, GPU), 2048, 3072, 1, 4, GPU)
    assert (fp32.block_m, fp32.block_n, fp32.num_warps, fp32.num_stages) == (64, 128, 4, 3)  # FMA dots: as before
    assert all(matmul_schedule(plan, m, n, 1, 2, GPU, gated=True).block_n <= 64
               for m in (1, 64, 100, 128) for n in (3072, 151936))
    assert gated_in_one_launch(128, GPU) and not gated_in_one_launch(129, GPU)
    assert gated_in_one_launch(4096, CPU)  # the interpreter keeps one launch (tests ask for two)


def test_wide_prefill_tiles_run_the_gluon_kernel_where_the_device_chooses_it() -> None:
    """``ASCEND_BI_GLUON_MATMUL=1`` on an sm_90 GPU (``Device.gluon_wgmma_default``): the 128 x 128 prefill
    tiles become ``gluon_wgmma`` schedules; narrow prefill, decode rows and fp32 keep the Triton template,
    and so does every schedule of a device that has the kernel but was not asked for it."""
    plan, narrow_plan = matmul_plan(1024, 3072, torch.bfloat16, GPU), matmul_plan(3072, 1024, torch.bfloat16, GPU)
    chosen = dataclasses.replace(GPU, gluon_wgmma=True, gluon_wgmma_default=True)
    assert matmul_schedule(plan, 2048, 3072, 1, 2, chosen).gluon_wgmma
    assert not matmul_schedule(narrow_plan, 512, 1024, 1, 2, chosen).gluon_wgmma  # 64 x 128 tiles
    assert not any(matmul_schedule(plan, m, 3072, 1, 2, chosen).gluon_wgmma for m in (1, 16, 64))
    assert not matmul_schedule(matmul_plan(1024, 3072, torch.float32, chosen), 2048, 3072, 1, 4, chosen).gluon_wgmma
    has_it = dataclasses.replace(chosen, gluon_wgmma_default=False)
    assert not matmul_schedule(plan, 2048, 3072, 1, 2, has_it).gluon_wgmma


def test_chunks_in_flight_divide_the_chunks_and_serve_small_decode_batches() -> None:
    """Chunks in flight are a schedule: any M may pick them, as long as they divide the plan's chunks."""
    for k in (64, 1000, 1024, 2048, 3072, 4096):
        plan = matmul_plan(k, 1024, torch.bfloat16, GPU)
        for m in (1, 8, 16, 32, 64, 512, 4096):
            for gated in (False, True):
                s = matmul_schedule(plan, m, 1024, 1, 2, GPU, gated=gated)
                assert s.chunks_in_flight in (1, 2, 4) and plan.num_chunks % s.chunks_in_flight == 0
    short = matmul_plan(1024, 4096, torch.bfloat16, GPU)
    assert matmul_schedule(short, 8, 4096, 1, 2, GPU).chunks_in_flight == 4  # a decode tile: four MMA chains
    assert matmul_schedule(short, 16, 3072, 1, 2, GPU, gated=True).chunks_in_flight == 4
    assert matmul_schedule(short, 32, 4096, 1, 2, GPU).chunks_in_flight == 1


def test_decode_split_programs_preload_their_weight() -> None:
    """Split programs of decode rows load their weight chunk before the wait; wider rows, serial
    programs and the interpreter do not."""
    long_k = matmul_plan(2048, 1024, torch.bfloat16, GPU)
    for m in (1, 8, 16, 32):
        s = matmul_schedule(long_k, m, 1024, 1, 2, GPU)
        assert s.split and s.preload_weight, m
    assert matmul_schedule(long_k, 64, 1024, 1, 2, GPU).split
    assert not matmul_schedule(long_k, 64, 1024, 1, 2, GPU).preload_weight
    for k in (64, 1000, 1024, 3072, 4096):
        plan = matmul_plan(k, 1024, torch.bfloat16, GPU)
        for m in (1, 8, 32, 64, 512):
            for gated in (False, True):
                s = matmul_schedule(plan, m, 1024, 1, 2, GPU, gated=gated)
                assert not s.preload_weight or (s.split and plan.chunk_blocks in (1, 2, 4))
    assert not matmul_schedule(matmul_plan(2048, 1024, torch.bfloat16, CPU), 8, 1024, 1, 2, CPU).preload_weight


def test_attention_prefill_blocks_follow_the_mask_and_the_rows() -> None:
    """GPU prefill blocks: 128 rows on 8 warps, three tiles ahead, where a floating mask is read or no mask
    and many rows; 64 rows on 4 warps, two tiles ahead, otherwise (boolean masks, fewer rows).  Decode
    blocks and the interpreter keep 16 rows, 4 warps and Triton's depth.  The plan never sees the mask."""
    assert list(inspect.signature(attention_plan).parameters) == ["head_dim", "value_dim", "dtype", "device"]
    prefill, long, decode = (1024, 512, 16), (LONG_ATTENTION_ROWS, 2048, 8), (2, 520, 64)
    big, small = (128, 8, 3), (64, 4, 2)

    def shape(*args: int, mask: str | None = None, device: Device = GPU) -> tuple[int, int, int | None]:
        s = attention_schedule(attention_plan(128, 128, torch.bfloat16, device), *args, device, mask)
        return s.block_m, s.num_warps, s.num_stages

    assert shape(*prefill, mask="additive") == shape(*long) == shape(*long, mask="additive") == big
    assert shape(*prefill) == shape(*prefill, mask="boolean") == shape(*long, mask="boolean") == small
    assert shape(LONG_ATTENTION_ROWS - 1, 2048, 8) == small
    assert shape(*decode) == shape(*decode, mask="additive") == (16, 4, None)
    assert shape(*prefill, mask="additive", device=CPU) == (16, 4, None)
    with pytest.raises(ValueError, match="'boolean' or 'additive'"):
        attention_schedule(attention_plan(128, 128, torch.bfloat16, GPU), *prefill, GPU, "float")


def test_attention_reads_mask_tiles_ahead_except_in_serial_prefill_blocks() -> None:
    """A split launch's programs and serial 16-row blocks read a mask tile ahead; serial prefill blocks (64 or
    128 rows, folding splits in their loop) and NPU programs read it as their loop reaches it."""
    def schedule(block_m: int, programs: int = 0) -> AttentionSchedule:
        return AttentionSchedule(block_m=block_m, split=False, num_warps=4, programs=programs)

    assert attention_mask_ahead(schedule(16), split=False) and attention_mask_ahead(schedule(64), split=True)
    assert not attention_mask_ahead(schedule(64), split=False)
    assert not attention_mask_ahead(schedule(128), split=False)
    assert not attention_mask_ahead(schedule(16, programs=20), split=False)
    plan = attention_plan(128, 128, torch.bfloat16, GPU)
    assert attention_mask_ahead(attention_schedule(plan, 2, 520, 256, GPU), split=False)  # decode, bs 32
    assert not attention_mask_ahead(attention_schedule(plan, 1024, 520, 8, GPU, "boolean"), split=False)


def test_attention_splits_keys_only_when_they_outnumber_the_row_blocks() -> None:
    """Splits serve few programs with many keys a row block: a decode step and 128 positions over
    1024 keys split; a 512-token prefill at batch 1 (16 row blocks a head, 2 splits) runs serially,
    as does any launch whose programs already fill the SMs."""
    plan = attention_plan(128, 128, torch.bfloat16, GPU)
    assert attention_schedule(plan, 2, 520, 64, GPU).split  # decode, bs 8
    assert attention_schedule(plan, 256, 1024, 8, GPU).split
    assert not attention_schedule(plan, 1024, 512, 8, GPU).split
    assert not attention_schedule(plan, 2, 520, 256, GPU).split  # decode, bs 32: 256 programs


def test_a_launch_copying_a_grown_past_splits_its_keys_with_the_sms_full() -> None:
    """Copy programs fill the SMs anyway (0008): the attention splits while its keys make the splits,
    whatever the programs' count; one split's keys, or more row blocks than splits, stay serial."""
    plan = attention_plan(128, 128, torch.bfloat16, GPU)
    assert attention_schedule(plan, 2, 513, 256, GPU, copies_past=True).split  # decode, bs 32
    assert not attention_schedule(plan, 2, 200, 256, GPU, copies_past=True).split
    assert not attention_schedule(plan, 1024, 512, 8, GPU, copies_past=True).split


def test_operand_readability_with_unbacked_extents() -> None:
    """An unbacked batch extent (``mark_unbacked``) cannot be guarded on: the rule decides without it."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    rows = ShapeEnv().create_unbacked_symint()
    assert matmul_operand_readable((rows, 64), (64, 1), CPU)  # unit stride along K
    assert not matmul_operand_readable((64, rows), (rows, 2), CPU)  # gathered: no unit stride


@pytest.mark.parametrize(("dim", "heads", "gpu_tile"), [(128, 16, (8, 2)), (64, 32, (16, 2)), (128, 4, (4, 1))])
def test_norm_rope_programs_take_1024_elements_on_gpus(dim: int, heads: int, gpu_tile: tuple[int, int]) -> None:
    """A GPU program takes heads up to 1024 elements on 16 elements a thread (0028); the interpreter takes up to
    4096 elements (it pays per program)."""
    plan = rope_row_plan(dim, torch.bfloat16, GPU)
    per_program = rope_heads_per_program(plan, heads, torch.bfloat16, GPU)
    assert (per_program, rope_warps(plan, per_program)) == gpu_tile
    cpu_plan = rope_row_plan(dim, torch.bfloat16, CPU)
    assert rope_heads_per_program(cpu_plan, heads, torch.bfloat16, CPU) == min(heads, 4096 // cpu_plan.block)
