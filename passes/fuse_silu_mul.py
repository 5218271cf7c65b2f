"""Fuse a gated MLP's ``silu(gate) * up`` into the launch that computes gate and up.

After ``fuse_sibling_matmuls`` the gate and up projections are one ``ascend_bi::mm_group``; the
SiLU and the product are one more elementwise launch per layer that reads both products back.
``ascend_bi::mm_silu_mul`` computes a tile of both products in one program (each with its own
plan, so ``mm``'s bits) and combines them with eager's roundings: gate, up and the SiLU rounded
to the dtype.  Neither product is stored.

Matches (reshapes optional, each node used only on this path; the factors and the group's two
products in either order; the SiLU as ``aten.silu`` or as Inductor decomposes it, with
``g32 / (1 + exp(-g32))`` between converts to fp32 and back, no converts in fp32 models)::

    mm_group = torch.ops.ascend_bi.mm_group.default(x, [permute, permute_1])
    gate = mm_group[0]
    up = mm_group[1]
    silu = torch.ops.aten.silu.default(torch.ops.aten._unsafe_view.default(gate, [2, 1, 3072]))
    out = torch.ops.aten.mul.Tensor(silu, torch.ops.aten.view.default(up, [2, 1, 3072]))

Rewrites to::

    mm_silu_mul = torch.ops.ascend_bi.mm_silu_mul.default(x, permute, permute_1)
    out = torch.ops.aten.view.default(mm_silu_mul, [2, 1, 3072])
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


def _silu_input(node: object) -> object | None:
    """``x`` when ``node`` is ``silu(x)``, written as one op or decomposed, and ``x`` and the
    SiLU's nodes are used only by it."""
    if _is(node, aten.silu.default):
        return node.args[0] if sole_user(node.args[0]) else None
    div = converted_to(node, value(node).dtype) or node  # bf16/fp16: the SiLU's result cast back
    if div is not node and not sole_user(div):
        return None
    if not (_is(div, aten.div.Tensor) and isinstance(div.args[1], torch.fx.Node) and sole_user(div.args[1])):
        return None
    x32, add = div.args
    exp = next((a for a in add.args if _is(a, aten.exp.default)), None) if _is(add, aten.add.Tensor) else None
    if exp is None or 1 not in add.args or not sole_user(exp):
        return None
    neg = exp.args[0]
    if not (_is(neg, aten.neg.default) and neg.args[0] is x32 and sole_user(neg) and set(x32.users) == {neg, div}):
        return None
    if value(x32).dtype != torch.float32:  # the kernel's SiLU is fp32 arithmetic
        return None
    x = converted_to(x32, torch.float32) or x32
    if x is x32:  # an fp32 model: no converts
        return x
    return x if sole_user(x) and value(x).dtype == value(node).dtype else None


def _match(mul: torch.fx.Node) -> tuple[torch.fx.Node, int, list[torch.fx.Node]] | None:
    """(the group, the gate's index in it, the up factor's chain) when ``mul`` is
    ``silu(gate) * up`` of one group's two products."""
    for silu, other in (mul.args, mul.args[::-1]):
        if not (isinstance(silu, torch.fx.Node) and sole_user(silu)):
            continue
        gate_input = _silu_input(silu)
        if gate_input is None:
            continue
        gate = _chain(gate_input)
        up = _chain(other) if isinstance(other, torch.fx.Node) and sole_user(other) else None
        if gate is None or up is None or not same_shape(shape_of(silu), shape_of(other)):
            continue  # (equal shapes: no broadcasting, the product has the up factor's shape)
        (group, index), (up_group, up_index) = gate[0].args, up[0].args
        if group is up_group and index != up_index and value(mul).dtype == value(silu).dtype:
            return group, index, up
    return None


def fuse_silu_mul(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Fuse every ``silu(gate) * up`` of a gate/up group; returns how many."""
    count = 0
    for mul in list(gm.graph.nodes):
        if mul.op != "call_function" or mul.target is not aten.mul.Tensor or len(mul.args) != 2:
            continue
        matched = _match(mul)
        if matched is None:
            continue
        group, gate_index, up = matched
        x, weights = group.args
        fused = call(gm.graph, group, bi.mm_silu_mul.default, (x, weights[gate_index], weights[1 - gate_index]))
        if len(up) > 1:  # the up factor's reshapes now shape the fused product
            up[1].replace_input_with(up[0], fused)
        mul.replace_all_uses_with(up[-1] if len(up) > 1 else fused)
        gm.graph.erase_node(mul)
        count += 1
    logger.debug("fuse_silu_mul: %d gated activations fused into their matmuls", count)
    return count
