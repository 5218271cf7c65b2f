"""Inductor lowers the ascend_bi ops as fallbacks without formatting their arguments.

torch 2.11 formats an op's arguments for its implicit-fallback log line even when the log is off,
and the string of a deep decoder graph's IR doubles with every layer (``allow_fallbacks``).  The
test makes the log line format eagerly, as 2.11 does, and drops our ops' lowerings so that this
compile registers them afresh; the control shows the same compile formatting them without the
allow list.
"""

from __future__ import annotations

import pytest
import torch
import torch._inductor.graph as inductor_graph
from torch._inductor import lowering
from torch._inductor.exc import OperatorIssue

from ascend_compile.executors import inductor as inductor_executor

F = torch.nn.functional


def _layers(x: torch.Tensor, w_norm: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor) -> torch.Tensor:
    """Two layers of transformers' RMSNorm feeding a query/key pair, with a residual add."""
    for _ in range(2):
        h32 = x.float()
        normed = w_norm * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
        x = x + F.linear(normed, w_q)[..., :64] + F.linear(normed, w_k)[..., :64]
    return x


def _formatted_ops(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Compile ``_layers`` with the inductor executor; the ascend_bi ops whose arguments were formatted."""
    formatted: set[str] = set()
    original, log = OperatorIssue.operator_str, inductor_graph.log

    def spy(target, args, kwargs):
        formatted.add(str(target))
        return original(target, args, kwargs)

    class EagerLog:  # torch 2.11's log line: the arguments are formatted whether or not it is shown
        def info(self, message: str, *args: object) -> None:
            message % tuple(str(a) for a in args)

        def __getattr__(self, name: str) -> object:
            return getattr(log, name)

    monkeypatch.setattr(OperatorIssue, "operator_str", staticmethod(spy))
    monkeypatch.setattr(inductor_graph, "log", EagerLog())
    for op in [op for op in lowering.lowerings if getattr(op, "namespace", None) == "ascend_bi"]:
        monkeypatch.delitem(lowering.lowerings, op)
    torch._dynamo.reset()
    inputs = [torch.randn(shape).bfloat16() for shape in ((3, 64), (64,), (128, 64), (128, 64))]
    compiled = torch.compile(_layers, backend="ascend_bi", options={"executor": "inductor"})
    with torch.no_grad():
        compiled(*inputs)
    return {name for name in formatted if name.startswith("ascend_bi.")}


def test_our_ops_lower_without_formatting_their_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _formatted_ops(monkeypatch) == set()
    assert {"ascend_bi::rms_norm", "ascend_bi::mm_group"} <= set(lowering.FALLBACK_ALLOW_LIST)
    assert torch.Tag.needs_exact_strides in torch.ops.ascend_bi.mm_group.default.tags


def test_without_the_allow_list_they_are_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control."""
    monkeypatch.setattr(inductor_executor, "allow_fallbacks", lambda graph: None)
    monkeypatch.setattr(lowering, "FALLBACK_ALLOW_LIST", set())
    monkeypatch.setattr(inductor_graph, "FALLBACK_ALLOW_LIST", lowering.FALLBACK_ALLOW_LIST, raising=False)
    assert _formatted_ops(monkeypatch)
