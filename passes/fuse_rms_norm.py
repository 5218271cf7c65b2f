"""Fuse a written-out RMSNorm (and the residual add before it) into one template.

After ``rewrite_reductions`` an RMSNorm is an elementwise prologue, the row template's mean and
an elementwise epilogue: three launches where a decode step spends most of its time launching.
``ascend_bi::rms_norm`` does the same arithmetic with the same roundings in one launch;
``ascend_bi::add_rms_norm`` also takes the residual add that feeds it (and returns the sum, the
next residual).  The mean's order stays the row plan's, so the fusion changes no bits.

Models round their norms at different points, and each form keeps its own roundings as the
kernel's ``NormForm`` flags: transformers' Llama/Qwen (weight times the rounded value, the
residual sum rounded), Gemma (``(1 + w)`` times the fp32 value, one rounding), torch's
``_fused_rms_norm`` decomposition (weight times the fp32 value), vLLM's ``forward_native``
(residual added in fp32, the norm reading the unrounded sum; with the residual stream kept in fp32, as
Inductor leaves vLLM's graph when it drops the sum's round trip through bf16).

Matches (``_to_copy`` in place of ``convert_element_type`` in ``fx``-executor graphs; no
converts in float32 models; the weight on either side, or none; the residual add optional)::

    h = torch.ops.aten.add.Tensor(residual, x)
    h32 = torch.ops.prims.convert_element_type.default(h, torch.float32)
    pow_1 = torch.ops.aten.pow.Tensor_Scalar(h32, 2)
    mean = torch.ops.ascend_bi.sum.default(pow_1, [-1], True, None, True)
    rsqrt = torch.ops.aten.rsqrt.default(torch.ops.aten.add.Tensor(mean, 1e-06))
    y = torch.ops.prims.convert_element_type.default(torch.ops.aten.mul.Tensor(h32, rsqrt), torch.bfloat16)
    out = torch.ops.aten.mul.Tensor(weight, y)

and the other forms' tails (``1 + w`` optional; the sum under ``FP32_SUM``)::

    out = torch.ops.prims.convert_element_type.default(torch.ops.aten.mul.Tensor(normed, torch.ops.aten.add.Tensor(
        torch.ops.prims.convert_element_type.default(weight, torch.float32), 1)), torch.bfloat16)
    h32 = torch.ops.aten.add.Tensor(torch.ops.prims.convert_element_type.default(x, torch.float32),
                                    torch.ops.prims.convert_element_type.default(residual, torch.float32))

Rewrites to (``form``: the ``NormForm`` flags)::

    add_rms_norm = torch.ops.ascend_bi.add_rms_norm.default(residual, x, weight, 1e-06, None, 0)
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
from ascend_compile.kernels.plans import FLOAT_DTYPES
from ascend_compile.kernels.rms_norm import NormForm
from ascend_compile.passes.replace import (
    CASTS,
    VIEWS,
    call,
    converted_to,
    hoist,
    hoistable,
    same_shape,
    shape_of,
    sole_user,
    swap,
    value,
)
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
_PATTERNS = PatternMatcherPass(pass_name="ascend_bi_fuse_rms_norm")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
#: Ops an input of the fused launch may be moved up through (a lifted epsilon's cast, a weight's views).
_MOVABLE = (*CASTS, *VIEWS)


@dataclass
class _Norm:
    x: torch.fx.Node
    residual: tuple[torch.fx.Node, torch.fx.Node] | None
    weight: torch.fx.Node | None
    #: The epsilon, or the CPU scalar tensor holding it (a graph input under ``dynamic=True``).
    eps: float | torch.fx.Node
    output: torch.fx.Node
    #: ``NormForm`` flags: where this model's norm rounds.
    form: NormForm = NormForm.LLAMA
    #: Under ``FP32_SUM``, the casts of the fp32 sum to the input dtype: the next residual (under
    #: ``FP32_RESIDUAL``, whatever reads the fp32 sum besides the norm).
    sum_casts: tuple[torch.fx.Node, ...] = ()
    #: The residual add whose place the fused launch takes (``x``, or the fp32 sum under ``FP32_SUM``).
    anchor: torch.fx.Node | None = None


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


@dataclass(frozen=True)
class _Input:
    x: torch.fx.Node
    residual: tuple[torch.fx.Node, torch.fx.Node] | None
    form: NormForm
    sum_casts: tuple[torch.fx.Node, ...] = ()
    anchor: torch.fx.Node | None = None


def _input(h32: torch.fx.Node, norm_users: set[torch.fx.Node]) -> _Input | None:
    """What the norm normalizes, read off ``h32``, its fp32 input (used by ``norm_users``, the square and the
    normalizing product): a low-precision tensor upcast, an fp32 tensor, or (vLLM) the fp32 sum of two
    upcast low-precision tensors, whose rounded copies are the next residual."""
    if _dtype(h32) != torch.float32:
        return None
    x = converted_to(h32, torch.float32)
    if x is not None:  # the upcast is the norm's own
        return _Input(x, _residual(x), NormForm.LLAMA) if _dtype(x) in _LOW_PRECISION and set(h32.users) == norm_users \
            else None
    summed = _residual(h32)
    terms = [converted_to(t, torch.float32) for t in summed] if summed else []
    if terms and all(t is not None and _dtype(t) in _LOW_PRECISION for t in terms) and _dtype(terms[0]) == \
            _dtype(terms[1]) and same_shape(shape_of(terms[0]), shape_of(terms[1])):
        casts = tuple(u for u in h32.users if u not in norm_users)
        if all(converted_to(c, _dtype(terms[0])) is h32 for c in casts):
            return _Input(terms[0], (terms[0], terms[1]), NormForm.FP32_SUM, casts, h32)
    upcast = next((i for i, t in enumerate(terms) if t is not None and _dtype(t) in _LOW_PRECISION), None)
    if upcast is not None:  # an fp32 residual stream: a low-precision term upcast, the sum read in fp32 after the norm
        return _Input(terms[upcast], (terms[upcast], summed[1 - upcast]), NormForm.FP32_SUM | NormForm.FP32_RESIDUAL,
                      tuple(u for u in h32.users if u not in norm_users), h32)
    return _Input(h32, summed, NormForm.LLAMA)  # a float32 input: the norm reads it, others may too


def _fp32_weight(w: object, n: object) -> tuple[torch.fx.Node, NormForm] | None:
    """(weight, flags) when ``w``, multiplying the fp32 normalized value, is a weight: ``(n,)``, upcast or
    not, or ``1 + weight`` in fp32 (Gemma)."""
    form = NormForm.WEIGHT_FP32
    if isinstance(w, torch.fx.Node) and w.target in (aten.add.Tensor, aten.add.Scalar) and 1 in w.args[:2] \
            and not w.kwargs and _dtype(w) == torch.float32:
        w, form = _other(w, 1), form | NormForm.WEIGHT_PLUS_ONE
    if not isinstance(w, torch.fx.Node) or not same_shape(shape_of(w), (n,)) or _dtype(w) not in FLOAT_DTYPES:
        return None
    return converted_to(w, torch.float32) or w, form


def _output(normed: torch.fx.Node, dtype: torch.dtype, n: object) -> tuple[torch.fx.Node | None, torch.fx.Node,
                                                                           NormForm] | None:
    """(weight, output, flags) of the norm after its fp32 normalized value ``normed``, for inputs of ``dtype``."""
    down = _sole(normed, *CASTS)
    if dtype in _LOW_PRECISION and down is not None:  # rounded, then weighted in the input dtype
        if converted_to(down, dtype) is not normed:
            return None
        return (*_weight(down, n, dtype), NormForm.LLAMA)
    scaled = _sole(normed, aten.mul.Tensor)
    found = _fp32_weight(_other(scaled, normed), n) if scaled is not None else None
    if found is None:
        return (None, normed, NormForm.LLAMA) if dtype == torch.float32 else None
    weight, form = found
    if dtype == torch.float32:
        return weight, scaled, form
    out = _sole(scaled, *CASTS)
    return (weight, out, form) if out is not None and converted_to(out, dtype) is scaled else None


def _weight(y: torch.fx.Node, n: object, dtype: torch.dtype) -> tuple[torch.fx.Node | None, torch.fx.Node]:
    """(weight, output): the elementwise weight ``y`` is multiplied by, if any."""
    scaled = _sole(y, aten.mul.Tensor)
    if scaled is None:
        return None, y
    weight = _other(scaled, y)
    if isinstance(weight, torch.fx.Node) and _dtype(weight) == dtype and same_shape(shape_of(weight), (n,)):
        return weight, scaled
    return None, y


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
    read = _input(h32, {square, normed})
    written = _output(normed, _dtype(read.x), shape_of(read.x)[-1]) if read is not None else None
    if written is None and read is not None and read.form & NormForm.FP32_RESIDUAL:  # the output stays fp32
        read = _Input(h32, _residual(h32), NormForm.LLAMA)
        written = _output(normed, torch.float32, shape_of(h32)[-1])
    if written is None:
        return None
    weight, output, form = written
    return _Norm(read.x, read.residual, weight, plus_eps.args[1], output, read.form | form, read.sum_casts,
                 read.anchor or read.x)


def _supported(match: Match) -> bool:
    """A norm was read, and under ``FP32_SUM`` its launch can take the sum's place (its operands are the
    sum's terms: without the residual fused it would have nothing to normalize)."""
    norm = _match(match.output_node())
    if norm is None:
        return False
    if not norm.form & NormForm.FP32_SUM:
        return True
    order = {node: i for i, node in enumerate(norm.anchor.graph.nodes)}
    return all(hoistable(n, norm.anchor, order, _MOVABLE) for n in (norm.weight, norm.eps))


def _rewrite(match: Match, *_: object, **__: object) -> None:
    norm = _match(match.output_node())
    assert norm is not None
    graph = norm.output.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    eps = (norm.eps, None) if isinstance(norm.eps, float) else (0.0, norm.eps)
    inputs = [n for n in (norm.weight, *eps) if isinstance(n, torch.fx.Node)]
    args = (norm.weight, *eps, int(norm.form))
    # A lifted epsilon's cast may sit after the residual add: it moves up with the launch when it can.
    if norm.residual is not None and all(hoist(n, norm.anchor, order, _MOVABLE) for n in inputs):
        fused = call(graph, norm.anchor, bi.add_rms_norm.default, (*norm.residual, *args))
        with graph.inserting_after(fused):
            out = graph.call_function(operator.getitem, (fused, 0))
            total = graph.call_function(operator.getitem, (fused, 1))
        out.meta["val"], total.meta["val"] = fused.meta["val"]
        swap(norm.output, out)
        if norm.form & NormForm.FP32_RESIDUAL:  # the fp32 sum's other readers read the launch's
            for user in norm.sum_casts:
                user.replace_input_with(norm.anchor, total)
            return
        for old in norm.sum_casts if norm.form & NormForm.FP32_SUM else (norm.x,):
            swap(old, total)
    else:
        swap(norm.output, call(graph, norm.output, bi.rms_norm.default, (norm.x, *args)))


register_graph_pattern(CallFunctionVarArgs(bi.sum.default), pass_dict=_PATTERNS, extra_check=_supported)(_rewrite)


def fuse_rms_norm(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every RMSNorm it can read by one template launch; returns how many."""
    count = _PATTERNS.apply(gm.graph)
    logger.debug("fuse_rms_norm: %d RMSNorms fused", count)
    return count
