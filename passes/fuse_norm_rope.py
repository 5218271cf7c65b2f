"""Fuse a layer's query/key norm pair, its rotary embedding and its static-cache writes.

After ``fuse_sibling_norms`` a Qwen3-style layer still runs, between the projections and attention,
the rotation of the query and of the key and the key and value cache writes as Inductor kernels
(three launches at decode, serialized with ours).  ``ascend_bi::rms_norm_rope`` computes the norms
and the rotation in the norm pair's launch (``kernels/rope.py``: the same roundings, so the same
bits as the ops it replaces).  Where the rotated key only goes into a static cache that the graph
writes back to its input (transformers' ``StaticCache.update``: ``index_copy_`` at the step's
slots, beside the value's), ``ascend_bi::rms_norm_rope_cache`` also writes both caches: it enters
the functional graph under ``auto_functionalized``, and Inductor's own reinplacing makes the writes
in place.  When the slots are the cache's own write position and the positions after it, and the
graph advances that position by the step's length (``arange(length) + cumulative_length``, then
``cumulative_length += length``), ``ascend_bi::rms_norm_rope_append`` reads and advances it in
the launch too, and the small kernel Inductor ran before every layer's launch for the slots and
the increment is gone.  These forms need Inductor (the ``fx`` executor would run them on copies
of the caches), so other executors get ``rms_norm_rope`` alone.

Matches, for each norm pair, both outputs rotated with one ``cos``/``sin`` (``rope_patterns``), and
rewrites them to ``ascend_bi::rms_norm_rope`` / ``rms_norm_rope_cache`` / ``rms_norm_rope_append``
(``rope_patterns.fold_rope``).
"""

from __future__ import annotations

import logging
import operator
from collections import Counter

import torch
import torch.fx

from ascend_compile.passes.fuse_sibling_norms import form_of
from ascend_compile.passes.rope_patterns import RopeOps, fits_kernel, fold_rope, rope_of
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

bi = torch.ops.ascend_bi
_OPS = RopeOps(bi.rms_norm_rope.default, bi.rms_norm_rope_cache.default, bi.rms_norm_rope_append.default,
               bi.rms_norm_rope_paged.default)


def fuse_norm_rope(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Fold each layer's query/key rotation (and static-cache writes) into its norm pair; returns how many."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    forms: Counter[str | None] = Counter()
    for pair in [n for n in gm.graph.nodes if n.target is bi.rms_norm_pair.default]:
        items = sorted((u for u in pair.users if u.target is operator.getitem), key=lambda u: u.args[1])
        (xq, xk), weights, eps, eps_tensors = pair.args[:4]
        if len(items) != 2 or form_of(pair) or not fits_kernel(xq, xk):  # the rotation kernel rounds as Llama/Qwen
            continue
        q, k = rope_of(items[0]), rope_of(items[1])
        if q is None or k is None or (q.cos, q.sin) != (k.cos, k.sin):
            continue
        forms[fold_rope(gm, xq, xk, q, k, _OPS, dict(weights=weights, eps=eps, eps_tensors=eps_tensors), order)] += 1
    del forms[None]
    logger.debug("fuse_norm_rope: %d query/key norm pairs rotate in their launch, %d of them advancing the cache's "
                 "write position", forms.total(), forms["append"])
    return forms.total()
