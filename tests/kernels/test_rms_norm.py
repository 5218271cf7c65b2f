"""The fused RMSNorm template under the interpreter: a row's bits do not depend on its batch, they
equal the written-out norm run op by op (same roundings, the row template's mean), and match
float64; stock torch.compile's RMSNorm differs by batch."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops  # noqa: F401
from tests.helpers import all_bitwise_equal, rel_error, rows_in_batches

bi = torch.ops.ascend_bi
EPS = 1e-6


def written_out(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                mean=lambda t: bi.sum(t, [-1], True, None, True)) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' RMSNorm after the residual add, op by op."""
    h = x + residual if residual is not None else x
    h32 = h.float()
    y = (h32 * torch.rsqrt(mean(h32.pow(2)) + EPS)).to(x.dtype)
    return (weight * y if weight is not None else y), h


def _inputs(n: int, dtype: torch.dtype, rows: int = 1):
    gen = torch.Generator().manual_seed(n)
    return (torch.randn(rows, n, generator=gen).to(dtype) for _ in range(3))


@pytest.mark.parametrize("n", [1000, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_bitwise_equal_alone_in_batches_and_written_out(dtype: torch.dtype, n: int) -> None:
    x, residual, weight = _inputs(n, dtype)
    weight = weight[0]
    pair = torch.cat([x, residual], dim=-1)

    def fused(rows: torch.Tensor) -> torch.Tensor:
        out, total = bi.add_rms_norm(rows[:, :n], rows[:, n:], weight, EPS)
        return torch.cat([out, total], dim=-1)

    alone, placed = rows_in_batches(fused, pair, batch_sizes=(2, 5))
    assert all_bitwise_equal(alone, placed)
    out, total = written_out(x, residual, weight)
    assert torch.equal(alone, torch.cat([out, total], dim=-1)[0])
    assert torch.equal(bi.rms_norm(x, None, EPS), written_out(x, None, None)[0])
    reference = written_out(x.double(), residual.double(), weight.double(), mean=lambda t: t.mean(-1, keepdim=True))
    assert rel_error(out, reference[0]) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_stock_compiled_rms_norm_differs() -> None:
    """Negative control: stock torch.compile's RMSNorm (Inductor's split reduction) changes a row's
    bits with the batch at this width (on one of three probes)."""
    stock = torch.compile(lambda x: written_out(x, None, None, mean=lambda t: t.mean(-1, keepdim=True))[0],
                          dynamic=True)
    probes = [next(_inputs(4097 + s, torch.float32)) for s in range(3)]
    assert any(not all_bitwise_equal(*rows_in_batches(stock, probe)) for probe in probes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pair_gives_each_norm_its_own_bits(dtype: torch.dtype) -> None:
    """A layer's query and key norms in one launch (16 and 8 heads of 128 per token, views of
    the projections' outputs, each with its epsilon): each output equals its own ``rms_norm`` bit
    for bit."""
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(3, 1, heads * 128, generator=gen).to(dtype).view(3, 1, heads, 128) for heads in (16, 8))
    q_weight, k_weight = (torch.rand(128, generator=gen).to(dtype) + 0.5 for _ in range(2))
    got = bi.rms_norm_pair([q, k], [q_weight, k_weight], [EPS, 0.5], [None, None])
    assert [g.shape for g in got] == [q.shape, k.shape]
    assert torch.equal(got[0], bi.rms_norm(q, q_weight, EPS)) and torch.equal(got[1], bi.rms_norm(k, k_weight, 0.5))
    assert not torch.equal(got[1], bi.rms_norm(k, k_weight, EPS))  # the second epsilon is the one used
    with pytest.raises(ValueError, match="inputs must share their last dim"):
        bi.rms_norm_pair([q, k[..., :64]], [q_weight, k_weight[:64]], [EPS, EPS], [None, None])


@pytest.mark.parametrize("forms", [(0, 0), (3, 3), (1, 0)], ids=["llama", "gemma", "fp32-weight-first"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sandwich_gives_the_two_norms_bits(dtype: torch.dtype, forms: tuple[int, int]) -> None:
    """A norm joining the residual stream and the norm of the sum, one launch: the bits of ``rms_norm`` then
    ``add_rms_norm``, each row alone as in the batch, close to float64.  Negative control: another first
    weight changes the output, so the first norm is really computed."""
    pre_form, form = forms
    n = 1000
    x, pre_x, weights = _inputs(n, dtype, rows=5)
    pre_weight, weight = weights[0], weights[1]
    got = bi.rms_norm_sandwich(x, pre_x, pre_weight, EPS, None, pre_form, weight, EPS, None, form)
    want = bi.add_rms_norm(x, bi.rms_norm(pre_x, pre_weight, EPS, None, pre_form), weight, EPS, None, form)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    for row in (0, 4):
        alone = bi.rms_norm_sandwich(x[row:row + 1], pre_x[row:row + 1], pre_weight, EPS, None, pre_form, weight, EPS,
                                     None, form)
        assert all(torch.equal(a, g[row:row + 1]) for a, g in zip(alone, got, strict=True))
    def norm64(h: torch.Tensor, w: torch.Tensor, plus_one: bool) -> torch.Tensor:
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * (w.double() + float(plus_one))

    out64 = norm64(x.double() + norm64(pre_x.double(), pre_weight, bool(pre_form & 2)), weight, bool(form & 2))
    assert rel_error(got[0], out64) < (1e-5 if dtype == torch.float32 else 3e-2)
    other = bi.rms_norm_sandwich(x, pre_x, weight, EPS, None, pre_form, weight, EPS, None, form)
    assert not torch.equal(other[0], got[0])


def test_sandwich_refuses_forms_it_cannot_round_in() -> None:
    from ascend_compile.kernels.rms_norm import NormForm, bi_rms_norm_sandwich

    x, pre_x, weight = _inputs(64, torch.bfloat16, rows=2)
    with pytest.raises(ValueError, match="the first norm takes"):
        bi_rms_norm_sandwich(x, pre_x, weight[0], EPS, NormForm.FP32_SUM, weight[0], EPS)
    with pytest.raises(ValueError, match="must match"):
        bi_rms_norm_sandwich(x, pre_x[:1], weight[0], EPS, NormForm.LLAMA, weight[0], EPS)
