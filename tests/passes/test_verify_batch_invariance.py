"""verify_batch_invariance: lists what is order-sensitive, ignores what is exact, strict raises."""

from __future__ import annotations

import logging

import pytest
import torch

from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.verify_batch_invariance import NotBatchInvariantError, verify_batch_invariance
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph


def _sum_and_exact(x, i):
    return x.sum(-1), x.amax(-1), x.argmax(-1), i.sum(-1), (x > 0).any(-1)


def test_lists_float_sums_and_ignores_exact_reductions(caplog: pytest.LogCaptureFixture) -> None:
    gm = aten_graph(_sum_and_exact, torch.randn(2, 5), torch.ones(2, 5, dtype=torch.int64))
    with caplog.at_level(logging.WARNING):
        assert verify_batch_invariance(gm, Settings()) == 1
    (uncovered,) = facts_of(gm).report.uncovered
    assert uncovered.target == "aten.sum.dim_IntList"
    assert "not batch-invariant" in caplog.text and uncovered.node in caplog.text


def test_strict_mode_raises_naming_the_node() -> None:
    gm = aten_graph(lambda x: torch.mm(x, x.t().double()), torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(NotBatchInvariantError,
                       match=r"mm: dtype float64: templates take float32, bfloat16, float16 only \(aten\.mm\.default"):
        verify_batch_invariance(gm, Settings(strict=True))


def test_rewritten_matmuls_are_clean() -> None:
    gm = aten_graph(lambda x, w: torch.mm(x, w), torch.randn(2, 3), torch.randn(3, 4))
    rewrite_matmul(gm, Settings())
    assert verify_batch_invariance(gm, Settings(strict=True)) == 0


def test_idempotent() -> None:
    gm = aten_graph(lambda x: x.sum(), torch.randn(3))
    assert verify_batch_invariance(gm, Settings()) == verify_batch_invariance(gm, Settings()) == 1


def test_inductor_online_softmax_is_reported() -> None:
    """Inductor's GPU post-grad passes may hide a softmax's sum in this prim (the inductor executor
    turns them off); if one reaches the pipeline anyway, it is not silently trusted."""
    import torch._inductor.inductor_prims  # noqa: F401  (registers prims.prepare_softmax_online)

    gm = aten_graph(lambda x: torch.ops.prims.prepare_softmax_online(x, -1), torch.randn(2, 5))
    assert verify_batch_invariance(gm, Settings()) == 1
    assert facts_of(gm).report.uncovered[0].target == "prims.prepare_softmax_online.default"
