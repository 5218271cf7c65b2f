"""Rewrite aten matrix products into the batch-invariant ``ascend_bi`` templates.

Stock matmuls (cuBLAS, oneDNN, aclnn) pick their algorithm -- and with it the order in which K is
summed -- from the number of rows, so one request's bits depend on its batch.  After lowering,
``nn.Linear`` and ``torch.matmul`` reach the graph as ``mm``/``addmm``/``bmm`` (weights as a
``permute``/``t`` view, which the template reads by strides).

Matches::

    mm = torch.ops.aten.mm.default(x, permute)
    addmm = torch.ops.aten.addmm.default(bias, x, permute)
    bmm = torch.ops.aten.bmm.default(q, k)

Rewrites to::

    mm = torch.ops.ascend_bi.mm.default(x, permute)
    addmm = torch.ops.ascend_bi.mm.default(x, permute, bias)
    bmm = torch.ops.ascend_bi.bmm.default(q, k)

and, when ``permute`` views a parameter the graph never writes, ``mm(x, permute, bias, True)``: the
template may read that weight before the kernel ahead of it ends.

Only float16/bfloat16/float32 operands of one dtype match, and ``addmm`` only with the default
``beta = alpha = 1``; anything else stays stock and ``verify_batch_invariance`` reports it.
"""

from __future__ import annotations

import logging

import torch
import torch.fx
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, Match, PatternMatcherPass, register_graph_pattern

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.graph_facts import facts_of, is_weight
from ascend_compile.passes.replace import call, planned_floats, swap
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_rewrite_matmul")


def _supported(match: Match) -> bool:
    return planned_floats(*match.kwargs.values())


def _supported_addmm(match: Match) -> bool:
    """As ``_supported``, and ``beta = alpha = 1`` (the pattern matcher does not compare them)."""
    node = match.output_node()
    return node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1 and _supported(match)


def _replace(match: Match, target: torch._ops.OpOverload, args: tuple[torch.fx.Node | None, ...]) -> None:
    old = match.output_node()
    swap(old, call(old.graph, old, target, args))


def _replace_mm(match: Match, a: torch.fx.Node, b: torch.fx.Node, bias: torch.fx.Node | None) -> None:
    """``ascend_bi::mm``, told when ``b`` is a weight (``graph_facts.is_weight``)."""
    if is_weight(b, facts_of(match.graph.owning_module).parameters(match.graph.owning_module)):
        _replace(match, torch.ops.ascend_bi.mm.default, (a, b, bias, True))
    else:
        _replace(match, torch.ops.ascend_bi.mm.default, (a, b) if bias is None else (a, b, bias))


@register_graph_pattern(
    CallFunction(aten.mm.default, KeywordArg("a"), KeywordArg("b")),
    pass_dict=_PATTERNS, extra_check=_supported,
)
def _mm(match: Match, a: torch.fx.Node, b: torch.fx.Node) -> None:
    _replace_mm(match, a, b, None)


@register_graph_pattern(
    CallFunction(aten.addmm.default, KeywordArg("bias"), KeywordArg("a"), KeywordArg("b")),
    pass_dict=_PATTERNS, extra_check=_supported_addmm,
)
def _addmm(match: Match, bias: torch.fx.Node, a: torch.fx.Node, b: torch.fx.Node) -> None:
    _replace_mm(match, a, b, bias)


@register_graph_pattern(
    CallFunction(aten.bmm.default, KeywordArg("a"), KeywordArg("b")),
    pass_dict=_PATTERNS, extra_check=_supported,
)
def _bmm(match: Match, a: torch.fx.Node, b: torch.fx.Node) -> None:
    _replace(match, torch.ops.ascend_bi.bmm.default, (a, b))


def rewrite_matmul(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every supported mm/addmm/bmm; returns how many were replaced."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("rewrite_matmul: %d matrix products now batch-invariant", count)
    return count
