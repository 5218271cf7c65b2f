"""Write every split of a tensor into pieces as the slices it makes: one form for cutting a tensor.

Models cut tensors with ``chunk``, ``split``, ``tensor_split``, ``unbind`` of a view and slicing
(``x[..., :half]``).  Traced, ``chunk`` and ``split`` are ``split.Tensor`` / ``split_with_sizes`` read
through ``getitem``; slicing is ``slice.Tensor``.  A piece of a split is exactly that slice (a view of
the same elements; nothing is computed), so passes that read cuts -- the rotary patterns'
``x[..., :half]`` / ``x[..., half:]``, merged projections' column cuts -- need to know one form.

Matches (every user a ``getitem``)::

    split = torch.ops.aten.split.Tensor(x, 64, -1)
    x1 = split[0]
    x2 = split[1]

Rewrites to::

    x1 = torch.ops.aten.slice.Tensor(x, -1, 0, 64)
    x2 = torch.ops.aten.slice.Tensor(x, -1, 64, 128)
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx

from ascend_compile.passes.replace import arguments, call, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
_SPLITS = (aten.split.Tensor, aten.split_with_sizes.default)


def _sizes(node: torch.fx.Node) -> list[int] | None:
    """The pieces' extents along the split dim, when every extent is a static integer."""
    args = arguments(node)
    extent = value(node.args[0]).shape[args["dim"]]
    sizes = args.get("split_sizes") or args.get("split_size")
    if not isinstance(extent, int):
        return None
    if isinstance(sizes, int):
        return [min(sizes, extent - start) for start in range(0, extent, sizes)] if sizes > 0 else None
    return list(sizes) if all(isinstance(s, int) for s in sizes) and sum(sizes) == extent else None


def canonicalize_splits(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Rewrite every split read only through ``getitem`` as one slice per piece read; returns how many splits."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SPLITS:
            continue
        sizes = _sizes(node)
        if sizes is None or not all(u.target is operator.getitem for u in node.users):
            continue
        dim = arguments(node)["dim"]
        for item in list(node.users):
            i = item.args[1]
            start = sum(sizes[:i])
            swap(item, call(gm.graph, item, aten.slice.Tensor, (node.args[0], dim, start, start + sizes[i])))
        gm.graph.erase_node(node)
        count += 1
    logger.debug("canonicalize_splits: %d splits written as slices", count)
    return count
