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
    #: Positions of the parameters among them (``nn.Parameter``): weights, never written by a kernel.
    parameter_positions: frozenset[int] = frozenset()

    def static_inputs(self, gm: torch.fx.GraphModule) -> frozenset[str]:
        """Names of ``gm``'s placeholders that hold parameters or buffers."""
        return _names(gm, self.static_positions)

    def parameters(self, gm: torch.fx.GraphModule) -> frozenset[str]:
        """Names of ``gm``'s placeholders that hold parameters."""
        return _names(gm, self.parameter_positions)


def _names(gm: torch.fx.GraphModule, positions: frozenset[int]) -> frozenset[str]:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return frozenset(placeholders[i].name for i in positions if i < len(placeholders))


#: Ops whose output is a view of their first argument (how a weight reaches a matmul).
_VIEWS = frozenset({torch.ops.aten.permute.default, torch.ops.aten.t.default, torch.ops.aten.transpose.int,
                    torch.ops.aten.slice.Tensor,
                    torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default,
                    torch.ops.aten.expand.default, torch.ops.aten.alias.default})


def is_weight(node: torch.fx.Node, parameters: frozenset[str]) -> bool:
    """Whether ``node`` views a parameter (a placeholder in ``parameters``) that no node of the graph
    writes: a kernel may then read it while the kernel before it still runs."""
    while node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    return node.op == "placeholder" and node.name in parameters and not _written(node)


def _written(node: torch.fx.Node) -> bool:
    """Whether a node writes ``node`` or a view of it in place (an op whose schema marks that
    argument written, or an op wrapped by ``auto_functionalized``)."""
    for user in node.users:
        if user.op != "call_function":
            continue
        if user.target in _VIEWS and _written(user):
            return True
        schema = getattr(user.target, "_schema", None)
        if schema is None:  # a higher-order op (auto_functionalized): assume it writes what it takes
            return True
        args = list(user.args) + [user.kwargs.get(a.name) for a in schema.arguments[len(user.args):]]
        if any(value is node and a.alias_info is not None and a.alias_info.is_write
               for a, value in zip(schema.arguments, args, strict=False)):
            return True
    return False


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
