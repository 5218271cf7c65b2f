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

The norms may round as Llama/Qwen do or with Gemma's weight (``1 + w`` multiplying the fp32 value),
a ``form`` of the launch, and may run before the heads transpose (Qwen3) or after it (Gemma).

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

from ascend_compile.kernels.rms_norm import WEIGHT_FORMS
from ascend_compile.passes.fuse_sibling_norms import form_of
from ascend_compile.passes.rope_patterns import RopeOps, fits_kernel, fold_rope, is_heads_transpose, rope_of
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
        form = form_of(pair)
        # Normalized after the heads transpose (Gemma): the launch reads the projections per head before it.
        heads_first = all(isinstance(x, torch.fx.Node) and is_heads_transpose(x) for x in (xq, xk))
        if heads_first:
            xq, xk = xq.args[0], xk.args[0]
        if len(items) != 2 or form & ~WEIGHT_FORMS or not fits_kernel(xq, xk):
            continue
        q, k = rope_of(items[0], heads_first), rope_of(items[1], heads_first)
        if q is None or k is None or (q.cos, q.sin) != (k.cos, k.sin):
            continue
        extra = dict(weights=weights, eps=eps, eps_tensors=eps_tensors, **({"form": form} if form else {}))
        forms[fold_rope(gm, xq, xk, q, k, _OPS, extra, order)] += 1
    del forms[None]
    logger.debug("fuse_norm_rope: %d query/key norm pairs rotate in their launch, %d of them advancing the cache's "
                 "write position", forms.total(), forms["append"])
    return forms.total()
