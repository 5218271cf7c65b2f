"""Build aten graphs the way the executors see them (fake-tensor metadata on every node)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx

from ascend_compile import devices
from ascend_compile.passes.graph_facts import GraphFacts, attach
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings


def aten_graph(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor,
               static_positions: frozenset[int] = frozenset(), parameter_positions: frozenset[int] = frozenset(),
               decompose: tuple[object, ...] = (), executor: str = "fx") -> torch.fx.GraphModule:
    """``fn`` traced to aten ops (``decompose``: ops written out as Inductor's decompositions do),
    functionalized as AOTAutograd does: an input ``fn`` mutates is written back by a ``copy_`` at the end."""
    table = select_decomp_table()
    gm = make_fx(torch.func.functionalize(fn), decomposition_table={op: table[op] for op in decompose},
                 tracing_mode="fake")(*inputs)
    report = CompileReport(graph="test_graph", device="cpu", executor=executor)
    attach(gm, GraphFacts(device=devices.detect(inputs), static_positions=static_positions | parameter_positions,
                          report=report, parameter_positions=parameter_positions))
    return gm


def after_passes(gm: torch.fx.GraphModule, *passes: Callable[..., int]) -> torch.fx.GraphModule:
    """``gm`` after ``passes`` in order, dead code removed; ``gm.count``: the last pass's count."""
    settings = Settings()
    for run in passes:
        gm.count = run(gm, settings)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def targets(gm: torch.fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def repeat_kv(x: torch.Tensor, times: int) -> torch.Tensor:
    """transformers' repeat_kv: (B, Hkv, L, D) -> (B, Hkv * times, L, D) by expand + reshape."""
    b, h, length, d = x.shape
    return x[:, :, None, :, :].expand(b, h, times, length, d).reshape(b, h * times, length, d)
