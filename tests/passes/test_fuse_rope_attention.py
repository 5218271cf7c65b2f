"""fuse_rope_attention: a cache-writing rotation and the attention that reads its query and caches
become one launch with the same bits (output, caches, write position); so do a rotation, the ``cat``s
growing a hand-written model's caches and attention over them (output and grown caches); a cache read
between them keeps the separate launches."""

from __future__ import annotations

import pytest
import torch
from torch._higher_order_ops.auto_functionalize import auto_functionalized

from ascend_compile.passes import PIPELINE
from ascend_compile.passes.fuse_rope_attention import fuse_rope_attention
from tests.passes.graphs import after_passes, aten_graph, targets
from tests.passes.test_fuse_norm_rope import _inputs, _prologue

aten = torch.ops.aten
bi = torch.ops.ascend_bi
F = torch.nn.functional
BEFORE = PIPELINE[:PIPELINE.index(fuse_rope_attention)]


def _decode(x, wq, wk, wv, q_norm, k_norm, cos, sin, k_cache, v_cache, position, mask):
    """A Qwen3 layer from its input to attention over transformers' static cache, appending."""
    q, k, v = _prologue(x, wq, wk, wv, q_norm, k_norm, cos, sin)
    index = torch.arange(k.shape[2]) + position
    position.add_(k.shape[2])
    k_cache.index_copy_(2, index, k)
    v_cache.index_copy_(2, index, v)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)


def _read_between(*args):
    """The same, with the key cache read before attention (a copy the graph returns)."""
    q, k, v = _prologue(*args[:8])
    k_cache, v_cache, position, mask = args[8:]
    index = torch.arange(k.shape[2]) + position
    position.add_(k.shape[2])
    k_cache.index_copy_(2, index, k)
    v_cache.index_copy_(2, index, v)
    early = k_cache * 1
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True), early


def _case() -> tuple[torch.Tensor, ...]:
    inputs = _inputs(cache=True, position=True)
    mask = (torch.arange(6)[None, :] <= 3 + torch.arange(2)[:, None]).expand(3, 1, 2, 6)
    return (*inputs, mask)


def _graphs(layer) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    traced = [aten_graph(layer, *_case(), decompose=(aten.index_copy_.default, aten.index_copy.default),
                         executor="inductor") for _ in range(2)]
    return after_passes(traced[0], *BEFORE, fuse_rope_attention), after_passes(traced[1], *BEFORE)


def _run(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    inputs = _case()
    out = gm(*inputs)
    return [*(out if isinstance(out, (tuple, list)) else [out]), *inputs[-4:-1]]  # then caches and position


def test_the_rotation_joins_the_attention_launch_with_the_same_bits() -> None:
    fused, separate = _graphs(_decode)
    assert fused.count == 1 and bi.attention.default not in targets(fused)
    (node,) = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert node.args[0] is bi.rope_attention_append.default
    assert bi.attention.default in targets(separate)
    got, want = _run(fused), _run(separate)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)) and got[-1].item() == 5


def test_a_cache_read_before_attention_keeps_two_launches() -> None:
    """Negative control: attention would no longer be the first reader of the written key cache."""
    fused, separate = _graphs(_read_between)
    assert fused.count == 0 and bi.attention.default in targets(fused)
    assert all(torch.equal(g, w) for g, w in zip(_run(fused), _run(separate), strict=True))


def _grown(x, wq, wk, wv, q_norm, k_norm, cos, sin, past_k, past_v):
    """A hand-written layer: caches grown by ``torch.cat``, returned beside attention's output."""
    q, k, v = _prologue(x, wq, wk, wv, q_norm, k_norm, cos, sin)
    keys, values = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
    return F.scaled_dot_product_attention(q, keys, values, enable_gqa=True), keys, values


def _grown_read_between(*args):
    """The same, with the grown keys read before attention."""
    q, k, v = _prologue(*args[:8])
    keys, values = torch.cat((args[8], k), dim=2), torch.cat((args[9], v), dim=2)
    early = keys * 1
    return F.scaled_dot_product_attention(q, keys, values, enable_gqa=True), keys, values, early


def _grown_case(past: int = 5) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    return (*_inputs(), *(torch.randn(3, 2, past, 32, generator=gen).bfloat16() for _ in range(2)))


@pytest.mark.parametrize(("layer", "fused"), [(_grown, 1), (_grown_read_between, 0)],
                         ids=["grown caches", "grown keys read before attention"])
def test_caches_grown_by_cat_join_the_attention_launch(layer, fused: int) -> None:
    graphs = [after_passes(aten_graph(layer, *_grown_case()), *BEFORE, *passes) for passes in ([fuse_rope_attention],
                                                                                                [])]
    assert graphs[0].count == fused
    assert (bi.rope_attention_grown.default in targets(graphs[0])) == bool(fused)
    assert (aten.cat.default in targets(graphs[0])) != bool(fused) and aten.cat.default in targets(graphs[1])
    got, want = (gm(*_grown_case()) for gm in graphs)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert got[1].shape[2] == 7 and torch.equal(got[1][:, :, :5], _grown_case()[8])
    # Negative control: one past key fewer gives the query other keys.
    assert not torch.equal(graphs[0](*_grown_case(past=4))[0], got[0])
