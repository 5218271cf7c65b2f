"""The matmul template (under Triton's interpreter on CPU): invariance, schedules, accuracy."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

from ascend_compile import devices
from ascend_compile.kernels import matmul as matmul_module
from ascend_compile.kernels.matmul import bi_matmul, bi_matmul_gated, bi_matmul_group
from ascend_compile.kernels.plans import MatmulSchedule, UnsupportedPlan, matmul_plan
from tests.helpers import all_bitwise_equal, rel_error, rows_in_batches

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,n", [(64, 96), (1000, 130)])
def test_row_is_bitwise_equal_alone_and_in_batches(k: int, n: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    w = torch.randn(n, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    probe = torch.randn(1, k).to(dtype)
    alone, placed = rows_in_batches(lambda x: bi_matmul(x, w.t(), bias), probe)
    assert all_bitwise_equal(alone, placed)
    ref = probe.double() @ w.double().t() + bias.double()
    assert rel_error(alone, ref[0]) < TOLERANCE[dtype]


def test_stock_mm_differs_between_one_row_and_many() -> None:
    """Negative control: the same check finds a difference for torch.mm (CPU, fp32)."""
    torch.manual_seed(0)
    w = torch.randn(96, 1000)
    alone, placed = rows_in_batches(lambda x: torch.mm(x, w.t()), torch.randn(1, 1000))
    assert not all_bitwise_equal(alone, placed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_and_serial_schedules_give_identical_bits(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x = torch.randn(40, 1000).to(dtype)
    w = torch.randn(70, 1000).to(dtype)
    bias = torch.randn(70).to(dtype)
    plan = matmul_plan(1000, 70, dtype, devices.of_tensor(x))
    assert plan.num_chunks > 1, "the test needs a plan with several chunks"
    base = MatmulSchedule(block_m=16, block_n=64, split=True, num_warps=4, num_stages=1, group_m=1)
    schedules = [base, dataclasses.replace(base, split=False),
                 dataclasses.replace(base, block_m=64, block_n=32, group_m=4),
                 dataclasses.replace(base, block_m=64, block_n=32, split=False)]
    outs = [bi_matmul(x, w.t(), bias, schedule=s) for s in schedules]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def _schedules(num_chunks: int, chunk_blocks: int) -> list[MatmulSchedule]:
    """Every GPU schedule of a plan: serial in tiles of two shapes, 1, 2 or 4 chunks in flight where they
    divide the chunks, split with the weight streamed or preloaded (chunks of 1, 2 or 4 blocks)."""
    serial = MatmulSchedule(block_m=16, block_n=64, split=False, num_warps=4, num_stages=1, group_m=1)
    schedules = [serial, dataclasses.replace(serial, block_m=64, block_n=32, group_m=4),
                 dataclasses.replace(serial, block_m=128, block_n=128, num_warps=8, group_m=8),  # prefill tiles
                 dataclasses.replace(serial, block_m=64, block_n=128, group_m=8, tma=True),  # sm_90 prefill tiles
                 dataclasses.replace(serial, split=True), dataclasses.replace(serial, block_m=32, split=True)]
    schedules += [dataclasses.replace(serial, chunks_in_flight=n) for n in (2, 4) if num_chunks % n == 0]
    if chunk_blocks in (1, 2, 4):
        schedules.append(dataclasses.replace(serial, split=True, preload_weight=True))
    return schedules


@pytest.mark.parametrize("seed", range(6))
def test_every_schedule_gives_the_same_bits_at_random_shapes(seed: int) -> None:
    """A drawn (M, K, N, dtype): every schedule of the plan adds the same products in the same order,
    so the bits are one (each schedule's own test fixes a shape; this one draws them)."""
    gen = torch.Generator().manual_seed(100 + seed)
    m, k, n = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 48), (16, 1300), (8, 160)))
    dtype = (torch.float32, torch.bfloat16, torch.float16)[seed % 3]
    x, w = torch.randn(m, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype)
    bias = torch.randn(n, generator=gen).to(dtype) if seed % 2 else None
    plan = matmul_plan(k, n, dtype, devices.of_tensor(x))
    outs = [bi_matmul(x, w.t(), bias, schedule=s, b_is_weight=s.preload_weight)
            for s in _schedules(plan.num_chunks, plan.chunk_blocks)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:]), (m, k, n, dtype, plan)
    ref = x.double() @ w.double().t() + (bias.double() if bias is not None else 0)
    assert rel_error(outs[0], ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_in_flight_give_the_serial_bits(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks run side by side (2 or 4 in flight) add up in the plan's order: the bits of one and
    of the split (its weight chunk streamed or preloaded), for plain and gated products.  Negative
    control: chunks of another size (the same products summed in another order) change fp32 bits,
    so the comparison can fail."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(12, 1024, generator=gen).to(dtype)
    w = torch.randn(96, 1024, generator=gen).to(dtype)
    up = torch.randn(96, 1024, generator=gen).to(dtype)
    assert matmul_plan(1024, 96, dtype, devices.of_tensor(x)).num_chunks == 4
    base = MatmulSchedule(block_m=16, block_n=64, split=False, num_warps=4, num_stages=1, group_m=1)
    outs = [bi_matmul(x, w.t(), schedule=dataclasses.replace(base, chunks_in_flight=count)) for count in (1, 2, 4)]
    outs.append(bi_matmul(x, w.t(), schedule=dataclasses.replace(base, split=True)))
    outs.append(bi_matmul(x, w.t(), schedule=dataclasses.replace(base, split=True, preload_weight=True),
                          b_is_weight=True))
    assert all(torch.equal(o, outs[0]) for o in outs[1:])

    default_schedule = matmul_module.matmul_schedule
    gated = []
    for count in (1, 2, 4):
        monkeypatch.setattr(matmul_module, "matmul_schedule",
                            lambda *args, count=count, **kw: dataclasses.replace(default_schedule(*args, **kw),
                                                                                 chunks_in_flight=count))
        gated.append(bi_matmul_gated(x, w.t(), up.t()))
    assert all(torch.equal(g, gated[0]) for g in gated[1:])

    xf, wf = x.float(), w.float()  # fp32 output: bf16's final rounding can hide a changed order
    four_in_flight = bi_matmul(xf, wf.t(), schedule=dataclasses.replace(base, chunks_in_flight=4))
    default_plan = matmul_module.matmul_plan
    monkeypatch.setattr(matmul_module, "matmul_plan",
                        lambda *args: dataclasses.replace(default_plan(*args), chunk_blocks=1, num_chunks=8))
    assert not torch.equal(bi_matmul(xf, wf.t(), schedule=base), four_in_flight)
    with pytest.raises(ValueError, match="chunks_in_flight must be 1, 2 or 4 and divide the plan's 8 chunks, got 3"):
        bi_matmul(x, w.t(), schedule=dataclasses.replace(base, chunks_in_flight=3))
    monkeypatch.setattr(matmul_module, "matmul_plan",
                        lambda *args: dataclasses.replace(default_plan(*args), chunk_blocks=3, num_chunks=3))
    with pytest.raises(ValueError, match="preload_weight takes chunks of 1, 2 or 4 blocks, the plan's have 3"):
        bi_matmul(x, w.t(), schedule=dataclasses.replace(base, split=True, preload_weight=True))


def test_bmm_rows_are_invariant_and_accurate() -> None:
    torch.manual_seed(2)
    b = torch.randn(3, 300, 50)
    probe = torch.randn(1, 3, 300)

    def batched(x: torch.Tensor) -> torch.Tensor:  # rows of each of the 3 matrices move together
        return bi_matmul(x.transpose(0, 1).contiguous(), b).transpose(0, 1)

    alone, placed = rows_in_batches(batched, probe)
    assert all_bitwise_equal(alone, placed)
    assert rel_error(alone, (probe.double().transpose(0, 1) @ b.double())[:, 0]) < 1e-5


def test_reads_transposed_and_strided_operands_without_copies() -> None:
    torch.manual_seed(3)
    a = torch.randn(200, 30).t()  # (30, 200), column-major
    w = torch.randn(200, 40)[:, ::2]  # (200, 20), row stride 40
    out = bi_matmul(a, w)
    assert rel_error(out, a.double() @ w.double()) < 1e-5


def test_bias_broadcasts_from_a_row_and_a_full_matrix() -> None:
    torch.manual_seed(4)
    a, b = torch.randn(5, 64), torch.randn(64, 7)
    for bias in (torch.randn(7), torch.randn(1, 7), torch.randn(5, 7)):
        assert rel_error(bi_matmul(a, b, bias), a.double() @ b.double() + bias.double()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_gives_each_products_bits(dtype: torch.dtype) -> None:
    """Weights of different widths side by side in one launch (found by their distance, either
    sign; the last one ragged): each output is bitwise what its own launch gives, and so is
    invariant like it."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 300, generator=gen).to(dtype)
    q, k, v = (torch.randn(n, 300, generator=gen).to(dtype) for n in (256, 128, 100))
    for weights in ((q, k, v), (k, q), (v,)):
        outs = bi_matmul_group(x, [w.t() for w in weights])
        assert all(torch.equal(out, bi_matmul(x, w.t())) for out, w in zip(outs, weights, strict=True))
    with pytest.raises(ValueError, match="multiple of 128 columns"):
        bi_matmul_group(x, [v.t(), q.t()])
    with pytest.raises(ValueError, match="1 to 3 weights"):
        bi_matmul_group(x, [k.t()] * 4)


def test_tma_loads_give_the_pointer_loads_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles loaded through tensor descriptors (sm_90's tensor memory accelerator; the interpreter reads
    them too) hold what pointer loads hold: one product, and a group whose weights each have a descriptor,
    give the pointer loads' bits.  An operand whose rows are not 16-byte aligned falls back to pointer loads."""
    gen = torch.Generator().manual_seed(11)
    described: list[bool] = []
    real_described = matmul_module._described
    monkeypatch.setattr(matmul_module, "_described", lambda *args: described.append(
        (result := real_described(*args)) is not None) or result)
    pointer = MatmulSchedule(block_m=64, block_n=128, split=False, num_warps=4, num_stages=1, group_m=8)
    tma = dataclasses.replace(pointer, tma=True)
    for k in (600, 601):  # 1200-byte rows, then 1202-byte ones
        x = torch.randn(70, k, generator=gen).bfloat16()
        q, kv, v = (torch.randn(n, k, generator=gen).bfloat16() for n in (256, 128, 100))
        outs = [[bi_matmul(x, q.t(), schedule=s), *bi_matmul_group(x, [q.t(), kv.t(), v.t()], schedule=s)]
                for s in (pointer, tma)]
        assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True)), k
        assert torch.equal(outs[0][0], bi_matmul(x, q.t()))  # the default (decode) schedule's bits too
    assert described == [True, True, False, False]


def test_gluon_wgmma_schedule_runs_the_template_where_the_kernel_is_absent() -> None:
    """A ``gluon_wgmma`` schedule names a kernel only sm_90 runs (``matmul_wgmma.py``); elsewhere, here in
    the interpreter, its tiles run in the Triton template: a product, a group and a gated pair give the
    default's bits.  The TMA addresses 2-D 16-bit operands with 16-byte aligned rows only; others keep the
    template."""
    from ascend_compile.kernels import matmul_wgmma

    gen = torch.Generator().manual_seed(12)
    wgmma = MatmulSchedule(block_m=128, block_n=128, split=False, num_warps=8, num_stages=4, group_m=8,
                           gluon_wgmma=True)
    x = torch.randn(130, 600, generator=gen).bfloat16()
    q, v = (torch.randn(n, 600, generator=gen).bfloat16() for n in (256, 100))
    assert torch.equal(bi_matmul(x, q.t(), schedule=wgmma), bi_matmul(x, q.t()))
    assert all(torch.equal(a, b) for a, b in zip(bi_matmul_group(x, [q.t(), v.t()], schedule=wgmma),
                                                 [bi_matmul(x, q.t()), bi_matmul(x, v.t())], strict=True))
    assert torch.equal(bi_matmul_gated(x, q.t(), q.flip(0).t(), one_launch=False, schedule=wgmma),
                       bi_matmul_gated(x, q.t(), q.flip(0).t(), one_launch=False))
    outs = [torch.empty(130, 256, dtype=torch.bfloat16)]
    assert matmul_wgmma.addressable(x, [q.t()], outs)
    assert not matmul_wgmma.addressable(x[:, :599].contiguous(), [q[:, :599].contiguous().t()], outs)  # 1198 bytes
    assert not matmul_wgmma.addressable(x.float(), [q.float().t()], [o.float() for o in outs])


def _gelu_tanh_decomposed(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation op for op as torch decomposes it, in fp32 (Inductor's unfused code)."""
    x32 = x.float()
    return (x32 * 0.5 * (torch.tanh((x32 + x32 * x32 * x32 * 0.044715) * 0.7978845608028654) + 1)).to(x.dtype)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation_is_invariant_and_rounds_as_unfused(activation: str) -> None:
    """``act(x @ gate) * (x @ up)`` in one launch: rows alone equal rows in a batch, in bf16 the
    bits of the three ops on the two products (the same roundings; GELU as torch decomposes it,
    which is what runs unfused), and close to float64.  Negative control: the other activation
    gives other bits."""
    act = {"silu": F.silu, "gelu_tanh": _gelu_tanh_decomposed}[activation]
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(9, 300, generator=gen).bfloat16()
    gate, up = (torch.randn(200, 300, generator=gen).bfloat16() for _ in range(2))
    fused = bi_matmul_gated(x, gate.t(), up.t(), activation)
    assert torch.equal(fused, act(bi_matmul(x, gate.t())) * bi_matmul(x, up.t()))
    for rows in (slice(0, 1), slice(3, 5), slice(8, 9)):
        assert torch.equal(bi_matmul_gated(x[rows], gate.t(), up.t(), activation), fused[rows])
    exact = {"silu": F.silu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}[activation]
    reference = exact(x.double() @ gate.double().t()) * (x.double() @ up.double().t())
    assert rel_error(fused, reference) < 2e-2
    other = "silu" if activation == "gelu_tanh" else "gelu_tanh"
    assert not torch.equal(bi_matmul_gated(x, gate.t(), up.t(), other), fused)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gated_activation_in_two_launches_gives_the_one_launch_bits(dtype: torch.dtype) -> None:
    """Prefill rows run the gated MLP as a grouped matmul and an elementwise launch: the same roundings, so
    the one launch's bits, row for row alone and in the batch, for both activations.  Negative control: the
    activation computed on the unrounded fp32 products gives other bits, so the rounding is what the test
    pins."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(12, 260, generator=gen).to(dtype)
    gate_up = torch.randn(2 * 128, 260, generator=gen).to(dtype)  # gate and up side by side, as vLLM stores them
    gate, up = gate_up[:128].t(), gate_up[128:].t()
    for activation in ("silu", "gelu_tanh"):
        one = bi_matmul_gated(x, gate, up, activation, one_launch=True)
        two = bi_matmul_gated(x, gate, up, activation, one_launch=False)
        assert torch.equal(two, one), activation
        assert torch.equal(bi_matmul_gated(x[5:7], gate, up, activation, one_launch=False), one[5:7])
    if dtype != torch.float32:  # fp32 products round to themselves: there the roundings have nothing to pin
        g32, u32 = ((x.double() @ w.double()).float() for w in (gate, up))
        assert not torch.equal((F.silu(g32) * u32).to(dtype), bi_matmul_gated(x, gate, up, one_launch=False))


def test_gated_inputs_are_checked() -> None:
    x, gate, up = torch.randn(2, 30), torch.randn(30, 20), torch.randn(30, 20)
    with pytest.raises(ValueError, match="two weights \\(K, N\\) of one layout"):
        bi_matmul_gated(x, gate, up[:, :10])
    with pytest.raises(ValueError, match="activation 'gelu'; accepted: silu, gelu_tanh"):
        bi_matmul_gated(x, gate, up, "gelu")


def test_empty_extents() -> None:
    assert bi_matmul(torch.randn(0, 8), torch.randn(8, 3)).shape == (0, 3)
    assert torch.equal(bi_matmul(torch.randn(2, 0), torch.randn(0, 3), torch.ones(3)), torch.ones(2, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_unsupported_dtype_is_a_clear_error(dtype: torch.dtype) -> None:
    with pytest.raises(UnsupportedPlan, match="accepted dtypes: float32, bfloat16, float16"):
        bi_matmul(torch.ones(2, 3, dtype=dtype), torch.ones(3, 4, dtype=dtype))


def test_mismatched_operands_are_rejected() -> None:
    with pytest.raises(ValueError, match="share one dtype"):
        bi_matmul(torch.ones(2, 3), torch.ones(3, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="shape mismatch"):
        bi_matmul(torch.ones(2, 3), torch.ones(4, 4))
