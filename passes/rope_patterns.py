"""Transformers' rotary embedding and static-cache update as FX patterns, and the launch that
replaces them: shared by ``fuse_norm_rope`` (layers with query/key norms) and ``fuse_rope``
(layers without).

Matches (``x`` the query or key per head, (batch, length, heads, dim), transposed to (batch, heads,
length, dim))::

    x = torch.ops.aten.permute.default(x_per_head, [0, 2, 1, 3])
    out = x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin
    # or GPT-J's interleaved pairs (canonicalize_rotary writes vLLM's is_neox_style=False so), angles
    # repeated twice in a row:
    out = x * cos + torch.stack([-x[..., 1::2], x[..., ::2]], -1).flatten(-2) * sin

and, for the key, when there is a cache::

    index_put = torch.ops.aten.index_put.default(k_cache, [None, None, index], out)
    index_put_1 = torch.ops.aten.index_put.default(v_cache, [None, None, index], v.permute(0, 2, 1, 3))
    ... copy_(k_cache, index_put), copy_(v_cache, index_put_1) at the end

and, for vLLM's flattened tokens (tokens, heads, dim), its paged cache (blocks, block size, heads,
dim) written at each token's slot, as ``canonicalize_input_writes`` leaves the write::

    index_put = torch.ops.aten.index_put.default(k_cache, [slot // block_size, slot % block_size], k_rot)
    index_put_1 = torch.ops.aten.index_put.default(v_cache, [slot // block_size, slot % block_size], v)

``fold_rope`` inserts one launch for both rotations: the plain op, or under Inductor the op that
also writes the caches (``auto_functionalized``, reinplaced by Inductor), at the given slots or --
when ``index = arange(length) + position`` and the graph writes ``position + length`` back --
appended at the cache's write position, which the launch advances; or at the paged cache's slots.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.kernels.plans import UnsupportedPlan, rope_row_plan
from ascend_compile.passes.canonicalize_rotary import every_other, half_of, pieces
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.replace import VIEWS, call, hoist, same_shape, sole_user, swap, swap_items, value

aten = torch.ops.aten
prims = torch.ops.prims
bi = torch.ops.ascend_bi


@dataclass(frozen=True)
class Rope:
    """One rotation ``out = x * cos + rotate_half(x) * sin`` of a norm pair's output (``interleaved``:
    GPT-J's ``rotate_every_two(x)`` for ``rotate_half(x)``)."""

    out: torch.fx.Node
    cos: torch.fx.Node
    sin: torch.fx.Node
    #: The rotated tensor is the item itself, (tokens, heads, dim), as vLLM flattens a step's tokens:
    #: the launch reads it as (tokens, 1, heads, dim), whose rotation (tokens, heads, 1, dim) has its layout.
    flat: bool = False
    interleaved: bool = False


def is_heads_transpose(node: torch.fx.Node) -> bool:
    """(batch, length, heads, dim) -> (batch, heads, length, dim)."""
    if node.target is aten.permute.default:
        return list(node.args[1]) == [0, 2, 1, 3]
    return node.target is aten.transpose.int and sorted(d % 4 for d in node.args[1:3]) == [1, 2]


def _other(mul: torch.fx.Node, operand: torch.fx.Node) -> object:
    """The factor of a two-operand ``mul`` that is not ``operand`` (None if neither or both are)."""
    a, b = mul.args[:2]
    return b if a is operand and b is not operand else a if b is operand and a is not operand else None


def rope_of(item: torch.fx.Node, heads_first: bool = False) -> Rope | None:
    """The rotation applied to ``item``, a query or key per head (through its heads transpose, or
    itself when it is ``heads_first``: already (batch, heads, length, dim), as Gemma normalizes the
    transposed projection), if that is all ``item`` is used for."""
    item_val = value(item)
    flat = isinstance(item_val, torch.Tensor) and item_val.dim() == 3 and len(item.users) == 3
    if not (flat or heads_first) and not sole_user(item):
        return None
    x = item if flat or heads_first else next(iter(item.users))
    x_val = value(x)
    if not (flat or heads_first or is_heads_transpose(x)) or not isinstance(x_val, torch.Tensor) \
            or x_val.dim() != (3 if flat else 4) or len(x.users) != 3:
        return None
    muls = [u for u in x.users if u.target is aten.mul.Tensor]
    found = _rotated(x)
    if len(muls) != 1 or not sole_user(muls[0]) or found is None or not sole_user(found[0]):
        return None
    rotated, interleaved = found
    (sin_mul,) = rotated.users
    cos, sin = _other(muls[0], x), _other(sin_mul, rotated) if sin_mul.target is aten.mul.Tensor else None
    (add,) = muls[0].users
    if add.target is not aten.add.Tensor or {*add.args[:2]} != {muls[0], sin_mul} or len(add.args) > 2 or add.kwargs:
        return None
    fit = _flat_angles_fit if flat else _angles_fit
    if not all(isinstance(t, torch.fx.Node) and fit(value(t), x_val) for t in (cos, sin)):
        return None
    return Rope(add, cos, sin, flat, interleaved)


def _down(node: torch.fx.Node, steps: int) -> torch.fx.Node | None:
    """The node ``steps`` sole users down from ``node`` (None where one has other users)."""
    for _ in range(steps):
        if not sole_user(node):
            return None
        node = next(iter(node.users))
    return node


def _rotated(x: torch.fx.Node) -> tuple[torch.fx.Node, bool] | None:
    """(node, interleaved): ``rotate_half(x)``, ``cat(-x[..., h:], x[..., :h], -1)``, or GPT-J's
    ``rotate_every_two(x)``, ``stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)``, among ``x``'s users."""
    for interleaved in (False, True):
        split = every_other if interleaved else half_of
        parts = [[u for u in x.users if split(u) == (x, second)] for second in (False, True)]
        if any(len(part) != 1 for part in parts) or not sole_user(parts[1][0]):
            continue
        neg = next(iter(parts[1][0].users))
        # The cat; interleaved, the stack (or unsqueeze, then cat) and the flatten.
        steps = 1 if not interleaved else 3 if sole_user(neg) and next(iter(neg.users)).target is \
            aten.unsqueeze.default else 2
        out = _down(neg, steps)
        if neg.target is aten.neg.default and out is not None and pieces(out) == ([neg, parts[0][0]], interleaved):
            return out, interleaved
    return None


def _angles_fit(angles: object, x: torch.Tensor) -> bool:
    """``cos``/``sin`` of x's dtype, shaped (batch or 1, 1, length, dim) as ``apply_rotary_pos_emb`` uses
    them, or (length, dim), which broadcasts as (1, 1, length, dim) (a hand-written model's angles)."""
    if not isinstance(angles, torch.Tensor) or angles.dim() not in (2, 4) or angles.dtype != x.dtype:
        return False
    batch, _, length, dim = x.shape
    if angles.dim() == 2:
        return same_shape(tuple(angles.shape), (length, dim))
    return same_shape(tuple(angles.shape[1:]), (1, length, dim)) and (
        same_shape((angles.shape[0],), (1,)) or same_shape((angles.shape[0],), (batch,)))


def _flat_angles_fit(angles: object, x: torch.Tensor) -> bool:
    """``cos``/``sin`` of flattened tokens (tokens, heads, dim): each token's angles, (tokens, 1, dim)."""
    return isinstance(angles, torch.Tensor) and angles.dtype == x.dtype and \
        same_shape(tuple(angles.shape), (x.shape[0], 1, x.shape[2]))


def _angles_4d(gm: torch.fx.GraphModule, angles: torch.fx.Node, before: torch.fx.Node) -> torch.fx.Node:
    """``angles`` as the (batch or 1, 1, length, dim) tensor the launch reads ((tokens, 1, 1, dim) for
    flattened tokens)."""
    shape = list(value(angles).shape)
    if len(shape) == 4:
        return angles
    return call(gm.graph, before, aten.reshape.default, (angles, [1, 1, *shape] if len(shape) == 2 else
                                                        [shape[0], 1, 1, shape[2]]))


def _per_head(gm: torch.fx.GraphModule, x: torch.fx.Node, before: torch.fx.Node) -> torch.fx.Node:
    """Flattened tokens (tokens, heads, dim) as the (batch, length, heads, dim) the launch reads."""
    tokens, heads, dim = value(x).shape
    return call(gm.graph, before, aten.reshape.default, (x, [tokens, 1, heads, dim]))


@dataclass(frozen=True)
class CacheWrites:
    """The static cache's key and value writes at one step's slots, both written back to inputs."""

    key: torch.fx.Node  # index_put(k_cache, [None, None, index], k_rot)
    value: torch.fx.Node  # index_put(v_cache, [None, None, index], v.transpose(1, 2))
    v: torch.fx.Node  # the value per head, (batch, length, kv heads, dim)

    @property
    def index(self) -> torch.fx.Node:
        """The slots both writes use."""
        return self.key.args[1][2]


def _slot_write(node: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(cache input, index) of ``index_put(cache, [None, None, index], ...)`` whose result the graph
    copies back to the cache input."""
    if node.target is not aten.index_put.default or (len(node.args) > 3 and node.args[3]):
        return None
    cache, indices = node.args[:2]
    if not isinstance(cache, torch.fx.Node) or cache.op != "placeholder" or len(indices) != 3 \
            or indices[0] is not None or indices[1] is not None or not isinstance(indices[2], torch.fx.Node):
        return None
    if not any(u.target is aten.copy_.default and u.args[0] is cache for u in node.users):
        return None
    return cache, indices[2]


def cache_writes(k_rot: torch.fx.Node) -> CacheWrites | None:
    if not sole_user(k_rot):
        return None
    (key,) = k_rot.users
    found = _slot_write(key)
    if found is None or key.args[2] is not k_rot:
        return None
    index = found[1]
    sibling = _value_write(key, index.users, _slot_write, k_rot, is_heads_transpose)
    return CacheWrites(key, sibling, sibling.args[2].args[0]) if sibling is not None else None


def _value_write(key: torch.fx.Node, candidates: Iterable[torch.fx.Node],
                 write_of: Callable[[torch.fx.Node], tuple[torch.fx.Node, torch.fx.Node] | None], k_rot: torch.fx.Node,
                 is_value: Callable[[torch.fx.Node], bool]) -> torch.fx.Node | None:
    """The value's write beside the key's write ``key`` among ``candidates``: a ``write_of`` another cache at
    the same slots, of a tensor (``is_value``) shaped and typed as ``k_rot``."""
    k_cache, slots = write_of(key)
    for sibling in candidates:
        other = write_of(sibling) if sibling is not key else None
        if other is None or other[0] is k_cache or other[1] is not slots:
            continue
        v = sibling.args[2]
        if isinstance(v, torch.fx.Node) and is_value(v) and value(v).dtype == value(k_rot).dtype \
                and same_shape(tuple(value(v).shape), tuple(value(k_rot).shape)):
            return sibling
    return None


@dataclass(frozen=True)
class PagedWrites:
    """A paged cache's key and value writes at each token's slot, both written back to inputs."""

    key: torch.fx.Node  # index_put(k_cache, [slot // block size, slot % block size], k_rot)
    value: torch.fx.Node  # the same for v_cache and v
    v: torch.fx.Node  # the value per head, (tokens, kv heads, dim)
    slots: torch.fx.Node


def _paged_write(node: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(cache input, slots) of ``index_put(cache, [slots // block size, slots % block size], ...)`` on a
    (blocks, block size, heads, dim) cache input that the graph copies the result back to, and that
    nothing else reads."""
    if node.target is not aten.index_put.default or (len(node.args) > 3 and node.args[3]):
        return None
    cache, indices = node.args[:2]
    if not isinstance(cache, torch.fx.Node) or cache.op != "placeholder" or len(indices) != 2 \
            or not all(isinstance(i, torch.fx.Node) for i in indices):
        return None
    block, offset = indices
    cache_val = value(cache)
    if not isinstance(cache_val, torch.Tensor) or cache_val.dim() != 4 \
            or block.target is not aten.div.Scalar_mode or block.kwargs.get("rounding_mode") != "floor" \
            or offset.target is not aten.remainder.Scalar or block.args[0] is not offset.args[0] \
            or not block.args[1] == offset.args[1] == cache_val.shape[1]:
        return None
    copies = [u for u in node.users if u.target is aten.copy_.default and u.args[0] is cache]
    if len(copies) != 1 or set(cache.users) != {node, copies[0]}:
        return None
    return cache, block.args[0]


def paged_writes(k_rot: torch.fx.Node) -> PagedWrites | None:
    """The paged cache writes of rotated flattened key ``k_rot`` (through its views) and of a value at
    the same slots."""
    node = k_rot
    while sole_user(node) and next(iter(node.users)).target in VIEWS:
        node = next(iter(node.users))
    if not sole_user(node) or not same_shape(tuple(value(node).shape), tuple(value(k_rot).shape)):
        return None
    (key,) = node.users
    found = _paged_write(key)
    if found is None or key.args[2] is not node:
        return None
    slots = found[1]
    sibling = _value_write(key, (put for index in slots.users for put in index.users), _paged_write, k_rot,
                           lambda v: True)
    return PagedWrites(key, sibling, sibling.args[2], slots) if sibling is not None else None


@dataclass(frozen=True)
class WritePosition:
    """A static cache's write position, read for the step's slots and advanced at the end of the graph."""

    position: torch.fx.Node  # the placeholder: one int64
    advanced: torch.fx.Node  # add(position, length), written back to it


def _is_arange(node: object, length: int) -> bool:
    """``iota(length)`` / ``arange(length)``: 0, 1, ... ``length - 1``."""
    if not isinstance(node, torch.fx.Node):
        return False
    if node.target is prims.iota.default:
        return node.args[0] == length and node.kwargs.get("start") == 0 and node.kwargs.get("step") == 1
    return node.target is aten.arange.default and node.args[0] == length


def write_position(writes: CacheWrites, length: object) -> WritePosition | None:
    """The position the writes' ``index`` counts from, when ``index = arange(length) + position`` and
    only the writes use it, the graph writes ``position + length`` back to it, and nothing else reads it.

    Anything else would be unsafe, even placed before the launch: Inductor computes a pointwise read
    where its result is used (a mask made of the position, used by attention, after the launch), and
    the launch advances the position in place.  A model's first layer shares its position with the
    mask and the rotary angles, so it keeps the ``index`` form."""
    index = writes.index
    if index.target is not aten.add.Tensor or len(index.args) != 2 or index.kwargs or not isinstance(length, int) \
            or set(index.users) != {writes.key, writes.value}:
        return None
    a, b = index.args
    position = b if _is_arange(a, length) else a if _is_arange(b, length) else None
    if not isinstance(position, torch.fx.Node) or position.op != "placeholder":
        return None
    val = value(position)
    if not isinstance(val, torch.Tensor) or val.dtype != torch.int64 or val.numel() != 1:
        return None
    advanced = [u for u in position.users if u.target is aten.add.Tensor and list(u.args) == [position, length]
                and [c.target for c in u.users] == [aten.copy_.default] and next(iter(u.users)).args[0] is position]
    if len(advanced) != 1:
        return None
    if set(position.users) != {index, advanced[0], *advanced[0].users}:
        return None
    return WritePosition(position, advanced[0])


def fits_kernel(xq: torch.fx.Node, xk: torch.fx.Node) -> bool:
    """Query and key per head, (batch, length, heads, dim) of one batch, length, dim and dtype, and a
    head the kernel's row holds."""
    q, k = value(xq), value(xk)
    if q.dim() == k.dim() == 3:  # flattened tokens: (tokens, 1, heads, dim)
        q, k = q.unsqueeze(1), k.unsqueeze(1)
    if q.dim() != 4 or k.dim() != 4 or not same_shape((*q.shape[:2], q.shape[3]), (*k.shape[:2], k.shape[3])):
        return False
    try:
        rope_row_plan(q.shape[-1], q.dtype, facts_of(xq.graph.owning_module).device)
    except (UnsupportedPlan, TypeError):  # TypeError: a symbolic head dim
        return False
    return True


def before_users(writes: CacheWrites, q_rot: torch.fx.Node, order: dict[torch.fx.Node, int]) -> bool:
    """Whether one node placed at the later cache write precedes every use of the rotated query and
    of the written caches (it does in transformers' layers: attention reads all three after both writes)."""
    last = max(order[writes.key], order[writes.value])
    return all(order[user] > last for node in (q_rot, writes.key, writes.value) for user in node.users)


def _placement(q: Rope, k: Rope, inputs: list[object], order: dict[torch.fx.Node, int]) -> torch.fx.Node | None:
    """Where one launch for both rotations goes: at the later rotation, or -- when the earlier one's result
    is used before it (vLLM rotates and reshapes the query, then the key) -- at the first use, if every
    input of the launch is computed before that; None if neither."""
    later = max(q.out, k.out, key=order.__getitem__)
    first_use = min((user for out in (q.out, k.out) for user in out.users), key=order.__getitem__)
    if order[first_use] > order[later]:
        return later
    nodes = [n for i in inputs for n in (i if isinstance(i, (list, tuple)) else [i]) if isinstance(n, torch.fx.Node)]
    return first_use if all(order[n] < order[first_use] for n in nodes) else None


def _flat_outputs(gm: torch.fx.GraphModule, node: torch.fx.Node, before: torch.fx.Node, olds: list[torch.fx.Node],
                  first: int = 0) -> None:
    """Route each of ``olds``, flattened rotations (tokens, heads, dim), to item ``first + i`` of ``node``,
    (tokens, heads, 1, dim), reshaped back."""
    for i, old in enumerate(olds):
        item = call(gm.graph, before, operator.getitem, (node, first + i))
        swap(old, call(gm.graph, before, aten.reshape.default, (item, list(value(old).shape))))


def _fold_paged(gm: torch.fx.GraphModule, xq: torch.fx.Node, xk: torch.fx.Node, q: Rope, k: Rope, ops: RopeOps,
                extra: dict[str, object], order: dict[torch.fx.Node, int]) -> bool:
    """Replace flattened rotations ``q`` and ``k`` and the key's paged cache writes by one ``ops.paged`` launch."""
    writes = paged_writes(k.out)
    if writes is None:
        return False
    k_cache, v_cache = writes.key.args[0], writes.value.args[0]
    later = _placement(q, k, [xq, xk, q.cos, q.sin, *extra.values(), writes.slots, k_cache, v_cache], order)
    if later is None or not hoist(writes.v, later, order, VIEWS):
        return False
    node = call(gm.graph, later, auto_functionalized, (ops.paged,),
                dict(q=_per_head(gm, xq, later), k=_per_head(gm, xk, later), v=_per_head(gm, writes.v, later), **extra,
                     cos=_angles_4d(gm, q.cos, later), sin=_angles_4d(gm, q.sin, later), k_cache=k_cache,
                     v_cache=v_cache, slot_mapping=writes.slots))
    _flat_outputs(gm, node, later, [q.out])
    for i, write in enumerate((writes.key, writes.value), start=1):
        swap(write, call(gm.graph, later, operator.getitem, (node, i)))
    return True


@dataclass(frozen=True)
class RopeOps:
    """One launch's forms: rotations only, with the cache writes, appending at the write position, with
    paged cache writes."""

    plain: Any
    cache: Any
    append: Any
    paged: Any


def fold_rope(gm: torch.fx.GraphModule, xq: torch.fx.Node, xk: torch.fx.Node, q: Rope, k: Rope, ops: RopeOps,
              extra: dict[str, object], order: dict[torch.fx.Node, int]) -> str | None:
    """Replace rotations ``q`` and ``k`` of ``xq``/``xk`` (and, under Inductor, the key's static-cache
    writes) by one ``ops`` launch taking ``extra`` besides; returns the form used: ``"plain"``,
    ``"cache"``, ``"append"`` or ``"paged"`` (None: the rotations' results are used between them, nothing done)."""
    facts = facts_of(gm)
    if q.flat != k.flat or q.interleaved != k.interleaved:
        return None
    if q.interleaved:
        extra = {**extra, "interleaved": True}
    if q.flat and facts.report.executor == "inductor" and _fold_paged(gm, xq, xk, q, k, ops, extra, order):
        return "paged"
    writes = cache_writes(k.out) if facts.report.executor == "inductor" and not q.flat else None
    if writes is None or not before_users(writes, q.out, order):
        later = _placement(q, k, [xq, xk, q.cos, q.sin, *extra.values()], order)
        if later is None:
            return None
        cos, sin = _angles_4d(gm, q.cos, later), _angles_4d(gm, q.sin, later)
        if q.flat:
            xq, xk = _per_head(gm, xq, later), _per_head(gm, xk, later)
        node = call(gm.graph, later, ops.plain, (), dict(q=xq, k=xk, **extra, cos=cos, sin=sin))
        if q.flat:  # (tokens, heads, 1, dim) back to the (tokens, heads, dim) its users read
            _flat_outputs(gm, node, later, [q.out, k.out])
        else:
            swap_items((q.out, k.out), node)
        return "plain"
    last = max(writes.key, writes.value, key=order.__getitem__)
    cos, sin = _angles_4d(gm, q.cos, last), _angles_4d(gm, q.sin, last)
    common = dict(q=xq, k=xk, v=writes.v, **extra, cos=cos, sin=sin, k_cache=writes.key.args[0],
                  v_cache=writes.value.args[0])
    # Arrival counters are not used on NPUs (no split schedules there): Inductor advances the position.
    appended = write_position(writes, value(xk).shape[1]) if facts.device.plan_kind != "npu" else None
    if appended is None:
        node = call(gm.graph, last, auto_functionalized, (ops.cache,), dict(common, index=writes.index))
        swap_items((q.out, writes.key, writes.value), node)
        return "cache"
    node = call(gm.graph, last, auto_functionalized, (ops.append,), dict(common, cache_length=appended.position))
    swap_items((q.out, writes.key, writes.value, appended.advanced), node)
    return "append"
