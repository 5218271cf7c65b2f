"""Compute once, per step, a small value that several templates read through views of it.

A decoder step computes its rotary angles and its attention mask once, and every layer reads them,
each through its own ``unsqueeze``/``expand``.  Inductor runs our templates as fallback kernels
whose inputs must have exact strides (``ops/library.py``); a view of a value it has not stored yet
cannot be handed over as it is, so Inductor copies it per reader and recomputes the value inside
each copy: on an H200, Qwen3-0.6B's decode step ran one such kernel before every layer's attention
(28 launches of 1-1.7 us each, in the chain between the query/key/value projections and attention).

Inductor stores a value once it has been made to hold a fixed layout: ``prims.inductor_force_stride_order``
(the value's own strides) does that, and every view of it is then read in place.  The values are
the same, so are the bits.  Only under the Inductor executor (the ``fx`` executor would copy).

Matches a computed value (not an input, not a template's output) that two or more templates read,
directly or through views::

    cos = torch.ops.aten.cos.default(freqs)
    unsqueeze = torch.ops.aten.unsqueeze.default(cos, 1)
    rope_attention = torch.ops.ascend_bi.rope_attention.default(..., unsqueeze, ...)
    unsqueeze_1 = torch.ops.aten.unsqueeze.default(cos, 1)
    rope_attention_1 = torch.ops.ascend_bi.rope_attention.default(..., unsqueeze_1, ...)

Rewrites to::

    cos = torch.ops.aten.cos.default(freqs)
    stored = torch.ops.prims.inductor_force_stride_order.default(cos, [64, 64, 1])
    unsqueeze = torch.ops.aten.unsqueeze.default(stored, 1)
    ...
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

from ascend_compile.ops.library import bi_op_of
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

_STORE = torch.ops.prims.inductor_force_stride_order.default


def _is_view(node: torch.fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target.is_view


def _computed_base(node: torch.fx.Node) -> torch.fx.Node | None:
    """The value ``node`` views (itself if no view), when the graph computes it with stock ops."""
    while node.op == "call_function" and _is_view(node):
        node = node.args[0]
    if node.op != "call_function" or node.target in (_STORE, operator.getitem) or bi_op_of(node) is not None:
        return None
    return node if isinstance(node.meta.get("val"), torch.Tensor) else None


def share_computed_operands(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Store each computed value that several templates read once; returns how many."""
    if facts_of(gm).report.executor != "inductor":
        return 0
    readers: dict[torch.fx.Node, set[torch.fx.Node]] = {}
    for node in gm.graph.nodes:
        if bi_op_of(node) is None:
            continue
        for operand in node.all_input_nodes:
            base = _computed_base(operand)
            if base is not None:
                readers.setdefault(base, set()).add(node)
    shared = [base for base, templates in readers.items() if len(templates) > 1]
    for base in shared:
        with gm.graph.inserting_after(base):
            stored = gm.graph.call_function(_STORE, (base, list(base.meta["val"].stride())))
        stored.meta.update(base.meta)
        base.replace_all_uses_with(stored, delete_user_cb=lambda user, stored=stored: user is not stored)
    logger.debug("share_computed_operands: %d computed values stored once for the templates that read them",
                 len(shared))
    return len(shared)
