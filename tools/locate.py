"""Find the first node of the rewritten graph where a probe row stops being batch-invariant.

``ascend-bi check`` knows *that* a row's bits changed with its batch; this module says *where*.
It compiles the model again through the same pipeline with a recording executor: every graph
runs in an FX ``Interpreter`` that keeps each node's output.  The model runs twice, on the probe
alone and on the batch holding the probe, through the very same graphs (shapes are dynamic and
size-oblivious, so batch 1 does not get a graph of its own); then, node by node in execution
order, the probe's slice of the batch run is compared bit for bit with the alone run.  The first
node that differs although all its inputs agree is where invariance breaks: its op and the source
line it came from are what the user needs.

The probe's slice of a value is found by shape: the one dim whose extent is the batch size times
the alone extent, cut at the probe's row (rows are laid out batch-major, as reshapes of
``(batch, ...)`` tensors are).  Values without that dim (weights, positions) must match whole.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.fx.experimental._config as fx_config
from torch._dynamo.backends.common import aot_autograd

from ascend_compile import devices
from ascend_compile.backend import graph_facts
from ascend_compile.passes.graph_facts import source_line
from ascend_compile.passes.pipeline import run_pipeline
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Divergence:
    """Where the probe's bits first depend on the batch."""

    graph: str
    node: str
    op: str
    source: str
    max_abs_diff: float
    #: True when the node is an order-sensitive reduction the pipeline left stock (the report's list).
    left_stock: bool
    #: The stack trace Dynamo recorded for the node ('' when it recorded none).
    stack_trace: str


@dataclass
class _RecordedGraph:
    gm: torch.fx.GraphModule
    report: CompileReport
    #: One dict per call: node name -> output value.
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: Call order of the first run, to walk graphs in execution order.
    first_call: int | None = None


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, values: dict[str, Any]) -> None:
        super().__init__(gm)
        self.values = values

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        self.values[n.name] = result
        return result


def _recording_backend(options: dict[str, Any], graphs: list[_RecordedGraph]) -> Any:
    settings = Settings.from_options({**options, "executor": "fx", "dump_dir": None})
    calls = itertools.count()

    def backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        device = devices.detect(example_inputs)
        report = CompileReport(graph=f"located_{len(graphs):03d}", device=device.kind, executor="fx")
        facts = graph_facts(example_inputs, device, report)

        def forward_compiler(fw: torch.fx.GraphModule, inputs: list[Any]) -> Any:
            run_pipeline(fw, settings, facts)
            recorded = _RecordedGraph(fw, report)
            graphs.append(recorded)

            def run(args: list[Any]) -> Any:
                if recorded.first_call is None:
                    recorded.first_call = next(calls)
                values: dict[str, Any] = {}
                recorded.runs.append(values)
                return _Recorder(fw, values).run(*args)

            run._boxed_call = True  # type: ignore[attr-defined]
            return run

        return aot_autograd(fw_compiler=forward_compiler)(gm, example_inputs)

    return backend


def _probe_slice(batch_value: torch.Tensor, alone_value: torch.Tensor, batch: int, row: int) -> torch.Tensor | None:
    """The probe's part of ``batch_value``, shaped like ``alone_value``; None when no dim fits."""
    if batch_value.shape == alone_value.shape:
        return batch_value
    if batch_value.dim() != alone_value.dim():
        return None
    differing = [d for d in range(batch_value.dim()) if batch_value.shape[d] != alone_value.shape[d]]
    if len(differing) != 1:
        return None
    (d,) = differing
    extent = alone_value.shape[d]
    if batch_value.shape[d] != batch * extent:
        return None
    return batch_value.narrow(d, row * extent, extent)


def _tensors(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _compare(batch_value: Any, alone_value: Any, batch: int, row: int) -> float | None:
    """Largest |difference| over the probe's slices (0.0: equal; inf where NaNs differ); None when
    no tensor of the value can be compared."""
    diffs = []
    for b, a in zip(_tensors(batch_value), _tensors(alone_value), strict=False):
        if not isinstance(b, torch.Tensor) or not isinstance(a, torch.Tensor):
            continue
        part = _probe_slice(b, a, batch, row)
        if part is None or part.dtype != a.dtype:
            continue
        if torch.equal(part, a):
            diffs.append(0.0)
        else:
            diffs.append(float((part.double() - a.double()).abs().nan_to_num(float("inf")).max()))
    return max(diffs) if diffs else None


def _differs(diff: float | None) -> bool:
    return diff is not None and diff > 0


def _find(graphs: list[_RecordedGraph], batch: int, row: int) -> Divergence | str:
    """The first node, in execution order, whose probe slice differs while its inputs' agree."""
    differing_inputs: list[tuple[_RecordedGraph, torch.fx.Node]] = []
    for recorded in sorted(graphs, key=lambda g: g.first_call if g.first_call is not None else 1 << 30):
        batch_run, alone_run = recorded.runs[0], recorded.runs[1]
        uncovered = {u.node for u in recorded.report.uncovered}
        bad: set[str] = set()
        for node in recorded.gm.graph.nodes:
            if node.op == "output" or node.name not in batch_run:
                continue
            diff = _compare(batch_run[node.name], alone_run[node.name], batch, row)
            if not _differs(diff):
                continue
            bad.add(node.name)
            if node.op == "placeholder":
                differing_inputs.append((recorded, node))
                continue
            if not any(arg.name in bad for arg in node.all_input_nodes):
                return Divergence(
                    graph=recorded.report.graph, node=node.name, op=str(node.target), source=source_line(node),
                    max_abs_diff=float(diff), left_stock=node.name in uncovered,
                    stack_trace=(node.meta.get("stack_trace") or "").strip(),
                )
    if differing_inputs:
        recorded, node = differing_inputs[0]
        return (f"the probe's values first differ at input {node.name} of {recorded.report.graph}: "
                "the divergence comes from code outside the compiled graphs (a graph break)")
    return ("run node by node (executor fx), every node gives the probe the same bits in and out of the batch: "
            "the divergence comes from the compiled code of the chosen executor, not from an op of the graph")


def locate(model: Any, options: dict[str, Any], alone: tuple[Any, ...], batch_inputs: tuple[Any, ...],
           batch: int, row: int) -> Divergence | str:
    """Where the probe (``alone``, batch 1) and its row ``row`` of ``batch_inputs`` first differ;
    a sentence instead when no node of the graphs can be blamed."""
    graphs: list[_RecordedGraph] = []
    torch._dynamo.reset()
    with fx_config.patch(backed_size_oblivious=True), torch.no_grad():
        compiled = torch.compile(model, backend=_recording_backend(options, graphs), dynamic=True)
        compiled(*batch_inputs)
        compiled(*alone)
    torch._dynamo.reset()
    if any(len(g.runs) != 2 for g in graphs):
        return ("the probe alone did not run through the graphs compiled for the batch (Dynamo recompiled), "
                "so no node can be compared")
    return _find(graphs, batch, row)
