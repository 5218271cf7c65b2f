"""fuse_sandwich_norms: a norm whose output joins the residual stream and the norm of the sum become one launch
with the two launches' bits; a normed output used elsewhere, or a first norm without a weight, stays."""

from __future__ import annotations

import torch

from ascend_compile.passes.fuse_rms_norm import fuse_rms_norm
from ascend_compile.passes.fuse_sandwich_norms import fuse_sandwich_norms
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.settings import Settings
from tests.passes.graphs import after_passes, aten_graph, targets

SETTINGS = Settings()
bi = torch.ops.ascend_bi


def _gemma_norm(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """transformers' Gemma RMSNorm: the weight ``1 + w`` multiplies the fp32 value, one rounding at the end."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (y * (1.0 + weight.float()) if weight is not None else y).type_as(x)


def _sandwich(stream, attn_out, post_weight, pre_weight):
    """Gemma 3's ``residual + post_attention_layernorm(attn)`` and ``pre_feedforward_layernorm`` of the sum."""
    h = stream + _gemma_norm(attn_out, post_weight)
    return _gemma_norm(h, pre_weight), h


def _inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(4)
    return tuple(torch.randn(shape, generator=gen).bfloat16() for shape in ((3, 64), (3, 64), (64,), (64,)))


def test_gemmas_post_norm_add_and_pre_norm_become_one_launch_with_the_same_bits() -> None:
    inputs = _inputs()
    two = after_passes(aten_graph(_sandwich, *inputs), rewrite_reductions, fuse_rms_norm)
    assert targets(two).count(bi.rms_norm.default) == 1 and targets(two).count(bi.add_rms_norm.default) == 1
    one = after_passes(aten_graph(_sandwich, *inputs), rewrite_reductions, fuse_rms_norm, fuse_sandwich_norms)
    assert one.count == 1 and targets(one).count(bi.rms_norm_sandwich.default) == 1
    assert not {bi.rms_norm.default, bi.add_rms_norm.default} & set(targets(one))
    assert all(torch.equal(a, b) for a, b in zip(one(*inputs), two(*inputs), strict=True))
    assert fuse_sandwich_norms(one, SETTINGS) == 0  # idempotent


def test_a_normed_output_used_elsewhere_or_without_weight_stays() -> None:
    def also_returned(stream, attn_out, post_weight, pre_weight):
        normed = _gemma_norm(attn_out, post_weight)
        h = stream + normed
        return _gemma_norm(h, pre_weight), h, normed

    def no_weight(stream, attn_out, post_weight, pre_weight):
        h = stream + _gemma_norm(attn_out, None)
        return _gemma_norm(h, pre_weight), h

    for fn in (also_returned, no_weight):
        gm = after_passes(aten_graph(fn, *_inputs()), rewrite_reductions, fuse_rms_norm, fuse_sandwich_norms)
        assert gm.count == 0 and bi.add_rms_norm.default in targets(gm), fn.__name__
