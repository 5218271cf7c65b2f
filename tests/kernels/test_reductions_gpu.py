"""Row templates on a CUDA GPU: invariance (bf16 and fp32) and the stock negative control."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import all_bitwise_equal, rel_error
from tests.kernels.test_reductions import OPS

pytestmark = pytest.mark.gpu

ROWS = (1, 7, 64, 300)


@pytest.mark.parametrize("n", [1024, 151936])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_rows_bitwise_equal_at_every_row_count(name: str, dtype: torch.dtype, n: int) -> None:
    ours, reference = OPS[name]
    x = torch.randn(max(ROWS), n, device="cuda", generator=torch.Generator("cuda").manual_seed(n)).to(dtype)
    full = ours(x)
    for m in ROWS:
        assert all_bitwise_equal(full[:1], [ours(x[:m])[:1]]), f"{name} differs at {m} rows"
    assert rel_error(full, reference(x.double())) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_stock_compiled_sum_differs_on_gpu() -> None:
    """Negative control: Inductor splits a long row's sum when there are few rows."""
    stock = torch.compile(lambda x: x.sum(-1), dynamic=True)
    x = torch.randn(64, 151936, device="cuda")
    full = stock(x)
    assert any(not torch.equal(stock(x[:m]), full[:m]) for m in (1, 2, 3))


def test_stock_cumsum_differs_on_gpu() -> None:
    """Negative control for cumsum, which CPU scans sequentially: CUDA's scan of one long row is
    organised differently from a batch of rows."""
    x = torch.randn(64, 151936, device="cuda")
    full = torch.cumsum(x, -1)
    assert any(not torch.equal(torch.cumsum(x[:m], -1), full[:m]) for m in (1, 2, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_rms_norm_equals_written_out_norm_on_gpu(dtype: torch.dtype) -> None:
    """One launch, the written-out norm's bits (eager elementwise ops around the row template's
    mean, and Inductor's fused kernels around it), at every row count."""
    from tests.kernels.test_rms_norm import written_out

    gen = torch.Generator("cuda").manual_seed(0)
    x, residual = (torch.randn(max(ROWS), 1024, device="cuda", generator=gen).to(dtype) for _ in range(2))
    weight = torch.randn(1024, device="cuda", generator=gen).to(dtype)
    out, total = torch.ops.ascend_bi.add_rms_norm(x, residual, weight, 1e-6)
    compiled = torch.compile(written_out, dynamic=True, options={"emulate_precision_casts": True})
    for unfused in (written_out, compiled):
        want_out, want_total = unfused(x, residual, weight)
        assert torch.equal(total, want_total) and torch.equal(out, want_out), unfused
    for m in ROWS:
        assert torch.equal(torch.ops.ascend_bi.add_rms_norm(x[:m], residual[:m], weight, 1e-6)[0], out[:m])


def test_query_and_key_norms_in_one_launch_keep_their_bits_on_gpu() -> None:
    """``rms_norm_pair`` at Qwen3-0.6B's query/key shapes (16 and 8 heads of 128, views of the
    projections' outputs): each output equals its own ``rms_norm``, at every row count."""
    gen = torch.Generator("cuda").manual_seed(1)
    q, k = (torch.randn(max(ROWS), heads * 128, device="cuda", generator=gen).to(torch.bfloat16)
            .view(max(ROWS), 1, heads, 128) for heads in (16, 8))
    weights = [torch.rand(128, device="cuda", generator=gen).to(torch.bfloat16) + 0.5 for _ in range(2)]
    for m in ROWS:
        got = torch.ops.ascend_bi.rms_norm_pair([q[:m], k[:m]], weights, [1e-6, 1e-6], [None, None])
        assert torch.equal(got[0], torch.ops.ascend_bi.rms_norm(q[:m], weights[0], 1e-6))
        assert torch.equal(got[1], torch.ops.ascend_bi.rms_norm(k[:m], weights[1], 1e-6))


@pytest.mark.parametrize("form", [0, 3], ids=["llama", "gemma"])
def test_sandwich_norms_in_one_launch_keep_their_bits_on_gpu(form: int) -> None:
    """``rms_norm_sandwich`` at hidden 1024: the bits of ``rms_norm`` then ``add_rms_norm``, at every row count."""
    bi = torch.ops.ascend_bi
    gen = torch.Generator("cuda").manual_seed(2)
    x, pre_x = (torch.randn(max(ROWS), 1024, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    pre_weight, weight = (torch.rand(1024, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    for m in ROWS:
        got = bi.rms_norm_sandwich(x[:m], pre_x[:m], pre_weight, 1e-6, None, form, weight, 1e-6, None, form)
        want = bi.add_rms_norm(x[:m], bi.rms_norm(pre_x[:m], pre_weight, 1e-6, None, form), weight, 1e-6, None, form)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), m
