"""rewrite_softmax: positive, negative and idempotence cases."""

from __future__ import annotations

import torch

from ascend_compile.passes.rewrite_softmax import rewrite_softmax
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph, targets

aten = torch.ops.aten
SETTINGS = Settings()


def test_softmax_and_log_softmax_become_templates() -> None:
    def fn(x):
        return torch.softmax(x, -1), torch.log_softmax(x, 0)

    x = torch.randn(3, 7)
    gm = aten_graph(fn, x)
    assert rewrite_softmax(gm, SETTINGS) == 2
    assert targets(gm).count(torch.ops.ascend_bi.softmax.default) == 2
    gm.recompile()
    for got, want in zip(gm(x), fn(x), strict=True):
        torch.testing.assert_close(got, want)


def test_half_to_float_and_float64_stay() -> None:
    def fn(h, d):
        return aten._softmax.default(h, -1, True), torch.softmax(d, -1)

    gm = aten_graph(fn, torch.randn(2, 3, dtype=torch.float16), torch.randn(2, 3, dtype=torch.float64))
    assert rewrite_softmax(gm, SETTINGS) == 0
    assert targets(gm).count(aten._softmax.default) == 2


def test_idempotent() -> None:
    gm = aten_graph(lambda x: torch.softmax(x, -1), torch.randn(2, 5))
    assert rewrite_softmax(gm, SETTINGS) == 1
    assert rewrite_softmax(gm, SETTINGS) == 0
