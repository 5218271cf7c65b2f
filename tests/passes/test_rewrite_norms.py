"""rewrite_norms: positive, negative and idempotence cases."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ascend_compile.passes.rewrite_norms import rewrite_norms
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph, targets

aten = torch.ops.aten
SETTINGS = Settings()


def test_layer_norm_with_and_without_affine_becomes_the_template() -> None:
    def fn(x, w, b):
        return F.layer_norm(x, [8], w, b), F.layer_norm(x, [4, 8])

    inputs = (torch.randn(2, 4, 8), torch.randn(8), torch.randn(8))
    gm = aten_graph(fn, *inputs)
    assert rewrite_norms(gm, SETTINGS) == 2
    assert aten.native_layer_norm.default not in targets(gm)
    gm.recompile()
    for got, want in zip(gm(*inputs), fn(*inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_float64_layer_norm_stays() -> None:
    gm = aten_graph(lambda x: F.layer_norm(x, [8]), torch.randn(2, 8, dtype=torch.float64))
    assert rewrite_norms(gm, SETTINGS) == 0


def test_idempotent() -> None:
    gm = aten_graph(lambda x: F.layer_norm(x, [8]), torch.randn(2, 8))
    assert rewrite_norms(gm, SETTINGS) == 1
    assert rewrite_norms(gm, SETTINGS) == 0
