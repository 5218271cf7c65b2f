"""What every rewrite pass does to a matched node: read its arguments, walk to it, insert the template, swap.

``arguments`` gives an aten call's arguments by schema name, defaults filled in; ``call``
inserts a node and computes its ``meta["val"]`` by running the target on the inputs' fake
values, so later passes and Inductor see true shapes, dtypes and strides.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch._guards import detect_fake_mode
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ascend_compile.kernels.plans import FLOAT_DTYPES

#: ``node.meta`` key where a rewrite pass says why it left an order-sensitive node stock; the
#: verify pass reports that reason.
UNSUPPORTED = "ascend_bi_unsupported"
#: Metadata that says where a node came from; templates inherit it from the node they replace.
_PROVENANCE = ("stack_trace", "nn_module_stack", "source_fn_stack")


def arguments(node: torch.fx.Node) -> dict[str, Any]:
    """The aten node's arguments by schema name (``self``, ``dim``, ...), defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    values = {arg.name: given for arg, given in zip(schema.arguments, node.args, strict=False)}
    values.update(node.kwargs)
    for arg in schema.arguments:
        if arg.name not in values and arg.has_default_value():
            values[arg.name] = arg.default_value
    return values


#: Ops that view the same elements in another shape.
VIEWS = (torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default)
#: Ops that give the same elements in another shape.
RESHAPES = (*VIEWS, torch.ops.aten.clone.default)
#: Ops that cast a tensor's dtype: Inductor's ``convert_element_type``; ``_to_copy`` in ``fx``-executor graphs.
CASTS = (torch.ops.prims.convert_element_type.default, torch.ops.aten._to_copy.default)


def shape_of(node: object) -> tuple[object, ...] | None:
    val = value(node)
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def same_shape(a: tuple[object, ...] | None, b: tuple[object, ...] | None) -> bool:
    """Shapes equal for every value of their symbols (no guard is added)."""
    return a is not None and b is not None and len(a) == len(b) and all(
        statically_known_true(x == y) for x, y in zip(a, b, strict=True))


def sole_user(node: torch.fx.Node) -> bool:
    return len(node.users) == 1


def converted_to(node: torch.fx.Node, dtype: torch.dtype) -> torch.fx.Node | None:
    """The input of ``node`` when ``node`` only casts it to ``dtype`` (Inductor's ``convert_element_type``,
    or ``_to_copy`` with a dtype and nothing else that changes the tensor, as in ``fx``-executor graphs:
    ``type_as`` also names the layout and the input's own device)."""
    convert, to_copy = CASTS
    if node.target is convert and node.args[1] == dtype:
        return node.args[0]
    if node.target is to_copy and node.kwargs.get("dtype") == dtype and node.kwargs.keys() <= {"dtype", "layout",
                                                                                             "device"}:
        source, device = node.args[0], node.kwargs.get("device")
        same_device = device is None or (isinstance(value(source), torch.Tensor) and value(source).device == device)
        if node.kwargs.get("layout", torch.strided) == torch.strided and same_device:
            return source
    return None


def value(arg: object) -> Any:
    """The fake tensor (or constant) an argument stands for; a list of them for a list."""
    if isinstance(arg, (list, tuple)):
        return [value(a) for a in arg] if isinstance(arg, list) else tuple(value(a) for a in arg)
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def planned_floats(*args: object) -> bool:
    """All tensor arguments are one floating dtype that has a plan."""
    tensors = [v for v in map(value, args) if isinstance(v, torch.Tensor)]
    return bool(tensors) and all(t.dtype == tensors[0].dtype and t.dtype in FLOAT_DTYPES for t in tensors)


def call(graph: torch.fx.Graph, before: torch.fx.Node, target: Any, args: tuple[Any, ...],
         kwargs: dict[str, Any] | None = None) -> torch.fx.Node:
    """Insert ``target(*args, **kwargs)`` before ``before``, with fake metadata."""
    kwargs = kwargs or {}
    with graph.inserting_before(before):
        node = graph.call_function(target, args, kwargs)
    fake_args = tuple(value(a) for a in args)
    fake_kwargs = {name: value(a) for name, a in kwargs.items()}
    # An op of no tensors (a ``full``) runs in the fake mode of the node it is placed before.
    mode = detect_fake_mode((*fake_args, *fake_kwargs.values())) or detect_fake_mode((value(before),))
    if mode is not None:
        with mode:
            node.meta["val"] = target(*fake_args, **fake_kwargs)
    node.meta.update({k: v for k, v in before.meta.items() if k in _PROVENANCE})
    return node


def hoistable(node: object, before: torch.fx.Node, order: dict[torch.fx.Node, float], views: tuple[Any, ...]) -> bool:
    """Whether ``node`` comes before ``before`` in ``order``, or is a chain of ``views`` of nodes that do
    (what ``hoist`` can move); nothing is moved."""
    if not isinstance(node, torch.fx.Node) or order[node] < order[before]:
        return True
    return node.op == "call_function" and node.target in views and all(
        hoistable(a, before, order, views) for a in node.all_input_nodes)


def hoist(node: object, before: torch.fx.Node, order: dict[torch.fx.Node, float], views: tuple[Any, ...]) -> bool:
    """Make ``node`` come before ``before`` in ``order`` (graph positions, kept up to date),
    moving it and the chain of ``views`` it is made by if needed; False (nothing moved) if it cannot."""
    if not hoistable(node, before, order, views):
        return False
    if isinstance(node, torch.fx.Node) and order[node] >= order[before]:
        for a in node.all_input_nodes:
            hoist(a, before, order, views)
        before.prepend(node)
        order[node] = order[before] - 0.5
    return True


def swap(old: torch.fx.Node, new: torch.fx.Node) -> None:
    """Route every user of ``old`` to ``new`` and drop ``old``."""
    old.replace_all_uses_with(new)
    old.graph.erase_node(old)


def swap_items(olds: Sequence[torch.fx.Node], new: torch.fx.Node) -> None:
    """Route the users of each ``olds[i]`` to ``new[i]`` (``new`` returns a list) and drop ``olds``;
    the item's fake value is ``new``'s, its provenance ``olds[i]``'s."""
    vals = new.meta.get("val")
    for index, old in enumerate(olds):
        with new.graph.inserting_after(new):
            item = new.graph.call_function(operator.getitem, (new, index))
        item.meta.update(old.meta)
        if isinstance(vals, (list, tuple)):
            item.meta["val"] = vals[index]
        swap(old, item)
