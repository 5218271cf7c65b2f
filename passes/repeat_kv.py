"""Find GQA's key/value heads before transformers' ``repeat_kv`` copied them.

Models with fewer key/value heads than query heads repeat each key/value head for its group
before attention (``repeat_kv``: unsqueeze, expand, reshape -- a copy of the whole cache every
step), unless SDPA's ``enable_gqa`` can be used, which transformers avoids when there is a mask.
The attention template reads one key/value head for its whole group, so both attention rewrites
hand it the tensor before the copy; the copy then has no users and is removed.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ascend_compile.passes.replace import value

aten = torch.ops.aten

#: Ops that give the same elements in another shape.
RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default)


def shape_of(node: object) -> tuple[object, ...] | None:
    val = value(node)
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def same_shape(a: tuple[object, ...] | None, b: tuple[object, ...] | None) -> bool:
    """Shapes equal for every value of their symbols (no guard is added)."""
    return a is not None and b is not None and len(a) == len(b) and all(
        statically_known_true(x == y) for x, y in zip(a, b, strict=True))


def sole_user(node: torch.fx.Node) -> bool:
    return len(node.users) == 1


def unrepeated(kv: object) -> object:
    """``kv`` (B, H, L, D), or the (B, Hkv, L, D) tensor repeat_kv made it from."""
    if not isinstance(kv, torch.fx.Node):
        return kv
    node = kv
    while node.op == "call_function" and node.target in RESHAPES and sole_user(node):
        node = node.args[0]
        shape = shape_of(node)
        if node.target is aten.expand.default and shape is not None and len(shape) == 5:
            source = node.args[0]
            while source.target is aten.slice.Tensor and same_shape(shape_of(source), shape_of(source.args[0])):
                source = source.args[0]
            if source.target is aten.unsqueeze.default and source.args[1] == 2 and shape_of(source.args[0]) is not None:
                return source.args[0]
            return kv
    return kv
