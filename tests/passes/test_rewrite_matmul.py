"""rewrite_matmul: positive, negative and idempotence cases."""

from __future__ import annotations

import torch

from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph, targets

aten = torch.ops.aten
bi = torch.ops.ascend_bi
SETTINGS = Settings()


def test_mm_addmm_bmm_become_templates_and_compute_the_same() -> None:
    def fn(x, w, b, q, k):
        return torch.addmm(b, x, w.t()), torch.mm(x, w.t()), torch.bmm(q, k)

    inputs = (torch.randn(4, 8), torch.randn(6, 8), torch.randn(6), torch.randn(2, 3, 5), torch.randn(2, 5, 3))
    gm = aten_graph(fn, *inputs)
    assert rewrite_matmul(gm, SETTINGS) == 3
    gm.recompile()
    assert bi.mm.default in targets(gm) and bi.bmm.default in targets(gm)
    assert not {aten.mm.default, aten.addmm.default, aten.bmm.default} & set(targets(gm))
    for got, want in zip(gm(*inputs), fn(*inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_addmm_keeps_bias_as_the_epilogue_operand() -> None:
    gm = aten_graph(lambda b, x, w: torch.addmm(b, x, w), torch.randn(3), torch.randn(2, 4), torch.randn(4, 3))
    rewrite_matmul(gm, SETTINGS)
    node = next(n for n in gm.graph.nodes if n.target == bi.mm.default)
    assert [a.name for a in node.args] == ["x_1", "w_1", "b_1"]


def test_unsupported_forms_are_left_alone() -> None:
    def fn(x64, w64, x, w, b):
        return torch.mm(x64, w64), torch.addmm(b, x, w, beta=2.0), torch.mm(x.int(), w.int())

    inputs = (torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64),
              torch.randn(2, 3), torch.randn(3, 2), torch.randn(2))
    gm = aten_graph(fn, *inputs)
    assert rewrite_matmul(gm, SETTINGS) == 0
    assert targets(gm).count(aten.mm.default) == 2 and aten.addmm.default in targets(gm)


def test_idempotent() -> None:
    gm = aten_graph(lambda x, w: torch.mm(x, w), torch.randn(2, 3), torch.randn(3, 4))
    assert rewrite_matmul(gm, SETTINGS) == 1
    assert rewrite_matmul(gm, SETTINGS) == 0
