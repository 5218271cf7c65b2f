"""Write a merged projection whose output is cut into columns as one projection per cut.

vLLM multiplies a layer's activation by its query, key and value weights stacked in one
``qkv_proj`` and cuts the product with ``split``; it stacks gate and up in one ``gate_up_proj``
and halves the product (``SiluAndMul``); Phi-3 does both with slices and ``chunk``.  Other models
(transformers' Qwen3, Llama, hand-written ones) run one linear layer per projection.  Written per
projection, every later pass sees one form: ``fuse_sibling_matmuls`` groups the products of one
activation into one launch again (the weight slices lie side by side in memory, as before), and
``fuse_gated_activation`` finds the gate and up factors of ``act(gate) * up``.

A column of ``x @ W`` is ``x @ W[:, column]``: the template's reduction plan is a function of K
(and of the output width only where ``matmul_plan`` says so: the pass checks the plans agree), so
each column is summed in the same order either way and the bits are the same.

Matches (views that keep the last dim between the product and its cuts; ``addmm`` with its bias
cut alike; slices with step 1 on the last dim -- ``canonicalize_splits`` has written ``split`` and
``chunk`` as slices -- every use of the product one of them)::

    mm = torch.ops.aten.mm.default(x, permute)
    view = torch.ops.aten.view.default(mm, [2, 1, 3072])
    q = torch.ops.aten.slice.Tensor(view, -1, 0, 2048)

Rewrites to (one product per cut)::

    slice_1 = torch.ops.aten.slice.Tensor(permute, 1, 0, 2048)
    mm_1 = torch.ops.aten.mm.default(x, slice_1)
    q = torch.ops.aten.view.default(mm_1, [2, 1, 2048])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx

from ascend_compile.kernels.plans import UnsupportedPlan, matmul_plan
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.replace import VIEWS, arguments, call, planned_floats, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten


@dataclass(frozen=True)
class _Cut:
    """Columns ``[start, end)`` of the product, read by ``node`` through ``views`` (product first)."""

    node: torch.fx.Node
    start: int
    end: int
    views: tuple[torch.fx.Node, ...]


def _last_dim(node: torch.fx.Node, dim: int) -> bool:
    rank = value(node).dim()
    return dim in (-1, rank - 1)


def _cuts_of(source: torch.fx.Node, width: int, views: tuple[torch.fx.Node, ...]) -> list[_Cut] | None:
    """Every read of ``source`` (the product or a view of it with ``width`` last columns) as column cuts;
    None when something reads it otherwise."""
    cuts: list[_Cut] = []
    for user in source.users:
        if user.op != "call_function":
            return None
        if user.target in VIEWS and value(user).shape[-1] == width:
            found = _cuts_of(user, width, (*views, user))
        elif user.target is aten.slice.Tensor:
            found = _slice_cut(user, width, views)
        else:
            return None
        if found is None:
            return None
        cuts += found
    return cuts


def _slice_cut(node: torch.fx.Node, width: int, views: tuple[torch.fx.Node, ...]) -> list[_Cut] | None:
    args = arguments(node)
    if not _last_dim(node.args[0], args["dim"]) or args["step"] != 1:
        return None
    start, end = args["start"] or 0, width if args["end"] is None else min(args["end"], width)
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
        return None
    return [_Cut(node, start, end, views)]


def _same_plans(k: int, widths: set[int], dtype: torch.dtype, gm: torch.fx.GraphModule) -> bool:
    """Whether every width's matmul plan sums K as the full product's does (the bits stay the same)."""
    device = facts_of(gm).device
    try:
        return len({matmul_plan(k, n, dtype, device) for n in widths}) == 1
    except UnsupportedPlan:
        return False


def _split(gm: torch.fx.GraphModule, product: torch.fx.Node) -> bool:
    args = arguments(product)
    addmm = product.target is aten.addmm.default
    x, weight, bias = (args["mat1"], args["mat2"], args["self"]) if addmm else (args["self"], args["mat2"], None)
    out = value(product)
    if out.dim() != 2 or not isinstance(out.shape[1], int) or not planned_floats(x, weight, bias):
        return False
    if addmm and (args["beta"] != 1 or args["alpha"] != 1 or value(bias).dim() != 1):
        return False
    width = out.shape[1]
    cuts = _cuts_of(product, width, ())
    if not cuts or len(cuts) < 2 or any(c.end - c.start == width for c in cuts):
        return False
    spans = sorted((c.start, c.end) for c in cuts)
    if any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)):
        return False  # overlapping cuts would compute columns twice
    if not _same_plans(value(x).shape[1], {width} | {c.end - c.start for c in cuts}, out.dtype, gm):
        return False
    graph = gm.graph
    for cut in cuts:
        columns = (cut.start, cut.end)
        piece = call(graph, product, aten.slice.Tensor, (weight, 1, *columns))
        if bias is None:
            new = call(graph, product, aten.mm.default, (x, piece))
        else:
            bias_piece = call(graph, product, aten.slice.Tensor, (bias, 0, *columns))
            new = call(graph, product, aten.addmm.default, (bias_piece, x, piece))
        for view in cut.views:  # the same views, ending in the cut's width
            shape = list(view.args[1])
            shape[-1] = cut.end - cut.start
            new = call(graph, cut.node, view.target, (new, shape))
        swap(cut.node, new)
    return True  # the product, its views and splits are dead now: the pipeline's dead-code pass drops them


def split_merged_projections(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Write every product read only as column cuts as one product per cut; returns how many products."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (aten.mm.default, aten.addmm.default) and _split(gm, node):
            count += 1
    logger.debug("split_merged_projections: %d merged projections written as one product per cut", count)
    return count
