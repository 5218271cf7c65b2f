"""Fuse a norm whose output joins the residual stream with the norm of the sum after it.

Gemma 2 and 3 (and other "sandwich" layers) normalize a sublayer's output before adding it to the
residual stream, and normalize the sum for the next sublayer: ``rms_norm`` of the attention output,
then ``add_rms_norm`` of the stream and that output.  Two launches over the same rows, the first
storing a row the second reads back at once.  ``ascend_bi::rms_norm_sandwich`` computes both per
row in one launch (``bi_rms_norm_sandwich``): the first norm with the row plan ``rms_norm`` uses and
its roundings, added to the stream, the sum normalized as ``add_rms_norm`` does, so the bits do
not change.  The first norm's output is never stored.

A pair fuses when the first norm is used only by the add, has a weight and rounds in a form
without a residual of its own (``WEIGHT_FORMS``), and the second norm's sum rounds to the
stream's dtype (no ``FP32_SUM`` or ``FP32_RESIDUAL``); both share the row length and dtype.

Matches (the normed output in either operand of the add)::

    rms_norm = torch.ops.ascend_bi.rms_norm.default(attn_out, post_weight, 1e-06, None, 3)
    add_rms_norm = torch.ops.ascend_bi.add_rms_norm.default(residual, rms_norm, pre_weight, 1e-06, None, 3)

Rewrites to::

    add_rms_norm = torch.ops.ascend_bi.rms_norm_sandwich.default(residual, attn_out, post_weight, 1e-06, None, 3,
                                                                 pre_weight, 1e-06, None, 3)
"""

from __future__ import annotations

import logging

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.kernels.rms_norm import WEIGHT_FORMS, NormForm
from ascend_compile.passes.replace import arguments, call, same_shape, shape_of, sole_user, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

bi = torch.ops.ascend_bi
_SUM_FORMS = NormForm.FP32_SUM | NormForm.FP32_RESIDUAL


def _first_norm(node: object, stream: object) -> tuple[object, ...] | None:
    """``(x, weight, eps, eps_tensor, form)`` of ``node`` when it is a norm that can join ``stream``'s add."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is bi.rms_norm.default
            and sole_user(node)):
        return None
    args = arguments(node)
    x, weight, form = args["x"], args["weight"], args["form"]
    same_rows = same_shape(shape_of(x), shape_of(stream)) and value(x).dtype == value(stream).dtype
    if weight is None or form & ~WEIGHT_FORMS or not same_rows:
        return None
    return x, weight, args["eps"], args["eps_tensor"], form


def fuse_sandwich_norms(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Fuse every norm that feeds only the residual add of a following norm; returns how many."""
    count = 0
    for add in list(gm.graph.nodes):
        if add.op != "call_function" or add.target is not bi.add_rms_norm.default:
            continue
        args = arguments(add)
        if args["form"] & _SUM_FORMS:
            continue
        for stream, normed in (add.args[:2], add.args[1::-1]):
            first = _first_norm(normed, stream)
            if first is None:
                continue
            fused = call(gm.graph, add, bi.rms_norm_sandwich.default,
                         (stream, *first, args["weight"], args["eps"], args["eps_tensor"], args["form"]))
            add.replace_all_uses_with(fused)
            gm.graph.erase_node(add)
            gm.graph.erase_node(normed)
            count += 1
            break
    logger.debug("fuse_sandwich_norms: %d norms joined the norm of the residual sum after them", count)
    return count
