"""Fold a decode step's norm-and-rotate launch into the attention launch after it.

After ``fuse_norm_rope`` / ``fuse_rope`` a layer with a static cache runs, between its query/key/value
projections and the o projection, two of our launches: the norms, rotation and cache writes
(``rms_norm_rope_cache`` / ``rms_norm_rope_append`` or ``rope_cache`` / ``rope_append``), then
attention over the caches.  At decode the first moves a few kilobytes and costs about a launch
(3.5-4.7 us a layer in a chain of a layer's kernels on an H200, docs/decisions/0015-rope-attention-fusion.md).
``ascend_bi::rope_attention`` / ``rope_attention_append`` do both in one launch
(``kernels/rope_attention.py``; the same bits).

A hand-written model grows its caches by ``torch.cat`` instead: the rotation (``rms_norm_rope`` /
``rope``), ``cat((past_k, k_rot), 2)``, ``cat((past_v, v.transpose(1, 2)), 2)``, then attention over
the two: four launches, two of them copying the whole past.  ``ascend_bi::rope_attention_grown`` does
it in the attention launch, each program copying the past keys and values of its own key splits
before it reads them, and returns the grown caches with attention's output.

Matches an ``auto_functionalized`` cache-writing rotation whose rotated query only feeds one
``ascend_bi::attention`` over the two caches it wrote, when the step's packed query rows (positions x
query heads per key/value head) and a key row per position fit one decode row block, and everything
else that reads the written caches (their copies back to the inputs) comes after attention; and a
rotation whose query feeds only such an attention over the two grown caches, its key only the key
cache's ``cat``, with every other reader of the grown caches after attention.  Not on NPUs, whose
attention schedule walks work items persistently.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized

from ascend_compile.kernels.rope_attention import DECODE_ROWS
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.replace import arguments, call, same_shape, sole_user, swap_items, value
from ascend_compile.passes.rope_patterns import is_heads_transpose
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten = torch.ops.aten
bi = torch.ops.ascend_bi
#: The cache-writing rotations, each with its fused form and whether it has query/key norms.
_FUSED = {
    bi.rms_norm_rope_cache.default: (bi.rope_attention.default, True),
    bi.rms_norm_rope_append.default: (bi.rope_attention_append.default, True),
    bi.rope_cache.default: (bi.rope_attention.default, False),
    bi.rope_append.default: (bi.rope_attention_append.default, False),
}
#: The rotations without cache writes (with query/key norms, without).
_ROTATIONS = frozenset({bi.rms_norm_rope.default, bi.rope.default})
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


def _later(nodes: list[torch.fx.Node], attention: torch.fx.Node, order: dict[torch.fx.Node, int]) -> bool:
    """Whether every user of ``nodes`` besides ``attention`` comes after it."""
    return all(order[user] > order[attention] for node in nodes for user in node.users if user is not attention)


def _past(cat: object, new: object) -> torch.fx.Node | None:
    """``past`` of ``cat((past, new), 2)``, keys grown along the (batch, heads, keys, dim) key dim."""
    if not isinstance(cat, torch.fx.Node) or cat.target is not aten.cat.default:
        return None
    tensors, dim = cat.args[0], cat.args[1] if len(cat.args) > 1 else 0
    if len(tensors) != 2 or tensors[1] is not new or dim not in (2, -2) or not isinstance(tensors[0], torch.fx.Node):
        return None
    past, grown = value(tensors[0]), value(cat)
    return tensors[0] if isinstance(past, torch.Tensor) and past.dim() == 4 and past.dtype == grown.dtype else None


def _grown_attention(rotation: torch.fx.Node, order: dict[torch.fx.Node, int]) -> dict[str, object] | None:
    """The attention over caches grown by the rotation's key and a value, as ``rope_attention_grown``'s
    arguments (with ``attention``, ``items`` and ``grown``: the nodes it replaces)."""
    items = {u.args[1]: u for u in rotation.users if u.target is operator.getitem}
    if sorted(items) != [0, 1] or not all(sole_user(item) for item in items.values()):
        return None
    (attention,), (grown_k,) = items[0].users, items[1].users
    if attention.target is not bi.attention.default or attention.args[0] is not items[0] \
            or attention.args[1] is not grown_k:
        return None
    grown_v = attention.args[2]
    v_heads = grown_v.args[0][1] if isinstance(grown_v, torch.fx.Node) and grown_v.target is aten.cat.default \
        and len(grown_v.args[0]) == 2 else None
    past_k, past_v = _past(grown_k, items[1]), _past(grown_v, v_heads)
    if past_k is None or past_v is None or not is_heads_transpose(v_heads) or not _later([grown_k, grown_v],
                                                                                           attention, order):
        return None
    k_rot, v_rot = value(items[1]), value(v_heads)
    if not same_shape(tuple(k_rot.shape), tuple(v_rot.shape)) or k_rot.dtype != v_rot.dtype:
        return None
    return dict(attention=attention, items=[items[0], items[1]], grown=[grown_k, grown_v], v=v_heads.args[0],
                past_k=past_k, past_v=past_v)


def _fuse_grown(gm: torch.fx.GraphModule, rotation: torch.fx.Node, order: dict[torch.fx.Node, int]) -> bool:
    """Fold a rotation and the ``cat`` growing its key into the attention over the grown caches."""
    found = _grown_attention(rotation, order)
    args = arguments(rotation)
    if found is None or not _decode_rows(value(args["q"]), value(args["k"])):
        return False
    attention = found["attention"]
    kwargs = dict(q=args["q"], k=args["k"], v=found["v"], weights=args.get("weights", []), eps=args.get("eps", []),
                  eps_tensors=args.get("eps_tensors", []), cos=args["cos"], sin=args["sin"],
                  past_k=found["past_k"], past_v=found["past_v"], interleaved=args.get("interleaved", False),
                  form=args.get("form", 0))
    kwargs.update({name: arguments(attention).get(name) for name in _ATTENTION_ARGS})
    node = call(gm.graph, attention, bi.rope_attention_grown.default, (), kwargs)
    swap_items([attention, *found["grown"]], node)
    for old in [*found["items"], rotation]:
        gm.graph.erase_node(old)
    return True


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
    grown = sum(_fuse_grown(gm, rotation, order) for rotation in
                [n for n in gm.graph.nodes if n.target in _ROTATIONS])
    logger.debug("fuse_rope_attention: %d decode rotations run in their attention launch, %d of them growing "
                 "their caches by cat", fused + grown, grown)
    fused += grown
    return fused
