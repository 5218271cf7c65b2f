"""rewrite_reductions: positive, negative and idempotence cases."""

from __future__ import annotations

import operator

import torch

from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph, targets

aten = torch.ops.aten
bi = torch.ops.ascend_bi
SETTINGS = Settings()


def _all_forms(x):
    rms = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (rms, x.sum(), x.sum(0, dtype=torch.float32), x.mean(), torch.var_mean(x, -1, correction=0),
            x.var(1), x.std(-1, keepdim=True), torch.logsumexp(x, -1), x.cumsum(0))


def test_every_float_reduction_becomes_a_template_and_computes_the_same() -> None:
    x = torch.randn(4, 33)
    gm = aten_graph(_all_forms, x)
    assert rewrite_reductions(gm, SETTINGS) == 9
    gm.recompile()
    names = targets(gm)
    assert names.count(bi.sum.default) == 4 and names.count(bi.var_mean.default) == 3
    assert bi.logsumexp.default in names and operator.getitem in names and aten.sqrt.default in names
    assert bi.cumsum.default in names
    assert not {aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.var.correction} & set(names)
    for got, want in zip(torch.utils._pytree.tree_leaves(gm(x)), torch.utils._pytree.tree_leaves(_all_forms(x)),
                         strict=True):
        torch.testing.assert_close(got, want)


def test_exact_and_unplanned_reductions_stay() -> None:
    def fn(i, d, x):
        return i.sum(-1), d.mean(-1), x.amax(-1), x.sum(-1, dtype=torch.float64)

    gm = aten_graph(fn, torch.ones(2, 3, dtype=torch.int64), torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3))
    assert rewrite_reductions(gm, SETTINGS) == 0
    assert bi.sum.default not in targets(gm)


def test_casts_around_the_reduction_are_kept() -> None:
    def rms_norm_bf16(x):  # Qwen/Llama: upcast, normalise in fp32, cast back
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)

    x = torch.randn(3, 64, dtype=torch.bfloat16)
    gm = aten_graph(rms_norm_bf16, x)
    before = [t for t in targets(gm) if t != aten.mean.dim]
    assert rewrite_reductions(gm, SETTINGS) == 1
    assert [t for t in targets(gm) if t != bi.sum.default] == before
    gm.recompile()
    torch.testing.assert_close(gm(x), rms_norm_bf16(x))


def test_idempotent() -> None:
    gm = aten_graph(lambda x: x.mean(-1), torch.randn(2, 5))
    assert rewrite_reductions(gm, SETTINGS) == 1
    assert rewrite_reductions(gm, SETTINGS) == 0
