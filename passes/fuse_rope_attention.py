"""Fold a decode step's norm-and-rotate launch into the attention launch after it.

After ``fuse_norm_rope`` / ``fuse_rope`` a layer with a static cache runs, between its query/key/value
projections and the o projection, two of our launches: the norms, rotation and cache writes
(``rms_norm_rope_cache`` / ``rms_norm_rope_append`` or ``rope_cache`` / ``rope_append``), then
attention over the caches.  At decode the first moves a few kilobytes and costs about a launch
(3.5-4.7 us a layer in a chain of a layer's kernels on an H200, docs/decisions/0015-rope-attention-fusion.md).
``ascend_bi::rope_attention`` / ``rope_attention_append`` do both in one launch
(``kernels/rope_attention.py``; the same bits).

Matches an ``auto_functionalized`` cache-writing rotation whose rotated query only feeds one
``ascend_bi::attention`` over the two caches it wrote, when the step's packed query rows (positions x
query heads per key/value head) and a key row per position fit one decode row block, and everything
else that reads the written caches (their copies back to the inputs) comes after attention.  Not on
NPUs, whose attention schedule walks work items persistently.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized

from ascend_compile.kernels.rope_attention import DECODE_ROWS
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.replace import arguments, call, swap_items, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

bi = torch.ops.ascend_bi
#: The cache-writing rotations, each with its fused form and whether it has query/key norms.
_FUSED = {
    bi.rms_norm_rope_cache.default: (bi.rope_attention.default, True),
    bi.rms_norm_rope_append.default: (bi.rope_attention_append.default, True),
    bi.rope_cache.default: (bi.rope_attention.default, False),
    bi.rope_append.default: (bi.rope_attention_append.default, False),
}
_ATTENTION_ARGS = ("mask", "is_causal", "scale", "heads_inner", "scale_tensor", "masked_score")


def _decode_rows(q: object, k: object) -> bool:
    """Whether the step's packed query rows and its key rows fit one decode row block."""
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        return False
    _, length, heads, _ = q.shape
    kv_heads = k.shape[2]
    if not all(isinstance(n, int) for n in (length, heads, kv_heads)) or heads % kv_heads:
        return False
    return length * (heads // kv_heads + 1) <= DECODE_ROWS


def _attention_of(rotation: torch.fx.Node, order: dict[torch.fx.Node, int]) -> tuple[torch.fx.Node, list] | None:
    """The attention that reads the rotation's query and caches, and the rotation's items."""
    items = {u.args[1]: u for u in rotation.users if u.target is operator.getitem}
    if sorted(items) != list(range(len(items))) or len(items) < 3 or len(items[0].users) != 1:
        return None
    (attention,) = items[0].users
    if attention.target is not bi.attention.default or list(attention.args[:3]) != [items[0], items[1], items[2]]:
        return None
    ordered = [items[i] for i in sorted(items)]
    if any(order[user] < order[attention] for item in ordered[1:] for user in item.users if user is not attention):
        return None
    return attention, ordered


def fuse_rope_attention(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Fold each decode rotation + cache write into the attention that reads them; returns how many."""
    if facts_of(gm).device.plan_kind == "npu":
        return 0
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    fused = 0
    for rotation in [n for n in gm.graph.nodes if n.target is auto_functionalized and n.args[0] in _FUSED]:
        found = _attention_of(rotation, order)
        if found is None or not _decode_rows(value(rotation.kwargs["q"]), value(rotation.kwargs["k"])):
            continue
        attention, items = found
        op, norms = _FUSED[rotation.args[0]]
        kwargs = dict(rotation.kwargs)
        if not norms:
            kwargs.update(weights=[], eps=[], eps_tensors=[])
        kwargs.update({name: arguments(attention).get(name) for name in _ATTENTION_ARGS})
        node = call(gm.graph, attention, auto_functionalized, (op,), kwargs)
        swap_items([attention, *items[1:]], node)
        gm.graph.erase_node(items[0])
        gm.graph.erase_node(rotation)
        fused += 1
    logger.debug("fuse_rope_attention: %d decode rotations run in their attention launch", fused)
    return fused
