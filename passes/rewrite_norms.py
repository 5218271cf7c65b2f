"""Rewrite fused normalisation ops into batch-invariant templates.

``native_layer_norm`` reaches ``fx``-executor graphs whole (GPT-2, Phi and BERT-style models);
its mean and variance over the normalised dims are computed by the row template, the affine part
elementwise.  RMSNorm in transformers models is written out (``pow -> mean -> rsqrt -> mul``) and
is covered by ``rewrite_reductions``, which keeps the model's own casts exactly.

Matches::

    native_layer_norm = torch.ops.aten.native_layer_norm.default(x, [768], weight, bias, 1e-05)

Rewrites to::

    native_layer_norm = torch.ops.ascend_bi.layer_norm.default(x, [768], weight, bias, 1e-05)
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
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_rewrite_norms")


def _supported(match: Match) -> bool:
    return planned_floats(match.kwargs["x"])


@register_graph_pattern(
    CallFunction(aten.native_layer_norm.default, KeywordArg("x"), KeywordArg("shape"), KeywordArg("weight"),
                 KeywordArg("bias"), KeywordArg("eps")),
    pass_dict=_PATTERNS, extra_check=_supported,
)
def _layer_norm(match: Match, x: torch.fx.Node, shape: list[int], weight: torch.fx.Node | None,
                bias: torch.fx.Node | None, eps: float) -> None:
    node = match.output_node()
    swap(node, call(node.graph, node, torch.ops.ascend_bi.layer_norm.default, (x, shape, weight, bias, eps)))


def rewrite_norms(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every float ``native_layer_norm``; returns how many were replaced."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("rewrite_norms: %d norms now batch-invariant", count)
    return count
