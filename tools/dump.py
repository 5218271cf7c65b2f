"""``ascend-bi dump TARGET``: compile a model with dumps on and say where everything went.

The backend already dumps each graph when ``dump_dir`` is set (``passes/pipeline.py``: per-pass
before/after code, ``summary.json``, ``graph.html``); this command runs a TARGET once under
``ascend_bi`` with that option, turns PyTorch's structured trace on into the same folder (so that
``tlparse`` shows our artifacts next to Dynamo's and Inductor's), and summarises what each graph
holds: rewrites per pass, reductions left stock with their source lines, copies with their bytes.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ascend_compile.report import clear_reports, reports
from ascend_compile.tools.targets import Target

logger = logging.getLogger(__name__)

TRACE_FOLDER = "torch_trace"


@contextmanager
def structured_trace(folder: str) -> Iterator[str]:
    """Write PyTorch's structured trace into ``folder`` for the duration, as ``TORCH_TRACE`` would;
    yields the folder the trace goes to.

    ``TORCH_TRACE`` is read when torch is imported, which happened before the CLI could set it, so
    the same handler is attached here.  When the user set ``TORCH_TRACE`` themselves, the trace
    already goes there and nothing is added.
    """
    if os.environ.get("TORCH_TRACE"):
        yield os.environ["TORCH_TRACE"]
        return
    from torch._logging._internal import LazyTraceHandler, TorchLogsFormatter, trace_log

    handler = LazyTraceHandler(folder)
    handler.setFormatter(TorchLogsFormatter(trace=True))
    trace_log.addHandler(handler)
    try:
        yield folder
    finally:
        trace_log.removeHandler(handler)
        handler.close()


def run_dump(target: Target, out: str, options: dict[str, Any],
             progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Compile and run ``target`` once under ``ascend_bi`` with dumps into ``out``; what was written."""
    os.makedirs(out, exist_ok=True)
    clear_reports()
    torch._dynamo.reset()
    compiled = torch.compile(target.model, backend="ascend_bi", options={**options, "dump_dir": out})
    progress(f"compiling {target.name} under ascend_bi (dumps into {out})")
    with structured_trace(os.path.join(out, TRACE_FOLDER)) as trace_folder, torch.no_grad():
        compiled(*target.example_inputs)
    graphs = []
    for report in reports():
        folder = os.path.join(out, report.graph)
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        graphs.append(summary | {"folder": folder, "files": sorted(os.listdir(folder))})
    traces = sorted(glob.glob(os.path.join(trace_folder, "*.log")))
    return {"target": target.name, "out": out, "graphs": graphs, "torch_trace": traces,
            "batch_invariant": all(g["batch_invariant"] for g in graphs)}


def format_dump(result: dict[str, Any]) -> str:
    lines = []
    for g in result["graphs"]:
        verdict = "batch-invariant by construction" if g["batch_invariant"] else "NOT batch-invariant"
        lines.append(f"{g['graph']} ({g['device']}, {g['executor']}): {verdict}")
        rewrites = ", ".join(f"{name} {count}" for name, count in g["rewrites"].items() if count)
        lines.append(f"  rewrites: {rewrites or 'none'}")
        for u in g["uncovered"]:
            lines.append(f"  left stock: {u['node']} ({u['target']})" + (f" at {u['source']}" if u["source"] else ""))
        for c in g["copies"]:
            where = "inside the template" if c["inside_template"] else "inserted clone"
            lines.append(f"  copy: {c['operand']} for {c['node']}, {c['bytes_per_call']} bytes per call ({where})")
        planned = sum(p["plan"] is not None for p in g["plans"])
        lines.append(f"  plans: {len(g['plans'])} templates, {planned} with a static plan (summary.json)")
        lines.append(f"  files: {g['folder']}/ (graph.html, summary.json, {len(g['files']) - 2} pass dumps)")
    if not result["graphs"]:
        lines.append("no graph was compiled (did the target run any torch ops?)")
    if result["torch_trace"]:
        lines.append(f"structured trace: {', '.join(result['torch_trace'])} (view with tlparse)")
    return "\n".join(lines)
