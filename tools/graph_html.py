"""A self-contained HTML page of one rewritten graph: where invariance holds and where it does not.

The dumps' ``.py`` files say everything but hide the one question a user has: which nodes did
``ascend_bi`` replace, which order-sensitive reductions stayed stock, where do copies happen.
This page draws the final graph top to bottom in execution order (one row per node, edges as arcs
on the left), colours rewritten, uncovered and copy nodes, and lists the compile report and the
plan per template above it.  Inline SVG, CSS and a few lines of script only: no external
resources, so the file opens anywhere (CI artifacts, air-gapped machines) and can be attached to
a bug report as is.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from ascend_compile.ops.library import bi_op_of
from ascend_compile.passes.graph_facts import source_line
from ascend_compile.report import CompileReport

logger = logging.getLogger(__name__)

ROW = 24
GUTTER = 220
BOX_WIDTH = 620
SOURCE_X = GUTTER + BOX_WIDTH + 16

_CSS = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; }
table { border-collapse: collapse; margin: 4px 0 12px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
code, .mono, svg text { font-family: ui-monospace, monospace; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border: 1px solid #888; }
.rewritten rect, .legend .rewritten { fill: #c8efc8; background: #c8efc8; }
.uncovered rect, .legend .uncovered { fill: #f7b4b4; background: #f7b4b4; }
.copy rect, .legend .copy { fill: #ffd8a0; background: #ffd8a0; }
.input rect, .legend .input { fill: #e4e9f5; background: #e4e9f5; }
.output rect, .other rect { fill: #f7f7f7; }
.copies rect, .legend .copies { stroke: #d07000; stroke-width: 2.5; stroke-dasharray: 5 3; border-style: dashed; }
g.node rect { stroke: #888; rx: 3; }
g.node { cursor: pointer; }
g.node.selected rect { stroke: #000; stroke-width: 2.5; }
body.only-marked g.node.plain { opacity: 0.15; }
path.edge { fill: none; stroke: #9aa; stroke-width: 1; opacity: 0.6; }
text.source { fill: #777; }
#details { white-space: pre-wrap; background: #f4f4f4; padding: 6px; min-height: 2.8em; }
"""

_SCRIPT = """
(function () {
  var nodes = document.querySelectorAll("g.node");
  var details = document.getElementById("details");
  nodes.forEach(function (g) {
    g.addEventListener("click", function () {
      nodes.forEach(function (n) { n.classList.remove("selected"); });
      g.classList.add("selected");
      var d = g.dataset;
      details.textContent = d.name + " = " + d.target + "  " + d.shape + "\\n" + d.kind +
        (d.source ? "\\n" + d.source : "") + (d.note ? "\\n" + d.note : "");
    });
  });
  document.getElementById("only-marked").addEventListener("change", function (e) {
    document.body.classList.toggle("only-marked", e.target.checked);
  });
  document.body.dataset.ready = String(nodes.length);
})();
"""


@dataclass(frozen=True)
class NodeView:
    """One node as the page shows it."""

    name: str
    target: str
    shape: str
    source: str
    #: rewritten | uncovered | copy | input | output | other
    kind: str
    #: Extra words (the copy a template makes of its input, why a node is uncovered).
    note: str
    inputs: tuple[int, ...]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}[{', '.join(str(s) for s in value.shape)}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return "" if value is None else str(value)


def _target(node: torch.fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return f"get_attr {node.target}"
    if isinstance(node.target, (str, torch._ops.OpOverload)):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _copy_notes(gm: torch.fx.GraphModule, report: CompileReport) -> tuple[dict[str, str], dict[str, str]]:
    """Notes by node name: inserted clones (``fix_contiguity`` names the template and the operand
    it copied) and templates that copy their input themselves."""
    nodes = {node.name: node for node in gm.graph.nodes}
    clones: dict[str, str] = {}
    templates: dict[str, str] = {}
    for copy in report.copies:
        cost = f"{copy.bytes_per_call} bytes per call"
        if copy.inside_template:
            templates[copy.node] = f"copies {copy.operand} inside the template: {cost}"
            continue
        template = nodes.get(copy.node)
        for arg in template.all_input_nodes if template is not None else ():
            source = arg.args[0] if arg.target == torch.ops.aten.clone.default and arg.args else None
            if isinstance(source, torch.fx.Node) and source.name == copy.operand:
                clones[arg.name] = f"copy of {copy.operand} for {copy.node}: {cost}"
    return clones, templates


def node_views(gm: torch.fx.GraphModule, report: CompileReport) -> list[NodeView]:
    """The graph's nodes in execution order, each with its kind for highlighting."""
    uncovered = {u.node: u.reason for u in report.uncovered}
    clones, templates = _copy_notes(gm, report)
    index = {node: i for i, node in enumerate(gm.graph.nodes)}
    views = []
    for node in gm.graph.nodes:
        note = ""
        if node.name in uncovered:
            kind, note = "uncovered", uncovered[node.name]
        elif node.name in clones:
            kind, note = "copy", clones[node.name]
        elif bi_op_of(node) is not None:
            kind, note = "rewritten", templates.get(node.name, "")
        elif node.op in ("placeholder", "output"):
            kind = "input" if node.op == "placeholder" else "output"
        else:
            kind = "other"
        views.append(NodeView(name=node.name, target=_target(node), shape=_describe(node.meta.get("val")),
                              source=source_line(node), kind=kind, note=note,
                              inputs=tuple(index[n] for n in node.all_input_nodes)))
    return views


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _svg(views: list[NodeView]) -> str:
    height = ROW * len(views) + ROW
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{SOURCE_X + 700}" height="{height}" '
             f'viewBox="0 0 {SOURCE_X + 700} {height}">']
    for j, view in enumerate(views):
        for i in view.inputs:
            y0, y1 = ROW * i + ROW, ROW * j + ROW
            bend = GUTTER - min(GUTTER - 8, 12 + 4 * (j - i))
            parts.append(f'<path class="edge" d="M{GUTTER} {y0} C{bend} {y0} {bend} {y1} {GUTTER} {y1}"/>')
    for j, view in enumerate(views):
        y = ROW * j + ROW
        classes = ["node", view.kind] + (["copies"] if view.kind == "rewritten" and view.note else []) \
            + (["plain"] if view.kind in ("other", "input", "output") else [])
        label = f"{view.name} = {view.target}  {view.shape}"
        if len(label) > 84:
            label = label[:83] + "…"
        tooltip = "\n".join(x for x in (f"{view.name} = {view.target}  {view.shape}", view.kind, view.source,
                                        view.note) if x)
        parts.append(
            f'<g class="{" ".join(classes)}" id="node-{_attr(view.name)}" data-name="{_attr(view.name)}" '
            f'data-target="{_attr(view.target)}" data-shape="{_attr(view.shape)}" data-kind="{view.kind}" '
            f'data-source="{_attr(view.source)}" data-note="{_attr(view.note)}">'
            f"<title>{html.escape(tooltip)}</title>"
            f'<rect x="{GUTTER}" y="{y - ROW // 2 + 2}" width="{BOX_WIDTH}" height="{ROW - 4}"/>'
            f'<text x="{GUTTER + 6}" y="{y + 4}">{html.escape(label)}</text>'
            f'<text class="source" x="{SOURCE_X}" y="{y + 4}">{html.escape(view.source)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _link(name: str) -> str:
    return f'<a href="#node-{_attr(name)}">{html.escape(name)}</a>'


def render_graph_html(gm: torch.fx.GraphModule, report: CompileReport, plans: list[dict[str, Any]]) -> str:
    """The page for ``gm`` after the pipeline, with ``report`` and ``plans`` (``op_plans``) above it."""
    views = node_views(gm, report)
    counts = {kind: sum(v.kind == kind for v in views) for kind in ("rewritten", "uncovered", "copy")}
    verdict = "yes" if report.batch_invariant else "NO"
    esc = html.escape
    rewrites = _table(("pass", "rewrites"), [(esc(k), str(v)) for k, v in report.rewrites.items()], "no pass ran")
    uncovered = _table(("node", "op", "reason", "source"),
                       [(_link(u.node), esc(u.target), esc(u.reason), esc(u.source)) for u in report.uncovered],
                       "none: every order-sensitive reduction runs in a batch-invariant template")
    copies = _table(("template", "operand", "bytes per call", "where"),
                    [(_link(c.node), esc(c.operand), esc(c.bytes_per_call),
                      "inside the template" if c.inside_template else "inserted clone") for c in report.copies],
                    "none")
    plan_rows = _table(("node", "op", "extents", "dtype", "plan"),
                       [(_link(p["node"]), esc(p["op"]), esc(json.dumps(p["extents"])), esc(p["dtype"]),
                         f'<span class="mono">{esc(json.dumps(p["plan"]) if p["plan"] else p.get("note", ""))}</span>')
                        for p in plans], "no template nodes")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ascend_bi {esc(report.graph)}</title>
<style>{_CSS}</style></head>
<body data-ready="no">
<h1>ascend_bi {esc(report.graph)}</h1>
<p>device {esc(report.device)}, executor {esc(report.executor)}; {len(views)} nodes:
{counts["rewritten"]} rewritten, {counts["uncovered"]} uncovered, {counts["copy"]} inserted copies.
Batch-invariant by construction: <b>{verdict}</b>.</p>
<p class="legend"><span class="rewritten">rewritten (ascend_bi template)</span><span class="uncovered">uncovered
order-sensitive reduction</span><span class="copy">inserted copy</span><span class="copies">template copies its
input</span><span class="input">input</span></p>
<h2>Rewrites per pass</h2>{rewrites}
<h2>Uncovered reductions</h2>{uncovered}
<h2>Contiguity copies</h2>{copies}
<h2>Plan per template</h2>{plan_rows}
<h2>Graph</h2>
<p><label><input type="checkbox" id="only-marked"> dim nodes that are not highlighted</label>
(click a node for its details)</p>
<div id="details">no node selected</div>
{_svg(views)}
<script>{_SCRIPT}</script>
</body></html>
"""
