"""The ``ascend_bi`` torch.compile backend: settings, device, pipeline, executor.

``torch.compile(model, backend="ascend_bi", options={...})`` finds this function through the
``torch_dynamo_backends`` entry point, so nothing needs importing first.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops)
from ascend_compile import devices
from ascend_compile.executors import fx as fx_executor
from ascend_compile.executors import inductor as inductor_executor
from ascend_compile.graphs import graph_wrapper
from ascend_compile.passes.graph_facts import GraphFacts
from ascend_compile.report import CompileReport, record
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

_EXECUTORS = {"inductor": inductor_executor.compile_graph, "fx": fx_executor.compile_graph}
_graph_ids = itertools.count()
MODES = (None, "default")


def static_positions(example_inputs: Sequence[Any]) -> frozenset[int]:
    """Positions of the inputs that are parameters or buffers (Dynamo marks both)."""
    return frozenset(
        i for i, value in enumerate(example_inputs)
        if isinstance(value, torch.nn.Parameter) or getattr(value, "_dynamo_static_input_type", None)
    )


def graph_facts(example_inputs: Sequence[Any], device: devices.Device, report: CompileReport) -> GraphFacts:
    """What the passes learn about a graph from its inputs: the device, its parameters and buffers."""
    return GraphFacts(device=device, static_positions=static_positions(example_inputs), report=report,
                      parameter_positions=frozenset(i for i, value in enumerate(example_inputs)
                                                    if isinstance(value, torch.nn.Parameter)))


def _world_size() -> int:
    """Ranks of the default process group (tensor parallelism), 1 without one."""
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


def _require_inference(example_inputs: Sequence[Any]) -> None:
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs):
        raise RuntimeError(
            "ascend_bi compiles inference graphs only, and this graph would need a backward pass "
            "(grad mode is on and an input requires grad). Call the compiled model under "
            "torch.no_grad() or torch.inference_mode()."
        )


def ascend_bi(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
              options: dict[str, Any] | None = None, mode: str | None = None) -> Callable[..., Any]:
    """Compile ``gm`` so that every row's result is independent of the batch it runs in."""
    if mode not in MODES:
        raise ValueError(f"ascend_bi: mode={mode!r} is not supported; accepted values: None, 'default'")
    settings = Settings.from_options(options)
    _require_inference(example_inputs)
    device = devices.detect(example_inputs)
    devices.configure_collectives(device, _world_size())
    executor = device.default_executor if settings.executor == "auto" else settings.executor
    report = CompileReport(graph=f"graph_{next(_graph_ids):03d}", device=device.kind, executor=executor)
    facts = graph_facts(example_inputs, device, report)
    logger.info("ascend_bi: compiling %s (%d nodes) for %s with the %s executor",
                report.graph, len(gm.graph.nodes), device.kind, executor)
    wrap = graph_wrapper(gm, example_inputs, settings, device, facts.static_positions, report)
    compiled = wrap(_EXECUTORS[executor](gm, list(example_inputs), settings, facts))
    record(report)
    logger.info("ascend_bi: %s compiled: rewrites %s, %d uncovered reductions, %d copies",
                report.graph, report.rewrites, len(report.uncovered), len(report.copies))
    return compiled
