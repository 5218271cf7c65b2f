"""Rewrite fused scaled-dot-product attention into the batch-invariant attention template.

Flash-decoding kernels pick how many pieces to split the keys into from batch x heads versus the
number of SMs, so a query's bits change with its batch; they also differ between prefill and
decode kernels.  The template splits keys by a fixed *size*, so neither happens.  Keys and values
that transformers' ``repeat_kv`` copied per query head are read before the copy (``repeat_kv``).  (Attention
written out as matmul-softmax-matmul is ``rewrite_eager_attention``'s.)

SDPA turns a boolean mask into an additive one at every call (``where(mask, 0, -inf)`` on the CPU;
``where(logical_not(mask), -inf, 0)`` on GPUs, -65504 for cuDNN): one such node per layer, one
kernel launch each.  The template takes the boolean mask itself with the score a masked key gets
(the bits of the additive mask), so the conversions go and one mask serves every layer.

Matches (whichever backend variant SDPA lowered to, when only the output is used and there is no
dropout)::

    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(q, k, v, 0.0, True, scale=0.25)
    getitem = sdpa[0]

Rewrites to::

    getitem = torch.ops.ascend_bi.attention.default(q, k, v, None, True, 0.25, True)

The output keeps the memory layout of the op it replaces (the CPU and flash kernels store it as
(batch, length, heads, dim)), because the graph downstream was traced on that layout.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx
from torch._inductor.pattern_matcher import CallFunctionVarArgs, Match, PatternMatcherPass, register_graph_pattern
from torch.fx.experimental.symbolic_shapes import guard_or_false

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.repeat_kv import unrepeated
from ascend_compile.passes.replace import UNSUPPORTED, arguments, call, planned_floats, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_rewrite_attention")

#: SDPA backend ops -> the name of their mask argument (None: the op takes no mask).
_VARIANTS = {
    aten._scaled_dot_product_flash_attention_for_cpu.default: "attn_mask",
    aten._scaled_dot_product_flash_attention.default: None,
    aten._scaled_dot_product_efficient_attention.default: "attn_bias",
    aten._scaled_dot_product_cudnn_attention.default: "attn_bias",
}


def _only_output_used(node: torch.fx.Node) -> bool:
    """Only output 0 is read (other outputs may have dead getitems, which tracing leaves)."""
    return all(u.target is operator.getitem and (u.args[1] == 0 or not u.users) for u in node.users)


def _unsupported(node: torch.fx.Node) -> str | None:
    """Why the template cannot replace this attention, or None when it can."""
    args = arguments(node)
    if float(args.get("dropout_p", 0.0)) != 0.0:
        return f"dropout_p={args['dropout_p']} (the template has no dropout; compile the model in eval mode)"
    if not _only_output_used(node):
        return "an output other than the attention (e.g. its logsumexp) is used"
    if not planned_floats(args["query"], args["key"], args["value"]):
        dtypes = sorted({str(value(args[n]).dtype) for n in ("query", "key", "value")})
        return f"query/key/value dtypes {', '.join(dtypes)} (supported: one of float32, bfloat16, float16)"
    if args["query"].meta["val"].dim() != 4:
        return "query is not 4-D (batch, heads, length, dim)"
    return None


def _supported(match: Match) -> bool:
    return _unsupported(match.output_node()) is None


def _constant(arg: object) -> float | None:
    """The value of a Python number or a 0-dim ``full``/``scalar_tensor`` node; None otherwise."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return float(arg)
    if isinstance(arg, torch.fx.Node) and arg.op == "call_function":
        if arg.target is aten.full.default and list(arg.args[0]) == []:
            return float(arg.args[1])
        if arg.target is aten.scalar_tensor.default:
            return float(arg.args[0])
    return None


#: ``torch.where`` overloads SDPA's mask conversion may trace to.
_WHERE = (aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)


def _boolean(mask: object) -> tuple[object, float | None]:
    """The boolean mask behind SDPA's conversion of it to an additive one, and the score a masked
    key gets (rounded as the conversion rounds it; None for -inf); else ``(mask, None)``.

    The conversion is ``where(mask, 0, -inf)`` on the CPU, ``where(logical_not(mask), -inf, 0)``
    on GPUs, with -65504 in place of -inf for cuDNN.
    """
    if not (isinstance(mask, torch.fx.Node) and mask.target in _WHERE):
        return mask, None
    condition, if_true, if_false = mask.args[:3]
    if isinstance(condition, torch.fx.Node) and condition.target is aten.logical_not.default:
        condition, if_true, if_false = condition.args[0], if_false, if_true
    score = _constant(if_false)
    if (not isinstance(condition, torch.fx.Node) or value(condition).dtype != torch.bool
            or _constant(if_true) != 0.0 or score is None):
        return mask, None
    score = torch.tensor(score, dtype=value(mask).dtype).item()
    return condition, None if score == float("-inf") else score


def _rewrite(match: Match, *_: object, **__: object) -> None:
    node = match.output_node()
    args = arguments(node)
    mask_name = _VARIANTS[node.target]
    mask, masked_score = _boolean(args.get(mask_name)) if mask_name else (None, None)
    out = node.meta["val"][0]
    # A Python bool (guarded on the hint when extents are symbolic): the op takes no symbolic flag.
    heads_inner = out.dim() == 4 and guard_or_false(out.shape[1] > 1) and guard_or_false(out.stride(1) < out.stride(2))
    key, values = unrepeated(args["key"]), unrepeated(args["value"])
    extra = () if masked_score is None else (None, masked_score)
    new = call(node.graph, node, torch.ops.ascend_bi.attention.default,
               (args["query"], key, values, mask, bool(args.get("is_causal", False)), args.get("scale"), heads_inner,
                *extra))
    for user in list(node.users):
        if user.args[1] == 0:
            swap(user, new)
        else:
            node.graph.erase_node(user)
    node.graph.erase_node(node)


for _target in _VARIANTS:
    register_graph_pattern(CallFunctionVarArgs(_target), pass_dict=_PATTERNS, extra_check=_supported)(_rewrite)


def rewrite_attention(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every supported fused attention; returns how many were replaced.  Those left get
    the reason in ``node.meta[UNSUPPORTED]`` for the verify pass to report."""
    count = _PATTERNS.apply(gm.graph)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _VARIANTS:
            node.meta[UNSUPPORTED] = _unsupported(node)
    logger.debug("rewrite_attention: %d attentions now batch-invariant", count)
    return count
