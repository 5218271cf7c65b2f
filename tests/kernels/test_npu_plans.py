"""NPU (Ascend) plans and schedules, checked without an NPU: every tile fits the Unified Buffer,
every grid fits the runtime, numerics obey the law, and the seed's transposed weight is read by
its strides in a UB-sized tile."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from ascend_compile import devices
from ascend_compile.devices import Device, NpuFacts
from ascend_compile.kernels import plans
from ascend_compile.kernels.plans import (
    NPU_MAX_GRID,
    NPU_VECTOR_ALIGN,
    ROW_FAMILIES,
    UnsupportedPlan,
    attention_plan,
    attention_schedule,
    attention_ub_bytes,
    grid_programs,
    launch_options,
    matmul_plan,
    matmul_schedule,
    matmul_ub_bytes,
    npu_ub_budget,
    row_plan,
    row_ub_bytes,
)

#: Atlas A2 (910B4: 20 AI cores) and A3-like (24) devices with the 192 KiB Unified Buffer.
NPUS = [Device(kind="npu", index=0, compute_units=ai, triton_interpreted=False,
               npu=NpuFacts(ai_cores=ai, vector_cores=2 * ai, ub_bytes=192 * 1024)) for ai in (20, 24)]
NPU = NPUS[1]
GPU = Device(kind="cuda", index=0, compute_units=132, triton_interpreted=False)
CPU = Device(kind="cpu", index=0, compute_units=2, triton_interpreted=True)
DTYPES = [torch.bfloat16, torch.float16, torch.float32]

# Qwen3-0.6B, 1.7B, 4B, 8B: (hidden, intermediate, query heads, key/value heads); head dim 128.
QWEN3 = [(1024, 3072, 16, 8), (2048, 6144, 16, 8), (2560, 9728, 32, 8), (4096, 12288, 32, 8)]
HEAD_DIM, VOCAB = 128, 151936
ROWS = (1, 7, 64, 512, 8192)  # decode to long prefill (tokens)


def _matmul_shapes() -> list[tuple[int, int]]:
    """(K, N) of every linear layer of the sweep: q, k/v, o, gate/up (fused and not), down, LM head."""
    shapes = set()
    for hidden, inter, heads, kv in QWEN3:
        shapes |= {(hidden, heads * HEAD_DIM), (hidden, kv * HEAD_DIM), (heads * HEAD_DIM, hidden),
                   (hidden, inter), (hidden, 2 * inter), (inter, hidden), (hidden, VOCAB)}
    return sorted(shapes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", NPUS, ids=["20-cores", "24-cores"])
def test_matmul_tiles_fit_the_unified_buffer_and_grids_fit_the_runtime(device: Device, dtype: torch.dtype) -> None:
    budget = npu_ub_budget(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    for k, n in _matmul_shapes():
        plan = matmul_plan(k, n, dtype, device)
        assert (plan.block_k * itemsize) % NPU_VECTOR_ALIGN == 0
        for m in ROWS:
            for a_t, b_t in ((False, False), (False, True), (True, False)):
                s = matmul_schedule(plan, m, n, 1, itemsize, device, a_t, b_t)
                assert s.ub_bytes == matmul_ub_bytes(s.block_m, s.block_n, plan, itemsize, device, a_t, b_t)
                assert 0 < s.ub_bytes <= budget, (k, n, m, a_t, b_t)
                assert 1 <= s.programs <= min(device.npu.ai_cores, NPU_MAX_GRID)
                assert not s.split and (s.block_n * itemsize) % NPU_VECTOR_ALIGN == 0
                assert launch_options(device, s.num_warps, s.num_stages) == {}


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_tiles_fit_the_unified_buffer_for_every_family(dtype: torch.dtype) -> None:
    budget = npu_ub_budget(NPU)
    extents = {HEAD_DIM, VOCAB, 1, 4097} | {h for h, *_ in QWEN3} | {i for _, i, *_ in QWEN3}
    for n in sorted(extents):
        plan = row_plan(n, dtype, NPU)
        assert (plan.block * torch.empty((), dtype=dtype).element_size()) % NPU_VECTOR_ALIGN == 0
        for family in ROW_FAMILIES:
            assert 0 < row_ub_bytes(plan, family, dtype, NPU) <= budget, (n, family)
    with pytest.raises(ValueError, match="accepted: sum, var_mean"):
        row_ub_bytes(row_plan(8, dtype, NPU), "median", dtype, NPU)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, HEAD_DIM, 256])
def test_attention_tiles_fit_the_unified_buffer(head_dim: int, dtype: torch.dtype) -> None:
    plan = attention_plan(head_dim, head_dim, dtype, NPU)
    assert plan.split_keys % plan.block_n == 0
    for queries in (1, 8192):
        for heads in (16, 32 * 256):  # batch x query heads
            s = attention_schedule(plan, queries, 8192, heads, NPU)
            assert s.ub_bytes == attention_ub_bytes(s.block_m, plan, NPU) <= npu_ub_budget(NPU)
            assert 1 <= s.programs <= NPU.npu.ai_cores and not s.split


def test_row_grids_are_one_program_per_vector_core_at_most() -> None:
    for rows in (1, 47, 48, 8192 * 32, 10**7):  # q/k norms of a long prefill: tokens x heads rows
        assert grid_programs(rows, NPU) == min(rows, NPU.npu.vector_cores)
        assert grid_programs(rows, NPU, cube=True) == min(rows, NPU.npu.ai_cores)
        assert grid_programs(rows, GPU) == rows  # one program per row elsewhere, as before


def test_npu_plans_obey_the_law() -> None:
    """Numerics see the reduced extent, dtype and device kind: never the batch, the core count or
    the UB capacity (those only size schedules)."""
    assert list(inspect.signature(row_plan).parameters) == ["n", "dtype", "device"]
    other = dataclasses.replace(NPUS[0], npu=NpuFacts(ai_cores=8, vector_cores=16, ub_bytes=1 << 20))
    for dtype in DTYPES:
        for k, n in _matmul_shapes():
            assert matmul_plan(k, n, dtype, NPU) == matmul_plan(k, n, dtype, other)
        assert row_plan(VOCAB, dtype, NPU) == row_plan(VOCAB, dtype, other)
        assert attention_plan(HEAD_DIM, HEAD_DIM, dtype, NPU) == attention_plan(HEAD_DIM, HEAD_DIM, dtype, other)
        plan = matmul_plan(4096, 4096, dtype, NPU)
        tiles = {(s.block_m, s.block_n) for m in ROWS
                 for s in [matmul_schedule(plan, m, 4096, 1, 2, NPU, False, True)]}
        assert len(tiles) == 1, "NPU tiles must not change with the number of rows"


def test_gpu_and_cpu_plans_are_untouched() -> None:
    assert matmul_plan(3072, 1024, torch.bfloat16, GPU).block_k == 64
    assert matmul_plan(3072, 1024, torch.bfloat16, CPU).block_k == 128
    assert row_plan(VOCAB, torch.float32, GPU).block == 1024 and row_plan(VOCAB, torch.float32, CPU).block == 4096
    assert attention_plan(128, 128, torch.bfloat16, GPU).split_keys == 256
    assert attention_plan(128, 128, torch.bfloat16, CPU).split_keys == 512
    # GPUs (and the interpreter that stands for them) sum softmax weights with a dot; NPUs with a tree.
    assert attention_plan(128, 128, torch.bfloat16, GPU).denominator_by_dot
    assert attention_plan(128, 128, torch.bfloat16, CPU).denominator_by_dot
    assert not attention_plan(128, 128, torch.bfloat16, NPU).denominator_by_dot
    assert matmul_schedule(matmul_plan(1024, 1024, torch.bfloat16, GPU), 1, 1024, 1, 2, GPU).programs == 0
    # FMA contraction is always passed on GPUs, never left to Triton's default (it flips in Triton 3.10).
    assert launch_options(GPU, 4, 3) == {"num_warps": 4, "num_stages": 3, "enable_fp_fusion": True}
    assert launch_options(GPU, 4, 3, fp_fusion=False)["enable_fp_fusion"] is False
    with pytest.raises(UnsupportedPlan, match="no Unified Buffer"):
        npu_ub_budget(GPU)


def test_seed_transposed_weight_is_read_by_strides_within_the_unified_buffer() -> None:
    """The seed's "ub overflow": ``linear`` under graph capture hands the matmul ``w.t()``, strides
    (1, K).  Loading its tile element by element along N (every element its own 32-byte block)
    would need far more than the UB; the NPU schedule loads it along K and transposes it."""
    hidden, inter = 1024, 3072  # Qwen3-0.6B down projection: w (hidden, inter), x @ w.t()
    w = torch.empty(hidden, inter, dtype=torch.bfloat16)
    wt = w.t()
    assert wt.stride() == (1, inter)
    plan = matmul_plan(inter, hidden, torch.bfloat16, NPU)
    s = matmul_schedule(plan, 8, hidden, 1, 2, NPU, False, True)
    assert s.b_transposed and s.ub_bytes <= npu_ub_budget(NPU)
    elementwise_tile = plan.block_k * s.block_n * NPU_VECTOR_ALIGN
    assert elementwise_tile > devices.NPU_UB_BYTES


def test_seed_transposed_weight_runs_under_npu_plans() -> None:
    """The same case executed: NPU plans forced on the CPU, a transposed weight, exact to fp32."""
    from ascend_compile.kernels.matmul import bi_matmul

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 600, generator=gen), torch.randn(40, 600, generator=gen)
    with devices.simulate_npu():
        assert devices.of_tensor(x).plan_kind == "npu"
        out = bi_matmul(x, w.t())
    assert torch.allclose(out.double(), x.double() @ w.double().t(), rtol=1e-5, atol=1e-4)


def test_unified_buffer_capacity_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices.ub_capacity({}) == 192 * 1024
    assert devices.ub_capacity({devices.UB_BYTES_ENV: "262144"}) == 262144
    for bad in ("lots", "-1", "1024"):
        with pytest.raises(ValueError, match="integer of at least 16384"):
            devices.ub_capacity({devices.UB_BYTES_ENV: bad})
    small = dataclasses.replace(NPU, npu=NpuFacts(ai_cores=24, vector_cores=48, ub_bytes=64 * 1024))
    plan = matmul_plan(1024, 1024, torch.bfloat16, small)
    s = matmul_schedule(plan, 1, 1024, 1, 2, small, False, True)
    assert s.ub_bytes <= npu_ub_budget(small) < npu_ub_budget(NPU)
    tiny = dataclasses.replace(NPU, npu=NpuFacts(ai_cores=24, vector_cores=48, ub_bytes=16 * 1024))
    with pytest.raises(UnsupportedPlan, match="ASCEND_BI_NPU_UB_BYTES"):
        attention_schedule(attention_plan(HEAD_DIM, HEAD_DIM, torch.bfloat16, tiny), 1, 100, 1, tiny)
    monkeypatch.setenv(devices.UB_BYTES_ENV, "262144")
    with devices.simulate_npu():
        assert devices.of_tensor(torch.ones(1)).npu.ub_bytes == 262144


def test_multibuffer_doubles_loaded_tiles() -> None:
    single = dataclasses.replace(NPU, npu=dataclasses.replace(NPU.npu, multibuffer=False))
    plan = row_plan(4096, torch.float32, NPU)
    double, once = row_ub_bytes(plan, "sum", torch.float32, NPU), row_ub_bytes(plan, "sum", torch.float32, single)
    assert double - once == plan.block * 4  # one more copy of the loaded fp32 tile
    assert plans.matmul_ub_bytes(32, 64, matmul_plan(1024, 1024, torch.float32, NPU), 4, single) < \
        plans.matmul_ub_bytes(32, 64, matmul_plan(1024, 1024, torch.float32, NPU), 4, NPU)
