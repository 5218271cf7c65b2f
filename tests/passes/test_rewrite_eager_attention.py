"""rewrite_eager_attention: positive (fused and decomposed softmax, GQA, mask, scale), negative and
idempotence cases."""

from __future__ import annotations

import torch

from ascend_compile.passes.rewrite_eager_attention import rewrite_eager_attention
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph, repeat_kv, targets

SETTINGS = Settings()
aten = torch.ops.aten
bi = torch.ops.ascend_bi


def _softmax_by_hand(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - torch.amax(x, -1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def _eager_attention(q, k, v, mask):
    return _attention(q, k, v, mask, torch.softmax)


def _attention(q, k, v, mask, softmax):
    k, v = repeat_kv(k, 2), repeat_kv(v, 2)
    scores = torch.matmul(q, k.transpose(2, 3)) * 0.25 + mask
    probs = softmax(scores.float(), -1).to(q.dtype) if softmax is torch.softmax else softmax(scores)
    return torch.matmul(probs, v).transpose(1, 2).contiguous()


def _inputs(length: int = 5):
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]
    return (torch.randn(2, 4, length, 16), torch.randn(2, 2, length, 16), torch.randn(2, 2, length, 16), causal)


def _rewritten_matches(fn, inputs) -> torch.fx.GraphModule:
    gm = aten_graph(fn, *inputs)
    assert rewrite_eager_attention(gm, SETTINGS) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    assert targets(gm).count(bi.attention.default) == 1
    assert aten.bmm.default not in targets(gm) and aten._softmax.default not in targets(gm)
    torch.testing.assert_close(gm(*inputs), fn(*inputs))
    return gm


def test_fused_softmax_with_gqa_mask_and_scale() -> None:
    gm = _rewritten_matches(_eager_attention, _inputs())
    (attention,) = [n for n in gm.graph.nodes if n.target is bi.attention.default]
    key = attention.args[1].meta["val"]
    assert key.shape[1] == 2, "repeat_kv's copy is undone: the kernel reads the 2 key heads"


def test_decomposed_softmax() -> None:
    _rewritten_matches(lambda q, k, v, m: _attention(q, k, v, m, _softmax_by_hand), _inputs())


def test_scores_used_elsewhere_stay() -> None:
    def fn(q, k, v, mask):  # output_attentions: the probabilities are returned too
        scores = torch.matmul(q, repeat_kv(k, 2).transpose(2, 3)) + mask
        probs = torch.softmax(scores, -1)
        return torch.matmul(probs, repeat_kv(v, 2)), probs

    gm = aten_graph(fn, *_inputs())
    assert rewrite_eager_attention(gm, SETTINGS) == 0


def test_idempotent() -> None:
    gm = aten_graph(_eager_attention, *_inputs())
    assert rewrite_eager_attention(gm, SETTINGS) == 1
    assert rewrite_eager_attention(gm, SETTINGS) == 0
