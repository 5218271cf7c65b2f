"""fuse_rope: a layer without query/key norms (Llama, Mistral) rotates its query and key, and
writes its static cache, in one template launch with the same bits; the query is told from the
key by the cache writes, not by graph order alone."""

from __future__ import annotations

import pytest
import torch
from torch._higher_order_ops.auto_functionalize import auto_functionalized

from ascend_compile.passes.fuse_norm_rope import fuse_norm_rope
from ascend_compile.passes.fuse_rope import fuse_rope
from tests.passes.graphs import after_passes, aten_graph, targets
from tests.passes.test_fuse_norm_rope import BEFORE, HEAD, _inputs, _rotate_half

aten = torch.ops.aten
bi = torch.ops.ascend_bi
F = torch.nn.functional
PASSES = (*BEFORE, fuse_norm_rope)


def _rotations(x, wq, wk, wv, cos, sin, key_first=False):
    """LlamaAttention up to attention: projections per head, transpose, rotation (the key first
    when ``key_first``)."""
    batch, length = x.shape[:2]
    q, k, v = (F.linear(x, w).view(batch, length, -1, HEAD).transpose(1, 2) for w in (wq, wk, wv))
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if key_first:
        k_rot = k * cos + _rotate_half(k) * sin
        return q * cos + _rotate_half(q) * sin, k_rot, v
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def _layer(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    return _rotations(x, wq, wk, wv, cos, sin)


def _appending(x, wq, wk, wv, q_norm, k_norm, cos, sin, k_cache, v_cache, position, key_first=False):
    q, k, v = _rotations(x, wq, wk, wv, cos, sin, key_first)
    index = torch.arange(k.shape[2]) + position
    position.add_(k.shape[2])
    k_cache.index_copy_(2, index, k)
    v_cache.index_copy_(2, index, v)
    return q * 1, k_cache * 1, v_cache * 1


def test_rotations_share_one_launch_with_the_same_bits() -> None:
    inputs = _inputs()
    gm = after_passes(aten_graph(_layer, *inputs), *PASSES, fuse_rope)
    assert gm.count == 1 and bi.rope.default in targets(gm)
    assert aten.cat.default not in targets(gm) and aten.neg.default not in targets(gm)
    separate = after_passes(aten_graph(_layer, *inputs), *PASSES)
    assert aten.cat.default in targets(separate)
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))


@pytest.mark.parametrize("key_first", [False, True])
def test_static_cache_writes_and_write_position_join_the_launch(key_first: bool) -> None:
    """Under Inductor the cache writes and the write position go in too, whichever rotation the
    graph computes first (the key is the one written to the cache)."""
    def layer(*args):
        return _appending(*args, key_first=key_first)

    traced = [aten_graph(layer, *_inputs(cache=True, position=True),
                         decompose=(aten.index_copy_.default, aten.index_copy.default), executor="inductor")
              for _ in range(2)]
    fused, separate = after_passes(traced[0], *PASSES, fuse_rope), after_passes(traced[1], *PASSES)
    assert fused.count == 1
    (node,) = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert node.args[0] is bi.rope_append.default and aten.index_put.default not in targets(fused)
    want, got = (_inputs(cache=True, position=True) for _ in range(2))
    assert all(torch.equal(f, s) for f, s in zip([*fused(*got), *got[-3:]], [*separate(*want), *want[-3:]],
                                                  strict=True))
    assert got[-1].item() == 5


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """transformers' GPT-J rotation: each even element paired with the odd one after it."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _gptj(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    """GPT-J's rotation of interleaved pairs, per head, transposed (transformers' ``apply_rotary_pos_emb``)."""
    batch, length = x.shape[:2]
    q, k = (F.linear(x, w).view(batch, length, -1, HEAD).transpose(1, 2) for w in (wq, wk))
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_every_two(q) * sin, k * cos + _rotate_every_two(k) * sin


def test_interleaved_pairs_rotate_in_one_launch_with_the_same_bits() -> None:
    """GPT-J's ``rotate_every_two`` is read as the interleaved rotation; negative control: the pairs stacked
    with the other sign are no rotation of either kind and stay."""
    inputs = _inputs()
    gm = after_passes(aten_graph(_gptj, *inputs), *PASSES, fuse_rope)
    (node,) = [n for n in gm.graph.nodes if n.target is bi.rope.default]
    assert gm.count == 1 and node.kwargs["interleaved"] is True
    separate = after_passes(aten_graph(_gptj, *inputs), *PASSES)
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))
    assert all(torch.equal(f, e) for f, e in zip(gm(*inputs), _gptj(*inputs), strict=True))

    def other_sign(x, wq, wk, wv, q_norm, k_norm, cos, sin):
        q, k = (F.linear(x, w).view(*x.shape[:2], -1, HEAD).transpose(1, 2) for w in (wq, wk))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return tuple(t * cos + torch.stack((t[..., 1::2], -t[..., ::2]), dim=-1).flatten(-2) * sin for t in (q, k))

    assert after_passes(aten_graph(other_sign, *inputs), *PASSES, fuse_rope).count == 0


def test_a_lone_rotation_is_left_alone() -> None:
    """Negative control: one rotation per angles (no key beside it) keeps Inductor's ops."""
    def query_only(x, wq, wk, wv, q_norm, k_norm, cos, sin):
        q = F.linear(x, wq).view(*x.shape[:2], -1, HEAD).transpose(1, 2)
        return q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)

    gm = after_passes(aten_graph(query_only, *_inputs()), *PASSES, fuse_rope)
    assert gm.count == 0 and aten.cat.default in targets(gm)
