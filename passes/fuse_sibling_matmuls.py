"""Fuse two matmuls of one activation by weights of one shape into one launch.

A decoder layer multiplies the same normalised activation by the gate and the up weights, and by
the key and the value weights.  At decode sizes each product is a few microseconds of weight
reads behind a launch; ``ascend_bi::mm_pair`` does both in one launch (the two weights are the
launch's batch, addressed by their distance in memory, nothing copied), with each product's own
plan, so the bits are those of the two ``ascend_bi::mm``.  NPU graphs keep separate launches (their
persistent schedule is not paired yet).

Matches::

    mm = torch.ops.ascend_bi.mm.default(x, permute)
    mm_1 = torch.ops.ascend_bi.mm.default(x, permute_1)

Rewrites to::

    mm_pair = torch.ops.ascend_bi.mm_pair.default(x, permute, permute_1)
    mm = mm_pair[0]
    mm_1 = mm_pair[1]
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.replace import call, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
#: Ops through which two linear layers see one activation (each makes its own view of it).
_ACTIVATION_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
#: Ops a weight operand may pass through on its way from the graph input (moved with it).
_WEIGHT_VIEWS = (aten.permute.default, aten.t.default, aten.transpose.int, aten.view.default,
                 aten.reshape.default, aten._unsafe_view.default)


def _layout(t: torch.Tensor) -> tuple[str, str]:
    """Shape and strides as a hashable key (symbolic extents by their expressions)."""
    return str(tuple(t.shape)), str(t.stride())


def _weight_key(b: object) -> tuple[object, ...] | None:
    val = value(b)
    if not isinstance(b, torch.fx.Node) or not isinstance(val, torch.Tensor) or val.dim() != 2:
        return None
    return _layout(val), val.dtype, val.device


def _hoist(node: torch.fx.Node, before: torch.fx.Node, order: dict[torch.fx.Node, int]) -> bool:
    """Make ``node`` come before ``before``, moving its chain of views if needed; False if it can't."""
    if order[node] < order[before]:
        return True
    if node.op != "call_function" or node.target not in _WEIGHT_VIEWS:
        return False
    if not all(_hoist(a, before, order) for a in node.all_input_nodes):
        return False
    before.prepend(node)
    order[node] = order[before] - 0.5
    return True


def _activation_key(a: object) -> tuple[object, ...] | None:
    """The activation as (the node its views start from, shape, strides): each linear layer views
    the same hidden states on its own, so equal keys mean equal values."""
    val = value(a)
    if not isinstance(a, torch.fx.Node) or not isinstance(val, torch.Tensor):
        return None
    root = a
    while root.op == "call_function" and root.target in _ACTIVATION_VIEWS:
        root = root.args[0]
    return root, _layout(val)


def _pairs(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """Sibling ``mm`` nodes without bias, two by two in graph order."""
    siblings: dict[tuple[object, ...], list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is bi.mm.default and (len(node.args) < 3 or node.args[2] is None):
            a, b = _activation_key(node.args[0]), _weight_key(node.args[1])
            if a is not None and b is not None:
                siblings[(*a, *b)].append(node)
    return [(nodes[i], nodes[i + 1]) for nodes in siblings.values() for i in range(0, len(nodes) - 1, 2)]


def fuse_sibling_matmuls(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Pair up every two matmuls of one activation by same-shaped weights; returns how many pairs."""
    if facts_of(gm).device.plan_kind == "npu":
        return 0
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    count = 0
    for first, second in _pairs(gm):
        if not _hoist(second.args[1], first, order):
            continue
        pair = call(gm.graph, first, bi.mm_pair.default, (first.args[0], first.args[1], second.args[1]))
        for index, old in enumerate((first, second)):
            with gm.graph.inserting_after(pair):
                item = gm.graph.call_function(operator.getitem, (pair, index))
            item.meta.update(old.meta)
            swap(old, item)
        count += 1
    logger.debug("fuse_sibling_matmuls: %d matmul pairs share a launch", count)
    return count
