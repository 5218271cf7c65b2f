"""Write vLLM's neox rotation in transformers' form: one form for a rotate-half rotary embedding.

transformers rotates ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)`` and
angles repeated to the head's width; vLLM's ``RotaryEmbedding.forward_static`` (neox style) rotates
the halves, ``cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)``, with half-width angles.  Element by
element these are the same two products and one sum, rounded alike: ``a - b`` is ``a + (-b)`` in
IEEE arithmetic, and negation is exact, so the bits are the same.  The rotary fusions
(``rope_patterns``) read the first form; this pass writes the second as the first.  GPT-J's
interleaved rotation (``x[..., ::2]``, ``stack``) pairs other elements and is left as it is.

Matches (``x1``/``x2`` the halves of ``x``'s last dim, as ``canonicalize_splits`` writes them)::

    o1 = torch.ops.aten.sub.Tensor(torch.ops.aten.mul.Tensor(x1, cos), torch.ops.aten.mul.Tensor(x2, sin))
    o2 = torch.ops.aten.add.Tensor(torch.ops.aten.mul.Tensor(x2, cos), torch.ops.aten.mul.Tensor(x1, sin))
    out = torch.ops.aten.cat.default([o1, o2], -1)

Rewrites to::

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


def _half(node: torch.fx.Node) -> tuple[torch.fx.Node, bool] | None:
    """(x, upper) when ``node`` is ``x[..., :h]`` (lower) or ``x[..., h:]`` (upper) with ``x``'s last dim ``2h``."""
    if node.target is not aten.slice.Tensor:
        return None
    args = arguments(node)
    x = value(args["self"])
    if not isinstance(x, torch.Tensor) or args["dim"] not in (-1, x.dim() - 1) or args["step"] != 1:
        return None
    width = x.shape[-1]
    if not isinstance(width, int) or width % 2:
        return None
    start, end = args["start"] or 0, args["end"]
    if start == 0 and end == width // 2:
        return args["self"], False
    if start == width // 2 and (end is None or end >= width):
        return args["self"], True
    return None


def _factors(mul: object, half: torch.fx.Node) -> torch.fx.Node | None:
    """The other factor of ``mul`` when one factor is ``half``."""
    factors = _product(mul)
    if factors is None or (factors[0] is half) == (factors[1] is half):
        return None
    return factors[1] if factors[0] is half else factors[0]


def _rotation(cat: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node, torch.fx.Node,
                                          torch.fx.Node] | None:
    """(x, x1, x2, cos, sin) of a neox rotation ``cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)``."""
    pieces, dim = cat.args[0], cat.args[1] if len(cat.args) > 1 else 0
    out = value(cat)
    if len(pieces) != 2 or not isinstance(out, torch.Tensor) or dim not in (-1, out.dim() - 1):
        return None
    first, second = pieces
    if first.target is not aten.sub.Tensor or second.target is not aten.add.Tensor or len(first.args) != 2 \
            or len(second.args) != 2 or first.kwargs or second.kwargs or len(first.users) != 1 \
            or len(second.users) != 1:
        return None
    x1_cos, x2_sin = first.args
    lower = next((f for f in _product(x1_cos) or () if _half(f) and not _half(f)[1]), None)
    upper = next((f for f in _product(x2_sin) or () if _half(f) and _half(f)[1]), None)
    if lower is None or upper is None or _half(lower)[0] is not _half(upper)[0]:
        return None
    cos, sin = _factors(x1_cos, lower), _factors(x2_sin, upper)
    # The second half: x2 * cos + x1 * sin, the products in either order.
    products = sorted(second.args, key=lambda m: _factors(m, upper) is None)
    if cos is None or sin is None or _factors(products[0], upper) is not cos or _factors(products[1], lower) is not sin:
        return None
    x = _half(lower)[0]
    if tuple(value(x).shape) != tuple(out.shape) or value(x).dtype != out.dtype:
        return None
    return x, lower, upper, cos, sin


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
    """Rewrite each neox rotation of halves into transformers' rotate-half form; returns how many."""
    count, graph = 0, gm.graph
    # Half-width angles -> repeated: one node for every rotation by the same angles (vLLM casts and
    # unsqueezes them for the query and again for the key), so the fusions see the query's and the key's
    # rotations share their angles.  Placed before the first rotation that reads them, in graph order.
    full: dict[tuple[object, ...], torch.fx.Node] = {}

    def repeated(angles: torch.fx.Node, before: torch.fx.Node) -> torch.fx.Node:
        key = _expression(angles)
        if key not in full:
            full[key] = call(graph, before, aten.cat.default, ([angles, angles], -1))
        return full[key]

    for cat in [n for n in graph.nodes if n.target is aten.cat.default]:
        found = _rotation(cat)
        if found is None:
            continue
        x, lower, upper, cos, sin = found
        rotated = call(graph, cat, aten.cat.default, ([call(graph, cat, aten.neg.default, (upper,)), lower], -1))
        cos_full, sin_full = repeated(cos, cat), repeated(sin, cat)
        swap(cat, call(graph, cat, aten.add.Tensor, (call(graph, cat, aten.mul.Tensor, (x, cos_full)),
                                                      call(graph, cat, aten.mul.Tensor, (rotated, sin_full)))))
        count += 1
    logger.debug("canonicalize_rotary: %d neox rotations of halves written as x * cos + rotate_half(x) * sin", count)
    return count
