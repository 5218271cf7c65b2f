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

#: The ops' namespace (``torch.ops.ascend_bi``).
NAMESPACE = "ascend_bi"
#: Inputs arrive with exactly the strides they were traced with.
TAGS = (torch.Tag.needs_exact_strides,)


def bi_op(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Decorator registering a functional op ``ascend_bi::name`` (no input is mutated)."""
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=(), tags=TAGS)


def is_bi_op(target: object) -> bool:
    """Whether an FX node's target is one of these ops."""
    return isinstance(target, torch._ops.OpOverload) and target.namespace == NAMESPACE
