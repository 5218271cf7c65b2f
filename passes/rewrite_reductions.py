"""Rewrite order-sensitive sums into batch-invariant row templates.

A stock reduction kernel may split a row's sum differently at different batch sizes (Inductor's
split reductions, vendor kernels tuned by shape).  Decomposed norms (``pow -> mean -> rsqrt``),
decomposed softmax (``amax -> sub -> exp -> sum -> div``) and Inductor's lowering of layer norm
(``var_mean``) all come down to these ops, so rewriting them covers every form those take; the
elementwise ops and casts around them are left exactly as they were.

Matches::

    mean = torch.ops.aten.mean.dim(pow_1, [-1], True)
    var_mean = torch.ops.aten.var_mean.correction(x, [-1], correction=0, keepdim=True)
    var = torch.ops.aten.var.correction(x, [1])

Rewrites to::

    mean = torch.ops.ascend_bi.sum.default(pow_1, [-1], True, None, True)
    var_mean = torch.ops.ascend_bi.var_mean.default(x, [-1], 0.0, True)
    var_mean_1 = torch.ops.ascend_bi.var_mean.default(x, [1], 1.0, False)
    var = operator.getitem(var_mean_1, 0)

Also ``sum`` (with or without dims), ``mean`` (without dims), ``std`` (square root of the variance),
``logsumexp`` and ``cumsum`` (samplers' top-p).  Integer sums are exact and stay; float64 has no plan and is reported.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx
from torch._inductor.pattern_matcher import CallFunctionVarArgs, Match, PatternMatcherPass, register_graph_pattern

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.replace import arguments, call, planned_floats, swap
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_rewrite_reductions")

_SUMS = {aten.sum.dim_IntList: False, aten.sum.default: False, aten.mean.dim: True, aten.mean.default: True}
_VARIANCES = (aten.var.correction, aten.var_mean.correction, aten.std.correction)


def _float_reduction(match: Match) -> bool:
    """Input has a plan; a requested output dtype, if any, too."""
    args = arguments(match.output_node())
    return planned_floats(args["self"]) and (args.get("dtype") is None or planned_floats(match.output_node()))


def _dims(args: dict) -> list[int]:
    return list(args.get("dim") or [])


def _rewrite_sum(match: Match, *_: object, **__: object) -> None:
    node = match.output_node()
    args = arguments(node)
    keepdim = bool(args.get("keepdim", False))
    new = call(node.graph, node, bi.sum.default,
               (args["self"], _dims(args), keepdim, args.get("dtype"), _SUMS[node.target]))
    swap(node, new)


def _rewrite_variance(match: Match, *_: object, **__: object) -> None:
    node = match.output_node()
    args = arguments(node)
    correction = args.get("correction")
    stats = call(node.graph, node, bi.var_mean.default,
                 (args["self"], _dims(args), 1.0 if correction is None else float(correction),
                  bool(args.get("keepdim", False))))
    if node.target == aten.var_mean.correction:
        swap(node, stats)
        return
    var = call(node.graph, node, operator.getitem, (stats, 0))
    swap(node, call(node.graph, node, aten.sqrt.default, (var,)) if node.target == aten.std.correction else var)


def _rewrite_logsumexp(match: Match, *_: object, **__: object) -> None:
    node = match.output_node()
    args = arguments(node)
    swap(node, call(node.graph, node, bi.logsumexp.default, (args["self"], _dims(args), bool(args["keepdim"]))))


def _rewrite_cumsum(match: Match, *_: object, **__: object) -> None:
    node = match.output_node()
    args = arguments(node)
    swap(node, call(node.graph, node, bi.cumsum.default, (args["self"], args["dim"], args.get("dtype"))))


for _target in _SUMS:
    register_graph_pattern(CallFunctionVarArgs(_target), pass_dict=_PATTERNS, extra_check=_float_reduction)(
        _rewrite_sum)
for _target in _VARIANCES:
    register_graph_pattern(CallFunctionVarArgs(_target), pass_dict=_PATTERNS, extra_check=_float_reduction)(
        _rewrite_variance)
register_graph_pattern(CallFunctionVarArgs(aten.logsumexp.default), pass_dict=_PATTERNS,
                       extra_check=_float_reduction)(_rewrite_logsumexp)
register_graph_pattern(CallFunctionVarArgs(aten.cumsum.default), pass_dict=_PATTERNS,
                       extra_check=_float_reduction)(_rewrite_cumsum)


def rewrite_reductions(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every float sum/mean/var/std/var_mean/logsumexp/cumsum; returns how many were replaced."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("rewrite_reductions: %d reductions now batch-invariant", count)
    return count



