"""Write every masked fill as the select it is: ``where(mask, fill, x)``.

Attention masks reach a graph as ``masked_fill`` (nanoGPT's ``att.masked_fill(bias == 0, -inf)``), as
``where`` (Inductor's decomposition of it, and models that write ``torch.where``), or as an additive
mask (transformers).  ``masked_fill(x, mask, v)`` and ``where(mask, v, x)`` select the same element
from the same two values, so the bits are the same and ``rewrite_eager_attention`` reads the select
one way in the ``fx`` and ``inductor`` executors' graphs alike.

Matches::

    masked_fill = torch.ops.aten.masked_fill.Scalar(x, mask, -inf)

Rewrites to::

    full = torch.ops.aten.full.default([], -inf, dtype=torch.float32, device=x.device)
    masked_fill = torch.ops.aten.where.self(mask, full, x)
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ascend_compile.passes.replace import call, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten


def canonicalize_masks(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Rewrite every ``masked_fill`` of a floating tensor by a number as ``where``; returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.masked_fill.Scalar or node.kwargs:
            continue
        x, mask, fill = node.args
        val = value(x)
        if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point or not isinstance(fill, (int, float)):
            continue
        full = call(gm.graph, node, aten.full.default, ([], fill), {"dtype": val.dtype, "device": val.device})
        swap(node, call(gm.graph, node, aten.where.self, (mask, full, x)))
        count += 1
    logger.debug("canonicalize_masks: %d masked fills written as where", count)
    return count
