"""Run ``PIPELINE`` over one graph: facts in, report out, dumps when asked.

With ``dump_dir`` set, each graph gets a folder holding, per pass, the graph before and after as
readable Python (``NN_<pass>.before.py`` / ``.after.py``), a ``summary.json`` with the report and
the plan of every template node, and ``graph.html``, a self-contained view of the final graph.

The same artifacts go to PyTorch's structured trace (``TORCH_TRACE=folder``), so that ``tlparse``
shows them next to Dynamo's and Inductor's own for the same compile.  Without a trace handler
``trace_structured`` builds no payload, so this costs nothing when tracing is off.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch.fx
from torch._logging import trace_structured

from ascend_compile.passes import PIPELINE
from ascend_compile.passes.graph_facts import GraphFacts, attach
from ascend_compile.passes.op_plans import op_plans
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings
from ascend_compile.tools.graph_html import render_graph_html

logger = logging.getLogger(__name__)


def _graph_code(gm: torch.fx.GraphModule) -> str:
    return gm.print_readable(print_output=False, include_stride=True, include_device=True)


def run_pipeline(gm: torch.fx.GraphModule, settings: Settings, facts: GraphFacts) -> CompileReport:
    """Apply every enabled pass in order; returns the graph's report (strict errors propagate)."""
    attach(gm, facts)
    report = facts.report
    folder = os.path.join(settings.dump_dir, report.graph) if settings.dump_dir else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    _trace(f"ascend_bi_{report.graph}_input_graph", "string", lambda: _graph_code(gm))
    try:
        for i, graph_pass in enumerate(PIPELINE):
            name = graph_pass.__name__
            if name in settings.disable_passes:
                logger.info("pass %s disabled by settings", name)
                continue
            if folder:
                _write(folder, f"{i:02d}_{name}.before.py", _graph_code(gm))
            start = time.perf_counter()
            report.rewrites[name] = graph_pass(gm, settings)
            gm.graph.eliminate_dead_code()
            gm.graph.lint()
            gm.recompile()
            logger.debug("pass %s: %d in %.1f ms", name, report.rewrites[name], 1e3 * (time.perf_counter() - start))
            if folder:
                _write(folder, f"{i:02d}_{name}.after.py", _graph_code(gm))
            _trace(f"ascend_bi_{report.graph}_{i:02d}_{name}", "string", lambda: _graph_code(gm))
    finally:
        _finish(gm, facts, folder)
    return report


def summary(gm: torch.fx.GraphModule, facts: GraphFacts) -> dict[str, Any]:
    """The report of ``gm`` plus the plan of each template node (``op_plans``)."""
    return facts.report.as_dict() | {"plans": op_plans(gm, facts.device)}


def _finish(gm: torch.fx.GraphModule, facts: GraphFacts, folder: str | None) -> None:
    """Write the summary and the HTML view (also when a strict error is on its way)."""
    graph = facts.report.graph
    if folder:
        data = summary(gm, facts)
        _write(folder, "summary.json", json.dumps(data, indent=2, default=str))
        _write(folder, "graph.html", render_graph_html(gm, facts.report, data["plans"]))
        logger.info("ascend_bi: graph %s dumped to %s", graph, folder)
    _trace(f"ascend_bi_{graph}_summary", "json", lambda: json.dumps(summary(gm, facts), default=str))
    _trace(f"ascend_bi_{graph}_graph_html", "string",
           lambda: render_graph_html(gm, facts.report, op_plans(gm, facts.device)))


def _trace(name: str, encoding: str, payload: Callable[[], str]) -> None:
    """One structured-trace artifact; ``payload`` runs only when a trace is being written."""
    trace_structured("artifact", metadata_fn=lambda: {"name": name, "encoding": encoding}, payload_fn=payload)


def _write(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)
