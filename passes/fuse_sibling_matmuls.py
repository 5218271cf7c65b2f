"""Fuse the matmuls of one activation (query, key, value; gate, up) into one launch.

A decoder layer multiplies the same normalised activation by the query, key and value weights,
and by the gate and up weights.  At decode sizes each product is a few microseconds of weight
reads behind a launch, too few tiles to fill the GPU; ``ascend_bi::mm_group`` runs up to three of
them as one matmul over the weights side by side (found by their distance in memory, nothing
copied), each with its own plan, so the bits are those of separate ``ascend_bi::mm``.  NPU graphs
keep separate launches (their persistent schedule does not take groups yet).

Matches (weights of one K and layout; all but the last 128-column aligned)::

    mm = torch.ops.ascend_bi.mm.default(x, permute)
    mm_1 = torch.ops.ascend_bi.mm.default(x, permute_1)
    mm_2 = torch.ops.ascend_bi.mm.default(x, permute_2)

Rewrites to::

    mm_group = torch.ops.ascend_bi.mm_group.default(x, [permute, permute_1, permute_2])
    mm = mm_group[0]
    mm_1 = mm_group[1]
    mm_2 = mm_group[2]
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.kernels.matmul import GROUP_COLUMNS, MAX_GROUP
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.replace import VIEWS, call, hoist, swap_items, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
#: Ops through which two linear layers see one activation (each makes its own view of it).
_ACTIVATION_VIEWS = VIEWS
#: Ops a weight operand may pass through on its way from the graph input (moved with it).
_WEIGHT_VIEWS = (aten.permute.default, aten.t.default, aten.transpose.int, aten.slice.Tensor, *VIEWS)


def _layout(t: torch.Tensor) -> tuple[str, str]:
    """Shape and strides as a hashable key (symbolic extents by their expressions)."""
    return str(tuple(t.shape)), str(t.stride())


def _weight_key(b: object) -> tuple[object, ...] | None:
    """K, strides, dtype and device: what weights launched side by side share (N may differ)."""
    val = value(b)
    if not isinstance(b, torch.fx.Node) or not isinstance(val, torch.Tensor) or val.dim() != 2:
        return None
    return str(val.shape[0]), str(val.stride()), val.dtype, val.device


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


def _columns(mm: torch.fx.Node) -> int | None:
    n = value(mm.args[1]).shape[1]
    return n if isinstance(n, int) else None


def _groups(gm: torch.fx.GraphModule) -> list[list[torch.fx.Node]]:
    """Sibling ``mm`` nodes without bias, in graph order, up to ``MAX_GROUP`` at a time; a group
    closes after a weight whose width is not ``GROUP_COLUMNS``-aligned."""
    siblings: dict[tuple[object, ...], list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is bi.mm.default and (len(node.args) < 3 or node.args[2] is None):
            a, b = _activation_key(node.args[0]), _weight_key(node.args[1])
            if a is not None and b is not None and _columns(node) is not None:
                siblings[(*a, *b)].append(node)
    groups: list[list[torch.fx.Node]] = []
    for nodes in siblings.values():
        current: list[torch.fx.Node] = []
        for node in nodes:
            if len(current) == MAX_GROUP or (current and _columns(current[-1]) % GROUP_COLUMNS):
                groups.append(current)
                current = []
            current.append(node)
        groups.append(current)
    return [group for group in groups if len(group) > 1]


def fuse_sibling_matmuls(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Group the matmuls of one activation into shared launches; returns how many groups."""
    if facts_of(gm).device.plan_kind == "npu":
        return 0
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    count = 0
    for nodes in _groups(gm):
        first = nodes[0]
        members = [first] + [node for node in nodes[1:] if hoist(node.args[1], first, order, _WEIGHT_VIEWS)]
        if len(members) < 2:
            continue
        group = call(gm.graph, first, bi.mm_group.default, (first.args[0], [node.args[1] for node in members]))
        swap_items(members, group)
        count += 1
    logger.debug("fuse_sibling_matmuls: %d groups of matmuls share a launch", count)
    return count
