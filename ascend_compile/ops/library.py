"""How every ``ascend_bi`` op is registered: ``bi_op("name")`` is ``torch.library.custom_op`` with
the op's layout constraint stated.

Inductor runs a custom op it has no lowering for as a fallback and gives its inputs the layout of
the op's tag, or of ``custom_op_default_layout_constraint`` (exact strides) when it has none.  The
ops carry that tag themselves, so the layout is the same however Inductor registers the fallback
(``executors/inductor.py`` registers ours up front, see ``allow_fallbacks``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx

#: The ops' namespace (``torch.ops.ascend_bi``).
NAMESPACE = "ascend_bi"
#: Inputs arrive with exactly the strides they were traced with.
TAGS = (torch.Tag.needs_exact_strides,)


def bi_op(name: str, mutates_args: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Any]:
    """Decorator registering the op ``ascend_bi::name``; functional unless ``mutates_args`` names the
    inputs it writes in place (passes insert such ops under ``auto_functionalized``)."""
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args, tags=TAGS)


def is_bi_op(target: object) -> bool:
    """Whether an FX node's target is one of these ops."""
    return isinstance(target, torch._ops.OpOverload) and target.namespace == NAMESPACE


def bi_op_of(node: torch.fx.Node) -> torch._ops.OpOverload | None:
    """The ``ascend_bi`` op an FX node calls: its target, or the op an ``auto_functionalized`` node
    wraps (how an op that writes its inputs sits in a functional graph); None for other nodes."""
    if node.op != "call_function":
        return None
    target = node.args[0] if node.target is torch.ops.higher_order.auto_functionalized else node.target
    return target if is_bi_op(target) else None
