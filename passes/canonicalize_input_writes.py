"""Write a slot write made through a reshape of a graph input into the input itself.

vLLM writes a step's keys and values into its paged cache by slot: the cache is (blocks, block
size, heads, dim) and a slot is ``block * block_size + offset``, so the write goes through a view
that merges the leading dims (``key_cache.view(-1, heads, dim).index_copy_(0, slot_mapping, k)``,
or ``index_put_``).  Functionalized, that is an ``index_put`` on a reshape of the input, reshaped
back and copied to the input at the end.  Inductor's reinplacing makes an ``index_put`` in place
only when it writes the input itself, so this form copied the whole cache twice per call (out and
back) to write one row per sequence.  Indexing the merged dims by the slot's quotient and remainder
addresses the same elements (negative slots included: ``-1`` is the last element either way), so
the write and every read after it see the same values, and the copy is gone.

Matches (``cache`` a contiguous graph input, ``index`` one integer index tensor)::

    view = torch.ops.aten.reshape.default(cache, [-1, heads, dim])
    index_put = torch.ops.aten.index_put.default(view, [index], src)
    back = torch.ops.aten.reshape.default(index_put, [blocks, block_size, heads, dim])
    copy_ = torch.ops.aten.copy_.default(cache, back)

Rewrites to::

    block = torch.ops.aten.div.Scalar_mode(index, block_size, rounding_mode="floor")
    offset = torch.ops.aten.remainder.Scalar(index, block_size)
    back = torch.ops.aten.index_put.default(cache, [block, offset], src)
    copy_ = torch.ops.aten.copy_.default(cache, back)
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ascend_compile.passes.replace import VIEWS, call, same_shape, shape_of, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten


def _merged_dims(cache: torch.Tensor, view: torch.Tensor) -> int | None:
    """How many leading dims of ``cache`` the view merges into its first (its other dims the cache's
    own), when the cache is contiguous and the merged dims after the first have static extents."""
    merged = cache.dim() - view.dim() + 1
    if merged < 2 or not cache.is_contiguous() or not same_shape(tuple(view.shape[1:]), tuple(cache.shape[merged:])):
        return None
    inner = cache.shape[1:merged]
    return merged if all(isinstance(n, int) for n in inner) else None


def _slot_write(put: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node, int] | None:
    """(cache input, index, reshape back, merged dims) of an ``index_put`` through a reshape of an
    input whose result, reshaped back, is copied to that input."""
    view, indices = put.args[:2]
    if (len(put.args) > 3 and put.args[3]) or len(indices) != 1 or not isinstance(indices[0], torch.fx.Node) \
            or not isinstance(view, torch.fx.Node) or view.target not in VIEWS:
        return None
    cache, index = view.args[0], indices[0]
    if not isinstance(cache, torch.fx.Node) or cache.op != "placeholder":
        return None
    index_val, cache_val = value(index), value(cache)
    if not isinstance(index_val, torch.Tensor) or index_val.dtype not in (torch.int64, torch.int32) \
            or index_val.dim() != 1:
        return None
    merged = _merged_dims(cache_val, value(view))
    backs = [u for u in put.users if u.target in VIEWS and same_shape(shape_of(u), tuple(cache_val.shape))]
    if merged is None or len(backs) != 1 or len(put.users) != 1:
        return None
    (back,) = backs
    if not any(u.target is aten.copy_.default and u.args[0] is cache for u in back.users):
        return None
    return cache, index, back, merged


def canonicalize_input_writes(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Rewrite each slot write through a reshape of an input into a write of the input; returns how many."""
    count = 0
    for put in [n for n in gm.graph.nodes if n.target is aten.index_put.default]:
        found = _slot_write(put)
        if found is None:
            continue
        cache, index, back, merged = found
        extents = value(cache).shape[:merged]
        indices, rest = [], index
        for n in reversed(extents[1:]):  # the innermost merged dim varies fastest
            indices.insert(0, call(gm.graph, put, aten.remainder.Scalar, (rest, n)))
            rest = call(gm.graph, put, aten.div.Scalar_mode, (rest, n), {"rounding_mode": "floor"})
        indices.insert(0, rest)
        swap(back, call(gm.graph, put, aten.index_put.default, (cache, indices, put.args[2])))
        count += 1
    logger.debug("canonicalize_input_writes: %d slot writes through a reshape of an input write the input", count)
    return count
