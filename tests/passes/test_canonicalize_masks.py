"""canonicalize_masks and the masked attention it lets rewrite_eager_attention read: nanoGPT's
``masked_fill(bias == 0, -inf)`` attention becomes the attention template, close to eager; ``masked_fill``
becomes ``where`` with the same bits; other fills stay with the matmul and softmax templates."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ascend_compile.passes.canonicalize_masks import canonicalize_masks
from ascend_compile.passes.rewrite_eager_attention import rewrite_eager_attention
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten
bi = torch.ops.ascend_bi
T, HEADS, DIM = 8, 2, 16
CAUSAL = torch.tril(torch.ones(T, T)).view(1, 1, T, T)


def _filled(fill: float):
    """nanoGPT's CausalSelfAttention, its ``bias`` buffer an input (as Dynamo lifts buffers)."""
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(bias[:, :, :T, :T] == 0, fill)
        return F.softmax(att, dim=-1) @ v

    return attend


_nanogpt = _filled(float("-inf"))


def _qkv(batch: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (*(torch.randn(batch, HEADS, T, DIM, generator=gen) for _ in range(3)), CAUSAL)


def test_masked_fill_becomes_where_with_the_same_bits() -> None:
    fn = lambda x, m: x.masked_fill(m, float("-inf"))  # noqa: E731
    x, m = torch.randn(3, 8), torch.rand(3, 8) > 0.5
    gm = after_passes(aten_graph(fn, x, m), canonicalize_masks)
    assert gm.count == 1 and aten.where.self in targets(gm) and aten.masked_fill.Scalar not in targets(gm)
    assert torch.equal(gm(x, m), fn(x, m))


def test_nanogpt_attention_becomes_the_template() -> None:
    """One launch, no score matrix, close to the causal attention it computes (the template's invariance and its
    negative control are tests/kernels/test_attention.py's)."""
    q, k, v, bias = _qkv()
    gm = after_passes(aten_graph(_nanogpt, q, k, v, bias), canonicalize_masks, rewrite_eager_attention)
    assert gm.count == 1
    names = targets(gm)
    assert bi.attention.default in names and aten._softmax.default not in names and aten.bmm.default not in names
    torch.testing.assert_close(gm(q, k, v, bias), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_a_finite_fill_stays_with_the_matmul_and_softmax_templates() -> None:
    """A finite fill replaces the score; the template adds its masked score instead: the same only for -inf."""
    gm = after_passes(aten_graph(_filled(-1e4), *_qkv()), canonicalize_masks, rewrite_eager_attention)
    assert gm.count == 0 and bi.attention.default not in targets(gm)


def test_idempotent() -> None:
    gm = after_passes(aten_graph(_nanogpt, *_qkv()), canonicalize_masks, canonicalize_masks)
    assert gm.count == 0 and aten.where.self in targets(gm)
