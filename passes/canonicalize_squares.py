"""Write every square of a tensor one way: ``pow(x, 2)``.

Models square their activations as ``x.pow(2)`` (transformers, vLLM), ``x * x`` (hand-written
norms), ``x ** 2`` or ``torch.square(x)``.  Traced, the first, third and fourth are already
``pow.Tensor_Scalar(x, 2)``; ``x * x`` is ``mul.Tensor(x, x)``.  Both are one product of ``x`` with
itself, rounded once (eager's and Inductor's ``pow`` by 2 is that product), so the bits are the
same and every pass that reads a square -- RMSNorm's fusion first -- needs to know one form.

Matches::

    mul = torch.ops.aten.mul.Tensor(x, x)

Rewrites to::

    mul = torch.ops.aten.pow.Tensor_Scalar(x, 2)
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ascend_compile.passes.replace import call, swap
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten


def canonicalize_squares(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Rewrite every ``x * x`` of a floating tensor to ``pow(x, 2)``; returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mul.Tensor or len(node.args) != 2 or node.kwargs:
            continue
        x, y = node.args
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if x is not y or not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
            continue
        swap(node, call(gm.graph, node, aten.pow.Tensor_Scalar, (x, 2)))
        count += 1
    logger.debug("canonicalize_squares: %d products of a tensor with itself written as pow(x, 2)", count)
    return count
