"""split_merged_projections: vLLM's and Phi-3's merged projections cut into columns become one product per cut,
with the bits of the merged template product; products read whole, or in overlapping cuts, stay."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ascend_compile.passes.canonicalize_splits import canonicalize_splits
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.split_merged_projections import split_merged_projections
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten
bi = torch.ops.ascend_bi
Q, KV, D = 64, 32, 96


def _vllm_layer(x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_gate_up: torch.Tensor):
    """vLLM's ``qkv_proj(x).split(...)`` (with a bias: ``addmm``) and ``SiluAndMul`` on ``gate_up_proj(x)``."""
    q, k, v = F.linear(x, w_qkv, b_qkv).split([Q, KV, KV], dim=-1)
    gate_up = F.linear(x, w_gate_up)
    return q, k, v, F.silu(gate_up[..., :D]) * gate_up[..., D:]


def _phi3_layer(x: torch.Tensor, w_qkv: torch.Tensor, w_gate_up: torch.Tensor):
    """Phi-3's slices of ``qkv_proj`` and ``chunk`` of ``gate_up_proj``, on (batch, seq, hidden)."""
    qkv = F.linear(x, w_qkv)
    gate, up = F.linear(x, w_gate_up).chunk(2, dim=-1)
    return qkv[..., :Q], qkv[..., Q:Q + KV], qkv[..., Q + KV:], up * F.silu(gate)


def _inputs(*shape: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(*shape, 48, generator=gen), torch.randn(Q + 2 * KV, 48, generator=gen),
            torch.randn(Q + 2 * KV, generator=gen), torch.randn(2 * D, 48, generator=gen))


def test_vllm_merged_projections_become_one_product_per_cut_with_the_same_bits() -> None:
    inputs = _inputs(5)
    merged = after_passes(aten_graph(_vllm_layer, *inputs), rewrite_matmul)
    split = after_passes(aten_graph(_vllm_layer, *inputs), canonicalize_splits, split_merged_projections)
    assert split.count == 2
    names = targets(split)
    assert names.count(aten.addmm.default) == 3 and names.count(aten.mm.default) == 2
    assert aten.split_with_sizes.default not in names
    split = after_passes(split, rewrite_matmul)
    assert targets(split).count(bi.mm.default) == 5
    for got, want in zip(split(*inputs), merged(*inputs), strict=True):
        assert torch.equal(got, want)


def test_phi3_slices_and_chunks_become_one_product_per_cut_with_the_same_bits() -> None:
    x, w_qkv, _, w_gate_up = _inputs(2, 3)
    merged = after_passes(aten_graph(_phi3_layer, x, w_qkv, w_gate_up), rewrite_matmul)
    split = after_passes(aten_graph(_phi3_layer, x, w_qkv, w_gate_up), canonicalize_splits, split_merged_projections,
                         rewrite_matmul)
    assert targets(split).count(bi.mm.default) == 5
    for got, want in zip(split(x, w_qkv, w_gate_up), merged(x, w_qkv, w_gate_up), strict=True):
        assert torch.equal(got, want)


def test_products_read_whole_or_in_overlapping_cuts_stay() -> None:
    x, w, _, _ = _inputs(4)

    def whole_too(x: torch.Tensor, w: torch.Tensor):
        y = x @ w.t()
        return y[:, :Q], y.sum(-1)

    def overlapping(x: torch.Tensor, w: torch.Tensor):
        y = x @ w.t()
        return y[:, :Q], y[:, Q // 2:]

    for fn in (whole_too, overlapping):
        gm = after_passes(aten_graph(fn, x, w), split_merged_projections)
        assert gm.count == 0 and targets(gm).count(aten.mm.default) == 1, fn.__name__


def test_idempotent() -> None:
    gm = after_passes(aten_graph(_vllm_layer, *_inputs(3)), canonicalize_splits, split_merged_projections,
                      split_merged_projections)
    assert gm.count == 0 and targets(gm).count(aten.addmm.default) == 3
