"""fuse_sibling_matmuls: query/key/value and gate/up projections share a launch with the same
bits; different activations or K, unaligned widths or a bias keep theirs."""

from __future__ import annotations

import torch

from ascend_compile.passes.fuse_sibling_matmuls import fuse_sibling_matmuls
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.settings import Settings
from tests.passes.graphs import after_passes, aten_graph, targets

SETTINGS = Settings()
bi = torch.ops.ascend_bi
F = torch.nn.functional


def _mlp(x, w_gate, w_up, w_down):
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def _fused(fn, *inputs) -> torch.fx.GraphModule:
    return after_passes(aten_graph(fn, *inputs), rewrite_matmul, fuse_sibling_matmuls)


def test_gate_and_up_share_a_launch_with_the_same_bits() -> None:
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(5, 64, generator=gen), torch.randn(128, 64, generator=gen),
              torch.randn(128, 64, generator=gen), torch.randn(64, 128, generator=gen))
    gm = _fused(_mlp, *inputs)
    assert gm.count == 1
    assert targets(gm).count(bi.mm_group.default) == 1 and targets(gm).count(bi.mm.default) == 1  # down stays
    unpaired = aten_graph(_mlp, *inputs)
    rewrite_matmul(unpaired, SETTINGS)
    unpaired.recompile()
    assert torch.equal(gm(*inputs), unpaired(*inputs))


def test_query_key_value_share_one_launch_with_the_same_bits() -> None:
    def qkv(x, wq, wk, wv):
        return F.linear(x, wq) * 2, F.linear(x, wk), F.linear(x, wv)

    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(3, 64, generator=gen), torch.randn(256, 64, generator=gen),
              torch.randn(128, 64, generator=gen), torch.randn(128, 64, generator=gen))
    gm = _fused(qkv, *inputs)
    assert gm.count == 1 and targets(gm).count(bi.mm_group.default) == 1 and bi.mm.default not in targets(gm)
    separate = aten_graph(qkv, *inputs)
    rewrite_matmul(separate, SETTINGS)
    separate.recompile()
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))


def test_other_activations_k_widths_and_biases_stay_apart() -> None:
    def fn(x, y, w1, w2, w3, w4, bias):
        return F.linear(x, w1), F.linear(y, w2), F.linear(x[:, :8], w3), F.linear(x, w4), F.linear(x, w1, bias)

    # w1 (96 columns, unaligned) may only close a group: w4 after it stays alone too.
    inputs = (torch.randn(3, 16), torch.randn(3, 16), torch.randn(96, 16), torch.randn(8, 16), torch.randn(4, 8),
              torch.randn(128, 16), torch.randn(96))
    gm = _fused(fn, *inputs)
    assert gm.count == 0 and bi.mm_group.default not in targets(gm)


def test_idempotent() -> None:
    inputs = (torch.randn(5, 64), torch.randn(128, 64), torch.randn(128, 64), torch.randn(64, 128))
    gm = _fused(_mlp, *inputs)
    assert fuse_sibling_matmuls(gm, SETTINGS) == 0
