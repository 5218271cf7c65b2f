"""Rewrite fused softmax and log_softmax into the batch-invariant row template.

Graphs that keep softmax fused (the ``fx`` executor; attention written as matmul-softmax-matmul;
log-probabilities) carry ``_softmax``/``_log_softmax``, whose sum over the row a stock kernel may
order by shape.  (Inductor's own graphs decompose softmax; ``rewrite_reductions`` covers those.)

Matches::

    _softmax = torch.ops.aten._softmax.default(x, -1, False)
    _log_softmax = torch.ops.aten._log_softmax.default(logits, 1, False)

Rewrites to::

    _softmax = torch.ops.ascend_bi.softmax.default(x, -1, False)
    _log_softmax = torch.ops.ascend_bi.softmax.default(logits, 1, True)

``half_to_float=True`` (a 16-bit input with an fp32 result) is left for the verify pass to report.
"""

from __future__ import annotations

import logging

import torch
import torch.fx
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, Match, PatternMatcherPass, register_graph_pattern

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.replace import call, planned_floats, swap
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_rewrite_softmax")


def _supported(match: Match) -> bool:
    return match.kwargs["half_to_float"] is False and planned_floats(match.kwargs["x"])


def _rewrite(log: bool):
    def handler(match: Match, x: torch.fx.Node, dim: int, half_to_float: bool) -> None:
        node = match.output_node()
        swap(node, call(node.graph, node, torch.ops.ascend_bi.softmax.default, (x, dim, log)))

    return handler


for _target, _log in ((aten._softmax.default, False), (aten._log_softmax.default, True)):
    register_graph_pattern(
        CallFunction(_target, KeywordArg("x"), KeywordArg("dim"), KeywordArg("half_to_float")),
        pass_dict=_PATTERNS, extra_check=_supported,
    )(_rewrite(_log))


def rewrite_softmax(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every supported softmax/log_softmax; returns how many were replaced."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("rewrite_softmax: %d softmaxes now batch-invariant", count)
    return count
