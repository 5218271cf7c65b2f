"""rewrite_matmul: positive, negative and idempotence cases."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops.matmul as matmul_ops
from ascend_compile import devices
from ascend_compile.backend import graph_facts
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.report import CompileReport
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


def test_weights_are_told_apart_from_activations_and_written_parameters() -> None:
    """``ascend_bi::mm`` learns that its B is a weight (it may then be read before the previous kernel
    ends) only for views of parameters the graph never writes."""
    def fn(x, w, y, m):
        out = torch.mm(x, w.t()), torch.addmm(y[0, :3], x, w.t()), torch.mm(x, y), torch.mm(x, m.t())
        m.add_(1.0)  # a parameter written in the graph: its readers may not run ahead
        return out

    inputs = (torch.randn(2, 4), torch.randn(3, 4), torch.randn(4, 3), torch.randn(3, 4))
    gm = aten_graph(fn, *inputs, parameter_positions=frozenset({1, 3}))
    assert rewrite_matmul(gm, SETTINGS) == 4
    flags = [n.args[3] if len(n.args) > 3 else False for n in gm.graph.nodes if n.target == bi.mm.default]
    assert flags == [True, True, False, False]
    gm.recompile()
    for got, want in zip(gm(*[t.clone() for t in inputs]), fn(*[t.clone() for t in inputs]), strict=True):
        torch.testing.assert_close(got, want)


def test_graph_facts_mark_parameters_and_buffers() -> None:
    linear = torch.nn.Linear(4, 3)
    buffer = torch.ones(3)
    torch._dynamo.mark_static_address(buffer)
    facts = graph_facts([torch.randn(2, 4), linear.weight, buffer, linear.bias], devices.detect([buffer]),
                        CompileReport(graph="g", device="cpu", executor="fx"))
    assert facts.parameter_positions == {1, 3} and facts.static_positions == {1, 2, 3}


def test_a_compiled_model_reads_its_linear_weights_as_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """From ``torch.compile`` to the kernel: a Linear's weight reaches ``bi_matmul`` as a weight, an
    activation operand does not."""
    seen: list[bool] = []
    real = matmul_ops.bi_matmul

    def recording(a, b, bias=None, *, b_is_weight=False, **kwargs):
        seen.append(b_is_weight)
        return real(a, b, bias, b_is_weight=b_is_weight, **kwargs)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(16, 8)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.linear(x) @ y

    monkeypatch.setattr(matmul_ops, "bi_matmul", recording)
    torch._dynamo.reset()
    x, y = torch.randn(3, 16), torch.randn(8, 5)
    model = Model()
    with torch.no_grad():
        out = torch.compile(model, backend="ascend_bi", options={"executor": "fx"})(x, y)
        torch.testing.assert_close(out, model(x, y))
    assert seen == [True, False]
