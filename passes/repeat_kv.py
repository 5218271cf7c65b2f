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

from ascend_compile.passes.replace import RESHAPES, same_shape, shape_of, sole_user

aten = torch.ops.aten


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
