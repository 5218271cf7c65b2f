"""Write vLLM's rotations in transformers' forms: one form for each pairing of a rotary embedding.

transformers rotates ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)`` and
angles repeated to the head's width; vLLM's ``RotaryEmbedding.forward_static`` (neox style) rotates
the halves, ``cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)``, with half-width angles.  Element by
element these are the same two products and one sum, rounded alike: ``a - b`` is ``a + (-b)`` in
IEEE arithmetic, and negation is exact, so the bits are the same.  GPT-J's interleaved rotation
(vLLM's ``is_neox_style=False``) does the same to ``x1 = x[..., ::2]`` and ``x2 = x[..., 1::2]``
and interleaves the results, ``stack((o1, o2), -1).flatten(-2)``: transformers' GPT-J writes it
``x * cos + rotate_every_two(x) * sin``, ``rotate_every_two(x) = stack((-x2, x1), -1).flatten(-2)``,
with each angle repeated twice in a row.  The rotary fusions (``rope_patterns``) read transformers'
forms; this pass writes vLLM's as them.

Matches (``x1``/``x2`` the halves of ``x``'s last dim, as ``canonicalize_splits`` writes them, or its
even and odd elements)::

    o1 = torch.ops.aten.sub.Tensor(torch.ops.aten.mul.Tensor(x1, cos), torch.ops.aten.mul.Tensor(x2, sin))
    o2 = torch.ops.aten.add.Tensor(torch.ops.aten.mul.Tensor(x2, cos), torch.ops.aten.mul.Tensor(x1, sin))
    out = torch.ops.aten.cat.default([o1, o2], -1)
    # interleaved: the pieces stacked on a new last dim, merged into the last
    out = torch.ops.aten.reshape.default(torch.ops.aten.cat.default([o1[..., None], o2[..., None]], -1), x.shape)

Rewrites to (interleaved: each ``cat`` of two pieces is their ``stack(..., -1).flatten(-2)``)::

    rotated = torch.ops.aten.cat.default([torch.ops.aten.neg.default(x2), x1], -1)
    out = torch.ops.aten.add.Tensor(torch.ops.aten.mul.Tensor(x, torch.ops.aten.cat.default([cos, cos], -1)),
                                    torch.ops.aten.mul.Tensor(rotated, torch.ops.aten.cat.default([sin, sin], -1)))
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ascend_compile.passes.replace import arguments, call, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten


def _product(node: object) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """The two factors of a ``mul`` node used once."""
    if not isinstance(node, torch.fx.Node) or node.target is not aten.mul.Tensor or len(node.users) != 1 \
            or len(node.args) != 2 or node.kwargs or not all(isinstance(a, torch.fx.Node) for a in node.args):
        return None
    return node.args[0], node.args[1]


def _last_dim_slice(node: torch.fx.Node, step: int) -> tuple[dict[str, object], int] | None:
    """(arguments, width) when ``node`` slices by ``step`` the last dim, of even ``width``, of its input."""
    if node.target is not aten.slice.Tensor:
        return None
    args = arguments(node)
    x = value(args["self"])
    if not isinstance(x, torch.Tensor) or args["dim"] not in (-1, x.dim() - 1) or args["step"] != step:
        return None
    width = x.shape[-1]
    return (args, width) if isinstance(width, int) and width % 2 == 0 else None


def half_of(node: torch.fx.Node) -> tuple[torch.fx.Node, bool] | None:
    """(x, upper) when ``node`` is ``x[..., :h]`` (lower) or ``x[..., h:]`` (upper) with ``x``'s last dim ``2h``."""
    found = _last_dim_slice(node, 1)
    if found is None:
        return None
    args, width = found
    start, end = args["start"] or 0, args["end"]
    if start == 0 and end == width // 2:
        return args["self"], False
    if start == width // 2 and (end is None or end >= width):
        return args["self"], True
    return None


def every_other(node: torch.fx.Node) -> tuple[torch.fx.Node, bool] | None:
    """(x, odd) when ``node`` is ``x[..., ::2]`` (even) or ``x[..., 1::2]`` (odd) with ``x``'s last dim even."""
    found = _last_dim_slice(node, 2)
    if found is None:
        return None
    args, width = found
    start, end = args["start"] or 0, args["end"]
    return (args["self"], start == 1) if start in (0, 1) and (end is None or end >= width) else None


def _on_last(node: torch.fx.Node, target: object) -> bool:
    """Whether ``node`` is ``target`` (``cat`` or ``unsqueeze``) at its result's last dim."""
    out = value(node)
    if node.target is not target or not isinstance(out, torch.Tensor):
        return False
    dim = node.args[1] if len(node.args) > 1 else 0
    return dim in (-1, out.dim() - 1)


def pieces(out: torch.fx.Node) -> tuple[list[object], bool] | None:
    """(pieces, interleaved): ``cat(pieces, -1)``, or (interleaved) ``reshape(stack(pieces, -1))`` merging
    the new last dim into the one before, the ``stack`` as it is or decomposed, ``cat([p[..., None] for p
    in pieces], -1)``."""
    if _on_last(out, aten.cat.default):
        return list(out.args[0]), False
    stacked = out.args[0] if out.target in (aten.reshape.default, aten.view.default) else None
    if not isinstance(stacked, torch.fx.Node) or len(stacked.users) != 1 or not isinstance(value(out), torch.Tensor) \
            or value(out).dim() != value(stacked).dim() - 1 \
            or tuple(value(out).shape[:-1]) != tuple(value(stacked).shape[:-2]):
        return None
    if _on_last(stacked, aten.stack.default):
        return list(stacked.args[0]), True
    if not _on_last(stacked, aten.cat.default):
        return None
    found = [p.args[0] if isinstance(p, torch.fx.Node) and _on_last(p, aten.unsqueeze.default) and
             len(p.users) == 1 else None for p in stacked.args[0]]
    return (found, True) if None not in found else None


def _factors(mul: object, half: torch.fx.Node) -> torch.fx.Node | None:
    """The other factor of ``mul`` when one factor is ``half``."""
    factors = _product(mul)
    if factors is None or (factors[0] is half) == (factors[1] is half):
        return None
    return factors[1] if factors[0] is half else factors[0]


def _rotation(out: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node, torch.fx.Node,
                                          torch.fx.Node, bool] | None:
    """(x, x1, x2, cos, sin, interleaved) of a rotation ``[x1 * cos - x2 * sin, x2 * cos + x1 * sin]``
    of halves or, interleaved, of even and odd elements (the module docstring's forms)."""
    found, result = pieces(out), value(out)
    if found is None or len(found[0]) != 2 or not isinstance(result, torch.Tensor):
        return None
    (first, second), interleaved = found
    split = every_other if interleaved else half_of
    if first.target is not aten.sub.Tensor or second.target is not aten.add.Tensor or len(first.args) != 2 \
            or len(second.args) != 2 or first.kwargs or second.kwargs or len(first.users) != 1 \
            or len(second.users) != 1:
        return None
    x1_cos, x2_sin = first.args
    lower = next((f for f in _product(x1_cos) or () if split(f) and not split(f)[1]), None)
    upper = next((f for f in _product(x2_sin) or () if split(f) and split(f)[1]), None)
    if lower is None or upper is None or split(lower)[0] is not split(upper)[0]:
        return None
    cos, sin = _factors(x1_cos, lower), _factors(x2_sin, upper)
    # The second piece: x2 * cos + x1 * sin, the products in either order.
    products = sorted(second.args, key=lambda m: _factors(m, upper) is None)
    if cos is None or sin is None or _factors(products[0], upper) is not cos or _factors(products[1], lower) is not sin:
        return None
    x = split(lower)[0]
    if tuple(value(x).shape) != tuple(result.shape) or value(x).dtype != result.dtype:
        return None
    if interleaved and not all(_merged_shape(value(t)) for t in (lower, cos, sin)):
        return None
    return x, lower, upper, cos, sin, interleaved


def _merged_shape(t: object) -> list[object] | None:
    """The shape of ``t`` stacked with another on a new last dim, then merged into its last: a symbolic
    dim as -1 (None when more than one is symbolic)."""
    if not isinstance(t, torch.Tensor):
        return None
    shape = [d if isinstance(d, int) else -1 for d in (*t.shape[:-1], t.shape[-1] * 2)]
    return shape if shape.count(-1) <= 1 else None


def _joined(graph: torch.fx.Graph, before: torch.fx.Node, a: torch.fx.Node, b: torch.fx.Node,
            interleaved: bool) -> torch.fx.Node:
    """``cat([a, b], -1)``, or interleaved ``stack([a, b], -1).flatten(-2)``."""
    if not interleaved:
        return call(graph, before, aten.cat.default, ([a, b], -1))
    first = call(graph, before, aten.unsqueeze.default, (a, -1))
    second = first if b is a else call(graph, before, aten.unsqueeze.default, (b, -1))
    stacked = call(graph, before, aten.cat.default, ([first, second], -1))
    return call(graph, before, aten.reshape.default, (stacked, _merged_shape(value(a))))


#: Ops whose result is a function of their arguments alone: two such nodes of equal arguments are one value.
_PURE = frozenset({aten.unsqueeze.default, aten.squeeze.dim, aten.select.int, aten.slice.Tensor, aten.reshape.default,
                   aten.view.default, aten.expand.default, aten.permute.default, aten.index_select.default,
                   aten.index.Tensor, torch.ops.prims.convert_element_type.default, aten._to_copy.default})


def _expression(node: torch.fx.Node) -> tuple[object, ...]:
    """``node`` as an expression of the nodes it is computed from through ``_PURE`` ops."""
    if node.op != "call_function" or node.target not in _PURE:
        return (node,)
    args = tuple(_expression(a) if isinstance(a, torch.fx.Node) else
                 tuple(_expression(b) if isinstance(b, torch.fx.Node) else b for b in a) if isinstance(a, list) else a
                 for a in node.args)
    return (node.target, args, tuple(sorted(node.kwargs.items(), key=str)))


def canonicalize_rotary(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Rewrite each of vLLM's rotations into transformers' form; returns how many."""
    graph = gm.graph
    # Half-width angles -> repeated: one node for every rotation by the same angles (vLLM casts and
    # unsqueezes them for the query and again for the key), so the fusions see the query's and the key's
    # rotations share their angles.  Placed before the first rotation that reads them, in graph order.
    full: dict[tuple[object, ...], torch.fx.Node] = {}

    def repeated(angles: torch.fx.Node, before: torch.fx.Node, interleaved: bool) -> torch.fx.Node:
        key = (interleaved, _expression(angles))
        if key not in full:
            full[key] = _joined(graph, before, angles, angles, interleaved)
        return full[key]

    counts = [0, 0]
    for out in [n for n in graph.nodes if n.target in (aten.cat.default, aten.reshape.default, aten.view.default)]:
        found = _rotation(out)
        if found is None:
            continue
        x, lower, upper, cos, sin, interleaved = found
        rotated = _joined(graph, out, call(graph, out, aten.neg.default, (upper,)), lower, interleaved)
        cos_full, sin_full = repeated(cos, out, interleaved), repeated(sin, out, interleaved)
        swap(out, call(graph, out, aten.add.Tensor, (call(graph, out, aten.mul.Tensor, (x, cos_full)),
                                                      call(graph, out, aten.mul.Tensor, (rotated, sin_full)))))
        counts[interleaved] += 1
    logger.debug("canonicalize_rotary: %d neox rotations of halves written as x * cos + rotate_half(x) * sin, %d "
                 "interleaved ones as x * cos + rotate_every_two(x) * sin", *counts)
    return sum(counts)
