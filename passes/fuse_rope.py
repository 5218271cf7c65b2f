"""Fuse a layer's rotary embedding and static-cache writes when it has no query/key norms.

Llama, Mistral, Qwen2 and most other transformers decoders rotate the query and key projections
as they come out of the matmul: ``apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos,
sin)``.  Inductor runs that, and the static cache's writes, as two or three small kernels between
the projections and attention.  ``ascend_bi::rope`` (or ``rope_cache`` / ``rope_append`` under
Inductor with a static cache, as in ``fuse_norm_rope``) does both rotations and the writes in one
launch of the norm-and-rotate kernel with the norms off (``kernels/rope.py``: each product and the
sum rounded as eager rounds them, so the same bits).

Matches a layer's two rotations of one ``cos``/``sin`` (``rope_patterns.rope_of``) of tensors per
head, (batch, length, heads, dim), each a view of a projection: consecutive rotations by the same
angles in graph order, a pair per layer (vLLM's layers share one rotary module, so all its layers
rotate by one ``cos``/``sin``); the first is the query (transformers rotates it first), unless only
the other's rotation can be its key, which is the one written to the cache.  Runs after
``fuse_norm_rope``: layers with norms are taken by then.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.fx

from ascend_compile.passes.rope_patterns import Rope, RopeOps, cache_writes, fits_kernel, fold_rope, rope_of
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
_OPS = RopeOps(bi.rope.default, bi.rope_cache.default, bi.rope_append.default, bi.rope_paged.default)
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def fuse_rope(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Fold each layer's query/key rotation (and static-cache writes) into one launch; returns how many."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    by_angles: dict[tuple[torch.fx.Node, torch.fx.Node], list[tuple[torch.fx.Node, Rope]]] = {}
    for node in gm.graph.nodes:
        rope = rope_of(node) if node.target in _VIEWS else None
        if rope is not None:
            by_angles.setdefault((rope.cos, rope.sin), []).append((node, rope))
    forms: Counter[str | None] = Counter()
    for found in by_angles.values():
        if len(found) % 2:
            continue
        for (xq, q), (xk, k) in zip(found[::2], found[1::2], strict=True):
            forms[_fold_pair(gm, xq, q, xk, k, order)] += 1
    del forms[None]
    logger.debug("fuse_rope: %d query/key rotations in one launch, %d of them advancing the cache's write position",
                 forms.total(), forms["append"])
    return forms.total()


def _fold_pair(gm: torch.fx.GraphModule, xq: torch.fx.Node, q: Rope, xk: torch.fx.Node, k: Rope,
               order: dict[torch.fx.Node, int]) -> str | None:
    """``fold_rope`` of one layer's rotations, the one written to a cache taken as the key."""
    if cache_writes(k.out) is None and cache_writes(q.out) is not None:
        (xq, q), (xk, k) = (xk, k), (xq, q)
    return fold_rope(gm, xq, xk, q, k, _OPS, {}, order) if fits_kernel(xq, xk) else None
