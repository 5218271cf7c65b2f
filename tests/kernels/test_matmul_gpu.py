"""The matmul template on a CUDA GPU: invariance at the Qwen3-0.6B shapes, both schedules, accuracy."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

from ascend_compile import devices
from ascend_compile.kernels.matmul import bi_matmul, bi_matmul_gated, bi_matmul_group
from ascend_compile.kernels.plans import MatmulSchedule, matmul_plan, matmul_schedule
from tests.helpers import rel_error

pytestmark = pytest.mark.gpu

ROWS = (1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 128, 512)
#: Prefill tiles run by the sm_90 Gluon kernel (``matmul_wgmma.py``), where the device has it.
_GLUON = MatmulSchedule(block_m=128, block_n=128, split=False, num_warps=8, num_stages=4, group_m=8,
                        gluon_wgmma=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k,n", [(1024, 1024), (3072, 1024), (1024, 4096), (1000, 333)])
def test_rows_bitwise_equal_at_every_batch_size(k: int, n: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    x = torch.randn(max(ROWS), k, device="cuda", dtype=dtype)
    full = bi_matmul(x, w.t())
    ref = x.double() @ w.double().t()
    assert ((full.double() - ref).norm() / ref.norm()).item() < (1e-5 if dtype == torch.float32 else 1e-2)
    for m in ROWS:
        companions = torch.randn(m, k, device="cuda", dtype=dtype)
        companions[0] = x[0]
        assert torch.equal(bi_matmul(companions, w.t())[0], full[0]), f"row differs at M={m}"
        assert torch.equal(bi_matmul(x[:m], w.t()), full[:m]), f"rows differ at M={m}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_serial_preloaded_and_in_flight_schedules_agree(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    k, n = 3072, 1024
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    device = devices.of_tensor(w)
    plan = matmul_plan(k, n, dtype, device)
    for m in (1, 8, 64, 300):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        base = matmul_schedule(plan, m, n, 1, x.element_size(), device)
        outs = [bi_matmul(x, w.t(), bias, schedule=dataclasses.replace(
                    base, split=s, block_m=bm, block_n=bn, num_warps=warps, num_stages=2, chunks_in_flight=1))
                for s in (True, False) for bm, bn, warps in ((16, 64, 4), (64, 128, 4), (128, 64, 8))]
        outs += [bi_matmul(x, w.t(), bias, schedule=dataclasses.replace(  # the split, weight chunk preloaded
                     base, split=True, block_m=bm, block_n=bn, num_warps=4, preload_weight=True), b_is_weight=True)
                 for bm, bn in ((16, 32), (64, 64))]
        outs += [bi_matmul(x, w.t(), bias, schedule=dataclasses.replace(  # chunks side by side
                     base, split=False, block_m=bm, block_n=bn, num_warps=warps, num_stages=2, chunks_in_flight=count))
                 for count, bm, bn, warps in ((2, 16, 64, 4), (4, 16, 32, 2), (2, 64, 64, 4))]
        outs += [bi_matmul(x, w.t(), bias, schedule=dataclasses.replace(  # prefill tiles: two warpgroups
                     base, split=False, block_m=128, block_n=128, num_warps=8, num_stages=3, chunks_in_flight=1))]
        outs += [bi_matmul(x, w.t(), bias, schedule=dataclasses.replace(  # tiles loaded by the TMA (sm_90+)
                     base, split=False, block_m=bm, block_n=128, num_warps=warps, num_stages=4, chunks_in_flight=count,
                     tma=True)) for bm, warps, count in ((128, 8, 1), (64, 4, 1), (64, 4, 2))
                 if device.tma_loads and x.element_size() == 2]  # 16-bit tiles only
        assert all(torch.equal(o, outs[0]) for o in outs)


def test_stock_cublas_is_not_invariant() -> None:
    """Negative control: cuBLAS picks kernels by M, so some row differs between batch sizes."""
    torch.manual_seed(2)
    k, n = 3072, 1024
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(512, k, device="cuda", dtype=torch.bfloat16)
    full = torch.mm(x, w.t())
    assert any(not torch.equal(torch.mm(x[:m], w.t()), full[:m]) for m in ROWS)


@pytest.mark.parametrize("executor", ["inductor", "fx"])
def test_compiled_mlp_is_invariant_on_gpu(executor: str) -> None:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 3072), torch.nn.SiLU(), torch.nn.Linear(3072, 1024))
    model = model.to("cuda", torch.bfloat16)
    compiled = torch.compile(model, backend="ascend_bi", options={"executor": executor}, dynamic=True)
    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        full = compiled(x)
        for m in (1, 3, 17, 64):
            assert torch.equal(compiled(x[:m]), full[:m])


@pytest.mark.parametrize("rows", [1, 8, 32, 200])
def test_group_gives_each_products_bits_on_gpu(rows: int) -> None:
    """A group's schedule sees the summed columns (it may split where one product would not): bits
    unchanged, for query/key/value and gate/up shapes, also with tiles loaded by the TMA (sm_90+) and
    run by the Gluon kernel (sm_90)."""
    gen = torch.Generator("cuda").manual_seed(rows)
    x = torch.randn(rows, 1024, device="cuda", generator=gen).bfloat16()
    tma = MatmulSchedule(block_m=128, block_n=128, split=False, num_warps=8, num_stages=4, group_m=8, tma=True)
    for widths in ((2048, 1024, 1024), (3072, 3072)):
        weights = [torch.randn(n, 1024, device="cuda", generator=gen).bfloat16() for n in widths]
        alone = [bi_matmul(x, w.t()) for w in weights]
        assert all(torch.equal(out, one) for out, one in zip(bi_matmul_group(x, [w.t() for w in weights]), alone,
                                                              strict=True))
        if devices.of_tensor(x).tma_loads:  # each weight read through its own descriptor
            assert all(torch.equal(out, one) for out, one in zip(
                bi_matmul_group(x, [w.t() for w in weights], schedule=tma), alone, strict=True))
        if devices.of_tensor(x).gluon_wgmma:  # a tile reads its weight's descriptor and writes its output's
            assert all(torch.equal(out, one) for out, one in zip(
                bi_matmul_group(x, [w.t() for w in weights], schedule=_GLUON), alone, strict=True))


@pytest.mark.parametrize("k,n", [(1024, 4096), (3072, 1024), (1280, 384), (1000, 1000), (768, 128), (8192, 2048)])
def test_gluon_wgmma_gives_the_template_bits(k: int, n: int) -> None:
    """The sm_90 Gluon kernel (``matmul_wgmma.py``) adds what the Triton schedules add: at every row count,
    for K of even, odd (5, 3) and partial chunks and N of partial tiles, its rows equal the default
    schedule's and the split schedule's, bit for bit; persistent programs walk several tiles at 4096 rows."""
    device = devices.of_tensor(torch.empty(1, device="cuda"))
    if not device.gluon_wgmma:
        pytest.skip("no Gluon wgmma kernel on this device (sm_90 with Gluon's Hopper module only)")
    gen = torch.Generator("cuda").manual_seed(k + n)
    w = torch.randn(n, k, device="cuda", generator=gen).bfloat16()
    x = torch.randn(4096, k, device="cuda", generator=gen).bfloat16()
    plan = matmul_plan(k, n, torch.bfloat16, device)
    for m in (1, 63, 128, 300, 1000, 4096):
        base = matmul_schedule(plan, m, n, 1, 2, device)
        default, split = (bi_matmul(x[:m], w.t(), schedule=dataclasses.replace(base, split=s)) for s in (False, True))
        gluon = bi_matmul(x[:m], w.t(), schedule=_GLUON)
        assert torch.equal(gluon, default) and torch.equal(gluon, split), f"M={m}"
    assert rel_error(gluon, x.double() @ w.double().t()) < 1e-2


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("k,n", [(1024, 3072), (3072, 200)])
def test_gluon_gated_tiles_give_the_two_launches_bits(k: int, n: int, activation: str) -> None:
    """The Gluon kernel's gated tiles (64 columns of the gate's and the up weight's products side by side,
    combined in the epilogue) give the bits of the grouped matmul and the elementwise launch, and of the one
    Triton launch, at every row count, for a K of partial chunks and an N of partial tiles; rows alone equal
    rows in the batch."""
    device = devices.of_tensor(torch.empty(1, device="cuda"))
    if not device.gluon_wgmma:
        pytest.skip("no Gluon wgmma kernel on this device (sm_90 with Gluon's Hopper module only)")
    gen = torch.Generator("cuda").manual_seed(k + n)
    x = torch.randn(2048, k, device="cuda", generator=gen).bfloat16()
    gate, up = (torch.randn(n, k, device="cuda", generator=gen).bfloat16() for _ in range(2))
    plain = dataclasses.replace(_GLUON, gluon_wgmma=False)
    for m in (1, 130, 2048):
        gluon = bi_matmul_gated(x[:m], gate.t(), up.t(), activation, one_launch=False, schedule=_GLUON)
        two = bi_matmul_gated(x[:m], gate.t(), up.t(), activation, one_launch=False, schedule=plain)
        one = bi_matmul_gated(x[:m], gate.t(), up.t(), activation, one_launch=True)
        assert torch.equal(gluon, two) and torch.equal(gluon, one), f"M={m}"
    alone = bi_matmul_gated(x[-1:], gate.t(), up.t(), activation, one_launch=False, schedule=_GLUON)
    assert torch.equal(alone, gluon[-1:])
    reference = _EXACT[activation](x.double() @ gate.double().t()) * (x.double() @ up.double().t())
    assert rel_error(gluon, reference) < 2e-2


def test_outputs_past_two_billion_elements_on_gpu() -> None:
    """The logits of a long prefill (16384 rows x 151936 columns, past 2**31 elements) need 64-bit
    offsets: the last rows equal the same rows computed alone, and no access goes out of bounds."""
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(16384, 1024, device="cuda", generator=gen).bfloat16()
    head = torch.randn(151936, 1024, device="cuda", generator=gen).bfloat16()
    full = bi_matmul(x, head.t())
    assert full.numel() > 2**31
    assert torch.equal(full[-3:], bi_matmul(x[-3:], head.t()))


_EXACT = {"silu": F.silu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("rows", [1, 8, 32, 200, 1024])
def test_gated_activation_is_invariant_on_gpu(rows: int, activation: str) -> None:
    """act(x @ gate) * (x @ up) in one launch (decode rows) or two (a grouped matmul and an elementwise
    launch, prefill rows): each row alone equals the row in the batch, the other path gives the same bits,
    and so do the two products and Inductor's code for the activation and the product (what runs unfused
    under ascend_bi), close to float64."""
    gen = torch.Generator("cuda").manual_seed(rows)
    x = torch.randn(rows, 1024, device="cuda", generator=gen).bfloat16()
    gate, up = (torch.randn(3072, 1024, device="cuda", generator=gen).bfloat16() for _ in range(2))
    fused = bi_matmul_gated(x, gate.t(), up.t(), activation)
    assert all(torch.equal(bi_matmul_gated(x[r:r + 1], gate.t(), up.t(), activation), fused[r:r + 1])
               for r in (0, rows - 1))
    assert torch.equal(fused, bi_matmul_gated(x, gate.t(), up.t(), activation, one_launch=rows > 128))
    unfused = torch.compile(lambda g, u: _EXACT[activation](g) * u, dynamic=False,
                            options={"emulate_precision_casts": True})  # as ascend_bi configures Inductor
    assert torch.equal(fused, unfused(bi_matmul(x, gate.t()), bi_matmul(x, up.t())))
    reference = _EXACT[activation](x.double() @ gate.double().t()) * (x.double() @ up.double().t())
    assert rel_error(fused, reference) < 2e-2
