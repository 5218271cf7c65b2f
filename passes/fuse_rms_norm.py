"""Fuse transformers' written-out RMSNorm (and the residual add before it) into one template.

After ``rewrite_reductions`` a Llama/Qwen RMSNorm is an elementwise prologue, the row template's
mean and an elementwise epilogue: three launches where a decode step spends most of its time
launching.  ``ascend_bi::rms_norm`` does the same arithmetic with the same roundings in one
launch; ``ascend_bi::add_rms_norm`` also takes the residual add that feeds it (and returns the
sum, the next residual).  The mean's order stays the row plan's, so the fusion changes no bits.

Matches (``_to_copy`` in place of ``convert_element_type`` in ``fx``-executor graphs; no
converts in float32 models; the weight on either side, or none; the residual add optional)::

    h = torch.ops.aten.add.Tensor(residual, x)
    h32 = torch.ops.prims.convert_element_type.default(h, torch.float32)
    pow_1 = torch.ops.aten.pow.Tensor_Scalar(h32, 2)
    mean = torch.ops.ascend_bi.sum.default(pow_1, [-1], True, None, True)
    rsqrt = torch.ops.aten.rsqrt.default(torch.ops.aten.add.Tensor(mean, 1e-06))
    y = torch.ops.prims.convert_element_type.default(torch.ops.aten.mul.Tensor(h32, rsqrt), torch.bfloat16)
    out = torch.ops.aten.mul.Tensor(weight, y)

Rewrites to::

    add_rms_norm = torch.ops.ascend_bi.add_rms_norm.default(residual, x, weight, 1e-06)
    out = add_rms_norm[0]
    h = add_rms_norm[1]
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
import torch.fx
from torch._inductor.pattern_matcher import CallFunctionVarArgs, Match, PatternMatcherPass, register_graph_pattern

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.replace import CASTS, call, converted_to, same_shape, shape_of, sole_user, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_fuse_rms_norm")
_LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class _Norm:
    x: torch.fx.Node
    residual: tuple[torch.fx.Node, torch.fx.Node] | None
    weight: torch.fx.Node | None
    #: The epsilon, or the CPU scalar tensor holding it (a graph input under ``dynamic=True``).
    eps: float | torch.fx.Node
    output: torch.fx.Node


def _dtype(node: object) -> torch.dtype | None:
    val = value(node)
    return val.dtype if isinstance(val, torch.Tensor) else None


def _sole(node: torch.fx.Node, *targets: object) -> torch.fx.Node | None:
    """``node``'s only user, when it calls one of ``targets``."""
    if not sole_user(node):
        return None
    (user,) = node.users
    return user if user.target in targets else None


def _other(node: torch.fx.Node, known: torch.fx.Node) -> object:
    """The operand of the binary ``node`` that is not ``known``."""
    a, b = node.args[:2]
    return b if a is known else a


def _weight(y: torch.fx.Node, n: object, dtype: torch.dtype) -> tuple[torch.fx.Node | None, torch.fx.Node]:
    """(weight, output): the elementwise weight ``y`` is multiplied by, if any."""
    scaled = _sole(y, aten.mul.Tensor)
    if scaled is None:
        return None, y
    weight = _other(scaled, y)
    if isinstance(weight, torch.fx.Node) and _dtype(weight) == dtype and same_shape(shape_of(weight), (n,)):
        return weight, scaled
    return None, y


def _residual(x: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """The two same-shape, same-dtype tensors ``x`` adds, if it is such an add."""
    if x.target is not aten.add.Tensor or len(x.args) != 2 or x.kwargs:
        return None
    a, b = x.args
    if all(isinstance(t, torch.fx.Node) and _dtype(t) == _dtype(x) and same_shape(shape_of(t), shape_of(x))
           for t in (a, b)):
        return a, b
    return None


def _is_eps(arg: object) -> bool:
    """A float, or a float CPU scalar tensor (Dynamo's lifted float attribute)."""
    if isinstance(arg, float):
        return True
    val = value(arg)
    return (isinstance(arg, torch.fx.Node) and isinstance(val, torch.Tensor) and val.dim() == 0
            and val.dtype.is_floating_point and val.device.type == "cpu")


def _match(mean: torch.fx.Node) -> _Norm | None:
    """Read an RMSNorm off its mean, or None."""
    dims, keepdim, dtype, is_mean = mean.args[1:5]
    square = mean.args[0]
    rank = len(shape_of(square) or ())
    if not (is_mean and keepdim and dtype is None and rank and [d % rank for d in dims] == [rank - 1]):
        return None
    if not (square.target is aten.pow.Tensor_Scalar and square.args[1] == 2 and sole_user(square)):
        return None
    h32 = square.args[0]
    plus_eps = _sole(mean, aten.add.Tensor, aten.add.Scalar)
    rsqrt = _sole(plus_eps, aten.rsqrt.default) if plus_eps is not None else None
    normed = _sole(rsqrt, aten.mul.Tensor) if rsqrt is not None else None
    if normed is None or not _is_eps(plus_eps.args[1]) or _other(normed, rsqrt) is not h32:
        return None
    if _dtype(h32) != torch.float32:
        return None
    x = converted_to(h32, torch.float32)
    y = normed
    if x is None:  # a float32 input: the norm reads it, others may too
        x = h32
    elif _dtype(x) in _LOW_PRECISION and set(h32.users) == {square, normed}:  # the upcast is the norm's own
        y = _sole(normed, *CASTS)
        if y is None or converted_to(y, _dtype(x)) is not normed:
            return None
    else:
        return None
    weight, output = _weight(y, shape_of(x)[-1], _dtype(x))
    return _Norm(x, _residual(x), weight, plus_eps.args[1], output)


def _supported(match: Match) -> bool:
    return _match(match.output_node()) is not None


def _rewrite(match: Match, *_: object, **__: object) -> None:
    norm = _match(match.output_node())
    assert norm is not None
    graph = norm.output.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    eps = (norm.eps, None) if isinstance(norm.eps, float) else (0.0, norm.eps)
    inputs = [n for n in (norm.weight, *eps) if isinstance(n, torch.fx.Node)]
    if norm.residual is not None and all(order[n] < order[norm.x] for n in inputs):
        fused = call(graph, norm.x, bi.add_rms_norm.default, (*norm.residual, norm.weight, *eps))
        with graph.inserting_after(fused):
            out = graph.call_function(operator.getitem, (fused, 0))
            total = graph.call_function(operator.getitem, (fused, 1))
        out.meta["val"], total.meta["val"] = fused.meta["val"]
        swap(norm.output, out)
        swap(norm.x, total)
    else:
        swap(norm.output, call(graph, norm.output, bi.rms_norm.default, (norm.x, norm.weight, *eps)))


register_graph_pattern(CallFunctionVarArgs(bi.sum.default), pass_dict=_PATTERNS, extra_check=_supported)(_rewrite)


def fuse_rms_norm(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every RMSNorm it can read by one template launch; returns how many."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("fuse_rms_norm: %d RMSNorms fused", count)
    return count
