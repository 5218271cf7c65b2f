"""Fuse the query and key RMSNorms of a layer into one launch.

Models with query/key norms (Qwen3, OLMo 2, Gemma 3) normalise every head of the query and of the
key projection right after the projections.  At decode sizes each norm is a launch of ~2 µs over
a few hundred rows of one head; ``ascend_bi::rms_norm_pair`` runs both over their rows in one
launch, each row computed as ``ascend_bi::rms_norm`` computes it, so the bits do not change.

Two ``rms_norm`` nodes pair when their inputs are views of outputs of one node (the query/key/
value group of ``fuse_sibling_matmuls``, or one projection split by ``split``), with one row
length, dtype and rounding form (``NormForm``), and weights; each keeps its epsilon.

Matches::

    rms_norm = torch.ops.ascend_bi.rms_norm.default(view, q_weight, 1e-06)
    rms_norm_1 = torch.ops.ascend_bi.rms_norm.default(view_1, k_weight, 1e-06)

Rewrites to::

    rms_norm_pair = torch.ops.ascend_bi.rms_norm_pair.default([view, view_1], [q_weight, k_weight], [1e-06, 1e-06],
                                                                [None, None], 0)
    rms_norm = rms_norm_pair[0]
    rms_norm_1 = rms_norm_pair[1]
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.replace import CASTS, VIEWS, call, hoist, swap_items, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
#: Ops between a projection's output and the per-head view a norm reads.
_VIEWS = (*VIEWS, aten.transpose.int, aten.permute.default, operator.getitem)


def _producer(x: object) -> torch.fx.Node | None:
    """The node whose output(s) ``x`` is a view of (through getitems of a multi-output node)."""
    if not isinstance(x, torch.fx.Node):
        return None
    while x.op == "call_function" and x.target in _VIEWS:
        x = x.args[0]
    return x


def _eps_tensor(norm: torch.fx.Node) -> object:
    """The epsilon's tensor: Dynamo lifts each module's epsilon to a graph input of its own."""
    return norm.args[3] if len(norm.args) > 3 else norm.kwargs.get("eps_tensor")


def form_of(norm: torch.fx.Node) -> int:
    """The norm's ``NormForm`` flags (where it rounds)."""
    return norm.args[4] if len(norm.args) > 4 else norm.kwargs.get("form", 0)


def _key(norm: torch.fx.Node) -> tuple[object, ...] | None:
    """What paired norms share: producer, row length, dtype, whether the epsilon is a tensor, rounding form."""
    x, weight = norm.args[:2]
    producer, val = _producer(x), value(x)
    if producer is None or not isinstance(weight, torch.fx.Node) or not isinstance(val, torch.Tensor):
        return None
    return producer, str(val.shape[-1]), val.dtype, _eps_tensor(norm) is None, form_of(norm)


def fuse_sibling_norms(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Pair the query and key norms of each layer into one launch; returns how many pairs."""
    siblings: dict[tuple[object, ...], list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is bi.rms_norm.default:
            key = _key(node)
            if key is not None:
                siblings[key].append(node)
    order = {node: float(i) for i, node in enumerate(gm.graph.nodes)}
    count = 0
    for nodes in siblings.values():
        for first, second in zip(nodes[::2], nodes[1::2], strict=False):
            if not (hoist(second.args[0], first, order, _VIEWS) and hoist(second.args[1], first, order, ())):
                continue
            tensors = [_eps_tensor(first), _eps_tensor(second)]
            if not hoist(tensors[1], first, order, CASTS):  # a lifted epsilon's casts move with it
                continue
            pair = call(gm.graph, first, bi.rms_norm_pair.default,
                        ([first.args[0], second.args[0]], [first.args[1], second.args[1]],
                         [first.args[2], second.args[2]], tensors, form_of(first)))
            swap_items((first, second), pair)
            count += 1
    logger.debug("fuse_sibling_norms: %d pairs of norms share a launch", count)
    return count
