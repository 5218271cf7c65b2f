"""rewrite_attention: positive, negative and idempotence cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ascend_compile.passes.rewrite_attention import rewrite_attention
from ascend_compile.passes.verify_batch_invariance import NotBatchInvariantError, verify_batch_invariance
from ascend_compile.settings import Settings
from tests.passes.graphs import after_passes, aten_graph, repeat_kv, targets

SETTINGS = Settings()
bi = torch.ops.ascend_bi


def _qkv(length: int = 5):
    return torch.randn(1, 4, length, 16), torch.randn(1, 2, length, 16), torch.randn(1, 2, length, 16)


def test_sdpa_becomes_the_template_with_its_layout() -> None:
    def fn(q, k, v, mask):
        return (F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5, enable_gqa=True))

    inputs = (*_qkv(), torch.randn(1, 1, 5, 5))
    gm = aten_graph(fn, *inputs)
    assert rewrite_attention(gm, SETTINGS) == 2
    assert targets(gm).count(bi.attention.default) == 2
    gm.recompile()
    for got, want in zip(gm(*inputs), fn(*inputs), strict=True):
        torch.testing.assert_close(got, want)
        assert got.stride() == want.stride()


def test_boolean_mask_is_read_as_it_is() -> None:
    """SDPA's per-call ``where(mask, 0, -inf)`` conversion is dropped: the template reads the
    boolean mask, with the bits of the additive one (which the stock kernel gets)."""
    def fn(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    mask = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    inputs = (*_qkv(), mask)
    gm = aten_graph(fn, *inputs)
    assert torch.ops.aten.where.self in targets(gm)
    assert rewrite_attention(gm, SETTINGS) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    (attention,) = [n for n in gm.graph.nodes if n.target is bi.attention.default]
    assert attention.args[3].meta["val"].dtype == torch.bool and torch.ops.aten.where.self not in targets(gm)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    q, k, v = inputs[:3]
    assert torch.equal(gm(*inputs), bi.attention(q, k, v, additive, False, None, False))
    torch.testing.assert_close(gm(*inputs), fn(*inputs))


@pytest.mark.parametrize("score", [float("-inf"), -65504.0])
def test_gpu_mask_conversions_are_read_as_the_boolean_mask(score: float) -> None:
    """On GPUs SDPA converts with ``where(logical_not(mask), -inf, 0)`` (cuDNN: -65504): the
    template reads the boolean mask with that score, and gives the converted mask's bits, a query
    that sees no key included (cuDNN's finite score averages the masked keys)."""
    def fn(q, k, v, mask):
        additive = torch.where(mask.logical_not(), score, torch.scalar_tensor(0.0))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=additive, enable_gqa=True)

    mask = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[..., 0] = True
    if score != float("-inf"):
        mask[..., 2, :] = False
    inputs = (*_qkv(), mask)
    gm = after_passes(aten_graph(fn, *inputs), rewrite_attention)
    (attention,) = [n for n in gm.graph.nodes if n.target is bi.attention.default]
    assert attention.args[3].meta["val"].dtype == torch.bool and torch.ops.aten.where.self not in targets(gm)
    assert attention.args[8:] == (() if score == float("-inf") else (score,))
    q, k, v = inputs[:3]
    additive = torch.where(mask, 0.0, score)
    assert torch.equal(gm(*inputs), bi.attention(q, k, v, additive, False, None, False))
    torch.testing.assert_close(gm(*inputs), fn(*inputs))


def test_repeat_kv_copy_is_undone() -> None:
    """transformers repeats key/value heads before SDPA when there is a mask: the template reads the
    key/value heads before that copy, and the copy goes."""
    def fn(q, k, v, mask):
        return F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), attn_mask=mask)

    inputs = (*_qkv(), torch.randn(1, 1, 5, 5))
    gm = aten_graph(fn, *inputs)
    assert rewrite_attention(gm, SETTINGS) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    (attention,) = [n for n in gm.graph.nodes if n.target is bi.attention.default]
    assert [a.meta["val"].shape[1] for a in attention.args[1:3]] == [2, 2]
    assert torch.ops.aten.expand.default not in targets(gm)
    torch.testing.assert_close(gm(*inputs), fn(*inputs))


def test_dropout_and_float64_stay() -> None:
    def fn(q, k, v, q64):
        return (F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, enable_gqa=True),
                F.scaled_dot_product_attention(q64, q64, q64))

    gm = aten_graph(fn, *_qkv(), torch.randn(1, 2, 5, 16, dtype=torch.float64))
    assert rewrite_attention(gm, SETTINGS) == 0


def test_idempotent() -> None:
    gm = aten_graph(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), *_qkv())
    assert rewrite_attention(gm, SETTINGS) == 1
    assert rewrite_attention(gm, SETTINGS) == 0


def test_strict_error_names_why_an_attention_stayed() -> None:
    def fn(q, k, v):  # the logsumexp output is used: the template does not produce it
        out, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, logsumexp

    q = torch.randn(1, 2, 5, 16)
    gm = aten_graph(fn, q, q, q)
    assert rewrite_attention(gm, SETTINGS) == 0
    with pytest.raises(NotBatchInvariantError, match=r"not rewritten: an output other than the attention"):
        verify_batch_invariance(gm, Settings(strict=True))
