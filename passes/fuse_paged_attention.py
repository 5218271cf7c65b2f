"""Read a paged KV cache in place in the attention launch, instead of gathering it first.

A step with attention in the graph over vLLM's paged cache (vLLM's mode 2, or any model written that
way) gathers each sequence's blocks by its block table -- ``key_cache[block_tables]`` -- into a copy of
every key and value the batch can hold, then attends over the copy with a mask of each sequence's
length: the whole cache capacity read, written and read again per layer.  ``ascend_bi::paged_attention``
reads the blocks where they are, through the table, and stops at each sequence's length; the values it
reads are the copy's, in the same order, and the keys it skips are masked ones (exact zeros in the sum),
so the bits are those of the attention over the copy.

Matches (``permute`` or ``transpose``; a view merging blocks and keys; the mask's chain of unsqueezes
and views optional, the mask itself optional and kept when it is not a length mask)::

    index = torch.ops.aten.index.Tensor(key_cache, [block_tables])          # (batch, blocks, block, heads, dim)
    keys = torch.ops.aten.permute.default(torch.ops.aten.view.default(index, [b, blocks * block, h, d]),
                                          [0, 2, 1, 3])
    lt = torch.ops.aten.lt.Tensor(torch.ops.aten.unsqueeze.default(torch.ops.prims.iota.default(keys_len, ...), 0),
                                  torch.ops.aten.unsqueeze.default(seq_lens, 1))
    attention = torch.ops.ascend_bi.attention.default(q, keys, values, lt[:, None, None, :], False, None, False)

Rewrites to::

    attention = torch.ops.ascend_bi.paged_attention.default(q, key_cache, value_cache, block_tables, seq_lens,
                                                            None, False, None, False, None, None)
"""

from __future__ import annotations

import logging

import torch
import torch.fx

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.passes.replace import VIEWS, arguments, call, same_shape, shape_of, sole_user, swap, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten, prims = torch.ops.aten, torch.ops.prims
bi = torch.ops.ascend_bi
#: Ops that only add or drop unit dims of a mask, or broadcast it.
_MASK_VIEWS = (aten.unsqueeze.default, aten.expand.default, *VIEWS)


def _heads_first(node: object) -> torch.fx.Node | None:
    """The (batch, keys, heads, dim) tensor ``node`` transposes to (batch, heads, keys, dim)."""
    if not isinstance(node, torch.fx.Node):
        return None
    if node.target is aten.permute.default and list(node.args[1]) == [0, 2, 1, 3]:
        return node.args[0]
    if node.target is aten.transpose.int and sorted(d % 4 for d in node.args[1:3]) == [1, 2]:
        return node.args[0]
    return None


def _gathered(node: object) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(cache, block tables) when ``node`` is a paged cache gathered by block table, blocks and keys merged,
    heads first, and used only by the attention."""
    flat = _heads_first(node)
    if flat is None or flat.target not in VIEWS or not sole_user(node) or not sole_user(flat):
        return None
    index = flat.args[0]
    if not (isinstance(index, torch.fx.Node) and index.target is aten.index.Tensor and sole_user(index)):
        return None
    cache, indices = index.args
    if len(indices) != 1 or not isinstance(indices[0], torch.fx.Node):
        return None
    tables = indices[0]
    cache_val, table_val, flat_shape = value(cache), value(tables), shape_of(flat)
    if not (isinstance(cache_val, torch.Tensor) and cache_val.dim() == 4 and isinstance(table_val, torch.Tensor)
            and table_val.dim() == 2 and not table_val.dtype.is_floating_point and not table_val.dtype == torch.bool):
        return None
    blocks, page, heads, dim = cache_val.shape
    if not same_shape(flat_shape, (table_val.shape[0], table_val.shape[1] * page, heads, dim)):
        return None
    return cache, tables


def _mask_source(mask: object) -> object:
    """``mask`` without the unsqueezes, views and broadcasts over it."""
    while isinstance(mask, torch.fx.Node) and mask.target in _MASK_VIEWS:
        mask = mask.args[0]
    return mask


def _positions(node: object, keys: object) -> bool:
    """``arange(keys)`` (or ``iota``) laid out as one row: 0, 1, ... keys - 1."""
    node = _mask_source(node)
    if not isinstance(node, torch.fx.Node):
        return False
    if node.target is prims.iota.default:
        return node.args[0] == keys and node.kwargs.get("start") == 0 and node.kwargs.get("step") == 1
    return node.target is aten.arange.default and node.args[0] == keys


def _lengths(mask: object, batch: object, keys: object) -> torch.fx.Node | None:
    """``seq_lens`` when ``mask`` is ``arange(keys)[None, :] < seq_lens[:, None]`` over (batch, 1, 1, keys)."""
    lt = _mask_source(mask)
    if not (isinstance(lt, torch.fx.Node) and lt.target is aten.lt.Tensor and _positions(lt.args[0], keys)):
        return None
    lens = _mask_source(lt.args[1])
    val = value(lens)
    if not (isinstance(val, torch.Tensor) and val.dim() == 1 and same_shape(tuple(val.shape), (batch,))
            and not val.dtype.is_floating_point and val.dtype != torch.bool):
        return None
    return lens


def fuse_paged_attention(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Attend over every paged cache gathered by block table in place; returns how many attentions."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not bi.attention.default:
            continue
        args = arguments(node)
        keys, values = _gathered(args["k"]), _gathered(args["v"])
        if keys is None or values is None or keys[1] is not values[1]:
            continue
        batch = shape_of(args["q"])[0]
        mask, lens = args["mask"], None
        if mask is not None and not args["is_causal"]:
            lens = _lengths(mask, batch, shape_of(args["k"])[2])
            mask = None if lens is not None else mask
        swap(node, call(gm.graph, node, bi.paged_attention.default,
                        (args["q"], keys[0], values[0], keys[1], lens, mask, args["is_causal"], args["scale"],
                         args["heads_inner"], args["scale_tensor"], args["masked_score"])))
        count += 1
    logger.debug("fuse_paged_attention: %d attentions read their paged cache in place", count)
    return count
