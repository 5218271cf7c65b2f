"""fuse_rms_norm: RMSNorm with and without the residual add, weight and casts; negative and
idempotence cases."""

from __future__ import annotations

import torch

from ascend_compile.passes.fuse_rms_norm import fuse_rms_norm
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.settings import Settings
from tests.passes.graphs import after_passes, aten_graph, targets

SETTINGS = Settings()
aten = torch.ops.aten
bi = torch.ops.ascend_bi


def _rms(h: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    h32 = h.to(torch.float32)
    y = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(h.dtype)
    return weight * y if weight is not None else y


def _layer(x, residual, weight):
    """A decoder layer's two norms: the residual add feeds the second, whose sum is used again."""
    h = residual + x
    return _rms(x, weight), _rms(h, weight), h * 2


def _fused(fn, *inputs) -> torch.fx.GraphModule:
    return after_passes(aten_graph(fn, *inputs), rewrite_reductions, fuse_rms_norm)


def test_norms_with_residual_weight_and_casts_fuse_and_compute_the_same() -> None:
    inputs = (torch.randn(3, 64).bfloat16(), torch.randn(3, 64).bfloat16(), torch.randn(64).bfloat16())
    gm = _fused(_layer, *inputs)
    assert gm.count == 2
    names = targets(gm)
    assert names.count(bi.rms_norm.default) == 1 and names.count(bi.add_rms_norm.default) == 1
    assert not {bi.sum.default, aten.rsqrt.default, aten.pow.Tensor_Scalar} & set(names)
    for got, want in zip(gm(*inputs), _layer(*inputs), strict=True):
        assert torch.equal(got, want)


def test_float32_norm_without_weight() -> None:
    x = torch.randn(2, 5, 32)
    gm = _fused(lambda t: _rms(t, None), x)
    assert gm.count == 1 and bi.rms_norm.default in targets(gm)
    torch.testing.assert_close(gm(x), _rms(x, None))


def test_other_users_of_the_intermediates_keep_it_unfused() -> None:
    def squares_used_again(x):
        h32 = x.to(torch.float32)
        return h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6), h32 * 3

    def float_result_used(x):
        h32 = x.to(torch.float32)
        y32 = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y32.to(x.dtype), y32

    def not_last_dim(x):
        return x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6)

    for fn in (squares_used_again, float_result_used, not_last_dim):
        gm = _fused(fn, torch.randn(3, 8).bfloat16())
        assert gm.count == 0 and bi.sum.default in targets(gm), fn.__name__


def test_idempotent() -> None:
    gm = _fused(_layer, torch.randn(3, 64).bfloat16(), torch.randn(3, 64).bfloat16(), torch.randn(64).bfloat16())
    assert fuse_rms_norm(gm, SETTINGS) == 0
