"""fuse_sibling_norms: a layer's query and key norms share a launch with the same bits, each with
its epsilon; norms of other projections or lengths keep theirs."""

from __future__ import annotations

import torch

from ascend_compile import devices
from ascend_compile.passes.fuse_rms_norm import fuse_rms_norm
from ascend_compile.passes.fuse_sibling_matmuls import fuse_sibling_matmuls
from ascend_compile.passes.fuse_sibling_norms import fuse_sibling_norms
from ascend_compile.passes.op_plans import op_plans
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from tests.passes.graphs import after_passes, aten_graph, targets

bi = torch.ops.ascend_bi
F = torch.nn.functional
BEFORE = (rewrite_matmul, rewrite_reductions, fuse_rms_norm, fuse_sibling_matmuls)


def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    h32 = h.to(torch.float32)
    return weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)


def _heads(x: torch.Tensor, w: torch.Tensor, head_dim: int) -> torch.Tensor:
    return F.linear(x, w).view(x.shape[0], 1, -1, head_dim)


def _qk(x, wq, wk, q_norm, k_norm):
    """Qwen3's attention prologue: per-head norms of the query and key projections (the key's
    after a transpose, as other models write it; its epsilon another)."""
    return (_rms(_heads(x, wq, 32), q_norm).transpose(1, 2) * 2,
            _rms(_heads(x, wk, 32).transpose(1, 2), k_norm, eps=1e-5))


def _inputs(k_heads_dim: int = 32):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(3, 64, generator=gen).bfloat16(), torch.randn(128, 64, generator=gen).bfloat16(),
            torch.randn(128, 64, generator=gen).bfloat16(), torch.rand(32, generator=gen).bfloat16() + 0.5,
            torch.rand(k_heads_dim, generator=gen).bfloat16() + 0.5)


def test_query_and_key_norms_share_a_launch_with_the_same_bits() -> None:
    inputs = _inputs()
    gm = after_passes(aten_graph(_qk, *inputs), *BEFORE, fuse_sibling_norms)
    assert gm.count == 1
    assert targets(gm).count(bi.rms_norm_pair.default) == 1 and bi.rms_norm.default not in targets(gm)
    (plan,) = [p for p in op_plans(gm, devices.detect(inputs)) if p["op"] == "ascend_bi.rms_norm_pair.default"]
    assert plan["family"] == "row" and plan["extents"] == {"n": "32"}  # one row plan serves both
    separate = after_passes(aten_graph(_qk, *inputs), *BEFORE)
    assert targets(separate).count(bi.rms_norm.default) == 2
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))


def test_other_projections_and_lengths_stay_apart() -> None:
    def fn(x, wq, wk, q_norm, k_norm):
        return (_rms(_heads(x, wq, 32), q_norm), _rms(_heads(x, wk, 16), k_norm),  # lengths 32 and 16
                _rms(_heads(x * 3, wq, 32), q_norm), _rms(_heads(x * 4, wk, 32), q_norm))  # two activations

    inputs = _inputs(k_heads_dim=16)
    gm = after_passes(aten_graph(fn, *inputs), *BEFORE, fuse_sibling_norms)
    assert gm.count == 0 and bi.rms_norm_pair.default not in targets(gm)
