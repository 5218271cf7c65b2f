"""What the pipeline tells passes about a graph, stored on ``gm.meta`` next to the graph itself.

Passes keep the ``(gm, settings) -> int`` signature; the facts they need beyond the graph (the
device, which placeholders are parameters or buffers) and the report they fill travel with the
GraphModule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from ascend_compile.devices import Device
from ascend_compile.report import CompileReport

_KEY = "ascend_bi_facts"


@dataclass
class GraphFacts:
    device: Device
    #: Positions (among the graph's inputs) of parameters and buffers: never copied, never padded.
    static_positions: frozenset[int]
    report: CompileReport

    def static_inputs(self, gm: torch.fx.GraphModule) -> frozenset[str]:
        """Names of ``gm``'s placeholders that hold parameters or buffers."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        return frozenset(placeholders[i].name for i in self.static_positions if i < len(placeholders))


def attach(gm: torch.fx.GraphModule, facts: GraphFacts) -> None:
    gm.meta[_KEY] = facts


def facts_of(gm: torch.fx.GraphModule) -> GraphFacts:
    try:
        return gm.meta[_KEY]
    except KeyError:
        raise RuntimeError("ascend_bi passes run inside the pipeline (passes.pipeline.run_pipeline)") from None


def source_line(node: torch.fx.Node) -> str:
    """``file:line (code)`` of the user code that produced ``node``.

    Dynamo records no stack for code inside torch's own modules (a bare ``nn.Linear``); then the
    innermost module on ``nn_module_stack`` names where the node came from.  '' when neither is known.
    """
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File "):
            parts = lines[i].split(",")
            where = f"{parts[0][5:].strip(chr(34))}:{parts[1].strip().removeprefix('line ')}"
            code = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{where} ({code})" if code else where
    modules = list((node.meta.get("nn_module_stack") or {}).values())
    if modules:
        path, kind = modules[-1]
        kind_name = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
        return f"module {path or '<root>'} ({kind_name})"
    return ""
