"""Run ``PIPELINE`` over one graph: facts in, report out, dumps when asked.

With ``dump_dir`` set, each graph gets a folder holding, per pass, the graph before and after as
readable Python (``NN_<pass>.before.py`` / ``.after.py``) and a ``summary.json`` with the report.
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch.fx

from ascend_compile.passes import PIPELINE
from ascend_compile.passes.graph_facts import GraphFacts, attach
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings

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
    finally:
        if folder:
            _write(folder, "summary.json", json.dumps(report.as_dict(), indent=2, default=str))
            logger.info("ascend_bi: graph %s dumped to %s", report.graph, folder)
    return report


def _write(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)
