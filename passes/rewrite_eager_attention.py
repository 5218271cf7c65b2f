"""Rewrite attention written out as matmul -> softmax -> matmul into the attention template.

With ``attn_implementation="eager"`` transformers computes attention as two batched matmuls
around a softmax.  The matmul and softmax templates already make that batch-invariant (and a
decode step equal to its prefill: masked keys add exact zeros after the visible ones), but they
write the (queries x keys) score matrix out three times in three launches, and read every key
once per query head after repeat_kv copied them.  The attention template does it in one pass
with the scores in registers and reads each key/value head once per group.  This pass runs
before ``rewrite_matmul`` and ``rewrite_softmax`` so that it sees their aten ops.

Matches (the softmax fused, as the ``fx`` executor sees it, or decomposed into amax, sub, exp,
sum, div, as Inductor's graphs carry it; views, reshapes, no-op expands and clones between the
ops, dtype conversions around the softmax, GQA's repeat_kv)::

    bmm = torch.ops.aten.bmm.default(view(expand(q)), view(expand(transpose(k, 2, 3))))
    scores = torch.ops.aten.add.Tensor(torch.ops.aten.mul.Tensor(view(bmm), scale), mask)
    probs = torch.ops.aten._softmax.default(scores, -1, False)

or with a boolean mask selecting a fill (nanoGPT's ``masked_fill``, as ``canonicalize_masks`` writes it)::

    scores = torch.ops.aten.where.self(mask, torch.ops.aten.full.default([], -inf), view(bmm) * scale)
    out = view(torch.ops.aten.bmm.default(view(expand(probs)), view(expand(v))))

Rewrites to (a selected fill: the mask negated, its fill the template's ``masked_score``)::

    out = torch.ops.ascend_bi.attention.default(q, k, v, mask, False, None, False, scale)
    out = torch.ops.ascend_bi.attention.default(q, k, v, torch.ops.aten.logical_not.default(mask), False, scale,
                                                False, None, -inf)

Only chains whose intermediate results have no other users (e.g. no ``output_attentions``) are
rewritten; anything else stays with the matmul and softmax templates, still batch-invariant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, Match, PatternMatcherPass, register_graph_pattern

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.repeat_kv import unrepeated
from ascend_compile.passes.replace import RESHAPES, call, planned_floats, same_shape, shape_of, sole_user, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
prims = torch.ops.prims
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_rewrite_eager_attention")

_CONVERT = prims.convert_element_type.default


@dataclass
class _Attention:
    query: torch.fx.Node
    key: torch.fx.Node
    value: torch.fx.Node
    mask: torch.fx.Node | None
    scale: float | None
    scale_tensor: torch.fx.Node | None
    output: torch.fx.Node
    #: A boolean mask's score where it is False (a selected fill); None for additive masks.
    masked_score: float | None = None
    #: The boolean mask is True where the fill goes (``where(mask, fill, scores)``): keep its negation.
    negate: bool = False


def _is_identity(node: torch.fx.Node) -> bool:
    """A node that passes its first input's elements on unchanged (maybe reshaped)."""
    if node.op != "call_function":
        return False
    if node.target in RESHAPES:
        return True
    source = node.args[0] if node.args else None
    if node.target is aten.expand.default or node.target is aten.slice.Tensor:
        return same_shape(shape_of(source), shape_of(node))
    return False


def _source_4d(node: torch.fx.Node, shape: tuple[object, ...]) -> torch.fx.Node | None:
    """Walk down from a bmm operand through identity ops to the earliest node of ``shape``
    holding its elements."""
    while not same_shape(shape_of(node), shape):
        if not isinstance(node, torch.fx.Node) or not _is_identity(node) or not sole_user(node):
            return None
        node = node.args[0]
    while _is_identity(node) and sole_user(node) and same_shape(shape_of(node.args[0]), shape):
        node = node.args[0]
    return node


def _strip_converts(node: torch.fx.Node) -> torch.fx.Node:
    while node.op == "call_function" and node.target is _CONVERT and sole_user(node):
        node = node.args[0]
    return node


def _softmax_input(probs: torch.fx.Node) -> torch.fx.Node | None:
    """``x`` when ``probs`` is ``softmax(x, -1)``, fused or as amax/sub/exp/sum/div."""
    node = _strip_converts(probs)
    if node.op != "call_function" or not sole_user(node):
        return None
    rank = len(shape_of(node) or ())
    if node.target is aten._softmax.default:
        return node.args[0] if node.args[1] in (-1, rank - 1) and not node.args[2] else None
    if node.target is not aten.div.Tensor:
        return None
    exp, total = node.args
    if not (isinstance(exp, torch.fx.Node) and exp.target is aten.exp.default and len(exp.users) == 2
            and isinstance(total, torch.fx.Node) and total.target is aten.sum.dim_IntList and sole_user(total)
            and total.args[0] is exp and list(total.args[1]) in ([-1], [rank - 1]) and total.args[2:] == (True,)):
        return None
    sub = exp.args[0]
    if sub.target is not aten.sub.Tensor or not sole_user(sub):
        return None
    x, amax = sub.args
    if not (isinstance(amax, torch.fx.Node) and amax.target is aten.amax.default and sole_user(amax)
            and amax.args[0] is x and list(amax.args[1]) in ([-1], [rank - 1]) and amax.args[2:] == (True,)):
        return None
    return x if len(x.users) == 2 else None


def _scale(node: torch.fx.Node) -> tuple[torch.fx.Node, float | None, torch.fx.Node | None] | None:
    """Split ``node`` into (unscaled scores, constant scale, CPU scalar-tensor scale)."""
    if node.target not in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar) or not sole_user(node):
        return node, None, None
    scores, factor = node.args
    divide = node.target in (aten.div.Tensor, aten.div.Scalar)
    if isinstance(factor, (int, float)):
        return scores, (1.0 / factor if divide else float(factor)), None
    if isinstance(factor, torch.fx.Node) and factor.target is aten.full.default and shape_of(factor) == ():
        return scores, (1.0 / factor.args[1] if divide else float(factor.args[1])), None
    val = value(factor)
    if not divide and isinstance(val, torch.Tensor) and val.dim() == 0 and val.device.type == "cpu":
        return scores, None, factor
    return None


def _qk(node: object) -> tuple[torch.fx.Node, float | None, torch.fx.Node | None] | None:
    """(bmm of q and k, scale, scale tensor) when ``node`` is the scaled 4-D view of that bmm."""
    scaled = _scale(node) if isinstance(node, torch.fx.Node) else None
    if scaled is None:
        return None
    node, scale, scale_tensor = scaled
    if not (_is_identity(node) and sole_user(node)):
        return None
    bmm = node.args[0]
    if bmm.target is not aten.bmm.default or not sole_user(bmm):
        return None
    return bmm, scale, scale_tensor


@dataclass(frozen=True)
class _Scores:
    qk: torch.fx.Node
    mask: torch.fx.Node | None
    scale: float | None
    scale_tensor: torch.fx.Node | None
    masked_score: float | None = None
    negate: bool = False


def _fill(node: object) -> float | None:
    """The number a 0-dim ``full`` holds (the fill of a canonical masked fill)."""
    if isinstance(node, torch.fx.Node) and node.target is aten.full.default and list(node.args[0]) == []:
        return float(node.args[1])
    return None


def _scores(x: torch.fx.Node) -> _Scores | None:
    """The bmm of q and k, the mask (additive, or boolean with the fill it selects) and the scale, for the
    softmax input ``x``."""
    node = x  # its users are the softmax's own ops
    while node.target is _CONVERT and (node is x or sole_user(node)):
        node = node.args[0]
    found = _qk(node)
    if found is not None:
        return _Scores(found[0], None, found[1], found[2])
    if not (node is x or sole_user(node)) or len(node.args) not in (2, 3):
        return None
    if node.target is aten.where.self:  # canonicalize_masks' select: where(mask, fill, s) or where(keep, s, fill)
        cond, a, b = node.args
        for fill, scores, negate in ((a, b, True), (b, a, False)):
            # -inf only: the template adds the fill to the score, which is the fill itself only for -inf
            found = _qk(scores) if _fill(fill) == float("-inf") else None
            if found is not None and value(cond).dtype == torch.bool:
                return _Scores(found[0], cond, found[1], found[2], _fill(fill), negate)
        return None
    if node.target is not aten.add.Tensor or len(node.args) != 2:
        return None
    for scores, mask in (node.args, node.args[::-1]):
        found = _qk(scores)
        if found is not None and isinstance(mask, torch.fx.Node):
            return _Scores(found[0], mask, found[1], found[2])
    return None


def _key(k3: torch.fx.Node, shape: tuple[object, ...]) -> torch.fx.Node | None:
    """The (B, H, Lk, D) key under ``view(expand(transpose(k, 2, 3)))``; ``shape`` is (B, H, D, Lk)."""
    transposed = _source_4d(k3, shape)
    if transposed is None or not sole_user(transposed):
        return None
    if transposed.target is aten.transpose.int and sorted(a % 4 for a in transposed.args[1:3]) == [2, 3]:
        return transposed.args[0]
    if transposed.target is aten.permute.default and [d % 4 for d in transposed.args[1]] == [0, 1, 3, 2]:
        return transposed.args[0]
    return None


def _match(pv: torch.fx.Node) -> _Attention | None:
    """Read an eager attention off the probabilities-times-values bmm, or None."""
    if len(pv.users) != 1:
        return None
    (output,) = pv.users
    out_shape = shape_of(output)
    if not (output.op == "call_function" and output.target in RESHAPES and out_shape and len(out_shape) == 4):
        return None
    batch, heads, lq, dv = out_shape
    p3, v3 = pv.args
    lk = shape_of(p3)[-1]
    probs = _source_4d(p3, (batch, heads, lq, lk))
    v = _source_4d(v3, (batch, heads, lk, dv))
    x = _softmax_input(probs) if probs is not None else None
    scores = _scores(x) if x is not None else None
    if v is None or scores is None:
        return None
    qk, mask = scores.qk, scores.mask
    q3, k3 = qk.args
    d = shape_of(q3)[-1]
    q = _source_4d(q3, (batch, heads, lq, d))
    k = _key(k3, (batch, heads, d, lk))
    if q is None or k is None or not planned_floats(q, k, v):
        return None
    mask_shape = shape_of(mask) if mask is not None else ()
    selected = scores.masked_score is not None
    if mask is not None and (mask_shape is None or len(mask_shape) > 4
                             or not (value(mask).dtype.is_floating_point or selected)):
        return None
    return _Attention(q, unrepeated(k), unrepeated(v), mask, scores.scale, scores.scale_tensor, output,
                      scores.masked_score, scores.negate)


def _supported(match: Match) -> bool:
    return _match(match.output_node()) is not None


def _rewrite(match: Match, *_: object, **__: object) -> None:
    found = _match(match.output_node())
    assert found is not None
    graph, mask = found.output.graph, found.mask
    if found.negate:  # the template keeps keys where a boolean mask is True
        mask = call(graph, found.output, aten.logical_not.default, (mask,))
    new = call(graph, found.output, torch.ops.ascend_bi.attention.default,
               (found.query, found.key, found.value, mask, False, found.scale, False, found.scale_tensor,
                found.masked_score))
    swap(found.output, new)


register_graph_pattern(
    CallFunction(aten.bmm.default, KeywordArg("probs"), KeywordArg("values")),
    pass_dict=_PATTERNS, extra_check=_supported,
)(_rewrite)


def rewrite_eager_attention(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every matmul-softmax-matmul attention it can read; returns how many."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("rewrite_eager_attention: %d eager attentions now use the attention template", count)
    return count
