"""op_plans: each template node's plan, as its kernel would choose it; symbolic extents say so."""

from __future__ import annotations

import dataclasses

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ascend_compile import devices
from ascend_compile.kernels.plans import matmul_plan, row_plan
from ascend_compile.passes.graph_facts import GraphFacts, attach
from ascend_compile.passes.op_plans import op_plans
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph

SETTINGS = Settings()
CPU = devices.detect([torch.zeros(1)])


def test_static_extents_get_the_plan_the_kernel_uses() -> None:
    x, w = torch.randn(4, 300), torch.randn(300, 24)
    gm = aten_graph(lambda x, w: (x @ w).sum(-1), x, w)
    assert rewrite_matmul(gm, SETTINGS) == 1 and rewrite_reductions(gm, SETTINGS) == 1
    plans = {p["op"]: p for p in op_plans(gm, CPU)}
    assert plans.keys() == {"ascend_bi.mm.default", "ascend_bi.sum.default"}
    assert plans["ascend_bi.mm.default"]["plan"] == dataclasses.asdict(matmul_plan(300, 24, torch.float32, CPU))
    assert plans["ascend_bi.sum.default"]["plan"] == dataclasses.asdict(row_plan(24, torch.float32, CPU))
    assert plans["ascend_bi.sum.default"]["extents"] == {"n": "24"}


def test_symbolic_reduced_extent_is_chosen_at_run_time() -> None:
    gm = make_fx(lambda x: x.sum(-1), tracing_mode="symbolic")(torch.randn(4, 300))
    attach(gm, GraphFacts(device=CPU, static_positions=frozenset(),
                          report=CompileReport(graph="g", device="cpu", executor="fx")))
    assert rewrite_reductions(gm, SETTINGS) == 1
    (entry,) = op_plans(gm, CPU)
    assert entry["plan"] is None and "chosen at run time" in entry["note"]
    assert entry["extents"]["n"].startswith("s")  # the symbol, never a guessed hint


def test_graphs_without_templates_have_no_plans() -> None:
    gm = aten_graph(lambda x: x.amax(-1), torch.randn(2, 8))
    assert op_plans(gm, CPU) == []
