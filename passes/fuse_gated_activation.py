"""Fuse a gated MLP's ``act(gate) * up`` into the launch that computes gate and up.

After ``fuse_sibling_matmuls`` the gate and up projections are one ``ascend_bi::mm_group``; the
activation and the product are one more elementwise launch per layer that reads both products
back.  ``ascend_bi::mm_gated`` computes a tile of both products in one program (each with its own
plan, so ``mm``'s bits) and combines them with the unfused ops' roundings: gate, up and the
activation rounded to the dtype.  Neither product is stored.

The activations as torch decomposes them (Inductor's graphs), in fp32 between converts to fp32
and back (no converts in fp32 models), every node used only on this path:

* ``silu`` (Llama, Qwen, Mistral, vLLM's ``SiluAndMul``): ``g32 / (1 + exp(-g32))``, or
  ``aten.silu`` as one op (eager's kernel has the decomposition's bits);
* ``gelu_tanh`` (Gemma's ``gelu_pytorch_tanh``, ``F.gelu(approximate="tanh")``):
  ``g32 * 0.5 * (tanh((g32 + g32**2 * g32 * 0.044715) * 0.7978845608028654) + 1)``, its cube
  as ``canonicalize_squares`` writes it.  ``aten.gelu`` as one op stays (eager's kernel rounds
  otherwise in a last place now and then), as does a GELU written otherwise (``pow(x, 3)``, other
  constants, the erf form).

Matches (reshapes optional; the factors and the group's two products in either order)::

    mm_group = torch.ops.ascend_bi.mm_group.default(x, [permute, permute_1])
    gate = mm_group[0]
    up = mm_group[1]
    silu = torch.ops.aten.silu.default(torch.ops.aten._unsafe_view.default(gate, [2, 1, 3072]))
    out = torch.ops.aten.mul.Tensor(silu, torch.ops.aten.view.default(up, [2, 1, 3072]))

Rewrites to::

    mm_gated = torch.ops.ascend_bi.mm_gated.default(x, permute, permute_1, "silu")
    out = torch.ops.aten.view.default(mm_gated, [2, 1, 3072])
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.replace import RESHAPES, call, converted_to, same_shape, shape_of, sole_user, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi


def _chain(node: object) -> list[torch.fx.Node] | None:
    """``[getitem, reshape, ...]`` from a two-weight group's output to ``node``, every node but
    ``node`` used only by the next; None when ``node`` is not such a chain."""
    chain: list[torch.fx.Node] = []
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and (not chain or sole_user(node)):
        chain.insert(0, node)
        if node.target is operator.getitem:
            group = node.args[0]
            is_pair = group.target is bi.mm_group.default and len(group.args[1]) == 2
            return chain if is_pair else None
        if node.target not in RESHAPES:
            return None
        node = node.args[0]
    return None


def _is(node: object, target: object) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is target


def _scaled(node: object, target: object, constant: float) -> torch.fx.Node | None:
    """``x`` when ``node`` is ``target(x, constant)`` or ``target(constant, x)`` used only once."""
    if not (_is(node, target) and sole_user(node) and len(node.args) == 2 and not node.kwargs):
        return None
    x, c = node.args if node.args[1] == constant else node.args[::-1]
    return x if c == constant and isinstance(x, torch.fx.Node) else None


def _in_fp32(node: torch.fx.Node, x32: torch.fx.Node) -> object | None:
    """The activation's input: ``x32`` itself in an fp32 model, else what ``x32`` converts to fp32
    from the activation's dtype, used only by that convert."""
    if value(x32).dtype != torch.float32:  # the kernel's activation is fp32 arithmetic
        return None
    x = converted_to(x32, torch.float32) or x32
    if x is x32:  # an fp32 model: no converts
        return x
    return x if sole_user(x) and value(x).dtype == value(node).dtype else None


def _silu_input(node: torch.fx.Node, out: torch.fx.Node) -> object | None:
    """``x`` when ``out`` (``node`` before its cast back) is ``x32 / (1 + exp(-x32))``."""
    if not (_is(out, aten.div.Tensor) and isinstance(out.args[1], torch.fx.Node) and sole_user(out.args[1])):
        return None
    x32, add = out.args
    exp = next((a for a in add.args if _is(a, aten.exp.default)), None) if _is(add, aten.add.Tensor) else None
    if exp is None or 1 not in add.args or not sole_user(exp):
        return None
    neg = exp.args[0]
    if not (_is(neg, aten.neg.default) and neg.args[0] is x32 and sole_user(neg) and set(x32.users) == {neg, out}):
        return None
    return _in_fp32(node, x32)


def _gelu_tanh_input(node: torch.fx.Node, out: torch.fx.Node) -> object | None:
    """``x`` when ``out`` (``node`` before its cast back) is ``x32 * 0.5 * (tanh((x32 + x32**2 * x32 *
    0.044715) * 0.7978845608028654) + 1)``."""
    if not (_is(out, aten.mul.Tensor) and len(out.args) == 2):
        return None
    for half, plus_one in (out.args, out.args[::-1]):
        x32, tanh = _scaled(half, aten.mul.Tensor, 0.5), _scaled(plus_one, aten.add.Tensor, 1)
        if x32 is None or not (_is(tanh, aten.tanh.default) and sole_user(tanh)):
            continue
        total = _scaled(tanh.args[0], aten.mul.Tensor, 0.7978845608028654)
        if not (_is(total, aten.add.Tensor) and sole_user(total) and x32 in total.args):
            continue
        cube = _scaled(total.args[1] if total.args[0] is x32 else total.args[0], aten.mul.Tensor, 0.044715)
        if not (_is(cube, aten.mul.Tensor) and sole_user(cube) and x32 in cube.args):
            continue
        square = cube.args[1] if cube.args[0] is x32 else cube.args[0]
        if not (_is(square, aten.pow.Tensor_Scalar) and sole_user(square) and square.args[0] is x32
                and square.args[1] == 2):
            continue
        if set(x32.users) == {half, total, cube, square}:
            return _in_fp32(node, x32)
    return None


def _activation_input(node: object) -> tuple[object, str] | None:
    """``(x, activation)`` when ``node`` is a ``GATED_ACTIVATIONS`` activation of ``x`` as the module
    docstring lists them, and ``x`` and the activation's nodes are used only by it."""
    if not isinstance(node, torch.fx.Node):
        return None
    if _is(node, aten.silu.default):
        return (node.args[0], "silu") if sole_user(node.args[0]) else None
    out = converted_to(node, value(node).dtype) or node  # bf16/fp16: the activation's result cast back
    if out is not node and not sole_user(out):
        return None
    for kind, read in (("silu", _silu_input), ("gelu_tanh", _gelu_tanh_input)):
        x = read(node, out)
        if x is not None:
            return x, kind
    return None


def _match(mul: torch.fx.Node) -> tuple[torch.fx.Node, int, list[torch.fx.Node], str] | None:
    """(the group, the gate's index in it, the up factor's chain, the activation) when ``mul`` is
    ``act(gate) * up`` of one group's two products."""
    for act, other in (mul.args, mul.args[::-1]):
        if not (isinstance(act, torch.fx.Node) and sole_user(act)):
            continue
        found = _activation_input(act)
        if found is None:
            continue
        gate_input, activation = found
        gate = _chain(gate_input)
        up = _chain(other) if isinstance(other, torch.fx.Node) and sole_user(other) else None
        if gate is None or up is None or not same_shape(shape_of(act), shape_of(other)):
            continue  # (equal shapes: no broadcasting, the product has the up factor's shape)
        (group, index), (up_group, up_index) = gate[0].args, up[0].args
        if group is up_group and index != up_index and value(mul).dtype == value(act).dtype:
            return group, index, up, activation
    return None


def fuse_gated_activation(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Fuse every ``act(gate) * up`` of a gate/up group; returns how many."""
    count = 0
    for mul in list(gm.graph.nodes):
        if mul.op != "call_function" or mul.target is not aten.mul.Tensor or len(mul.args) != 2:
            continue
        matched = _match(mul)
        if matched is None:
            continue
        group, gate_index, up, activation = matched
        x, weights = group.args
        fused = call(gm.graph, group, bi.mm_gated.default,
                     (x, weights[gate_index], weights[1 - gate_index], activation))
        if len(up) > 1:  # the up factor's reshapes now shape the fused product
            up[1].replace_input_with(up[0], fused)
        mul.replace_all_uses_with(up[-1] if len(up) > 1 else fused)
        gm.graph.erase_node(mul)
        count += 1
    logger.debug("fuse_gated_activation: %d gated activations fused into their matmuls", count)
    return count
