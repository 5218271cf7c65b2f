"""Which reduction plan each template node of a rewritten graph runs with, for dumps and the CLI.

A plan fixes a template's order of additions (``kernels/plans.py``); a user who wonders why two
runs differ, or why a kernel is slow, wants to see it next to the node.  Plans are computed here
the way the kernels compute them, from the node's fake operands: when the reduced extent is
symbolic (a sequence length traced dynamically), the plan is chosen at run time from the real
extent and the entry says so.  The batch extent never enters a plan, so it never appears here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
import torch.fx
from torch._higher_order_ops.auto_functionalize import auto_functionalized
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from ascend_compile.devices import Device
from ascend_compile.kernels.plans import UnsupportedPlan, attention_plan, matmul_plan, row_plan
from ascend_compile.kernels.rows import normalize_dims
from ascend_compile.ops.library import bi_op_of
from ascend_compile.passes.graph_facts import source_line

logger = logging.getLogger(__name__)

_ops = torch.ops.ascend_bi


def _fake(node: torch.fx.Node, index: int) -> Any:
    """The op's argument ``index`` (by keyword under ``auto_functionalized``), fake value for a node."""
    if node.target is auto_functionalized:
        arg = node.kwargs.get(node.args[0]._schema.arguments[index].name)
    else:
        arg = node.args[index] if index < len(node.args) else None
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def _extents(node: torch.fx.Node, target: torch._ops.OpOverload) -> tuple[str, dict[str, Any], torch.dtype] | None:
    """(plan family, the extents the plan takes, dtype) of a template node; None for other nodes."""
    x = _fake(node, 0)
    if target == _ops.rms_norm_pair.default:  # one plan for both inputs (bi_rms_norm_pair)
        x = node.args[0][0].meta["val"]
    if not isinstance(x, torch.Tensor):
        return None
    if target in (_ops.mm.default, _ops.mm_gated.default):
        return "matmul", {"k": x.shape[1], "n": _fake(node, 1).shape[1]}, x.dtype
    if target == _ops.mm_group.default:  # one plan for every weight (bi_matmul_group)
        return "matmul", {"k": x.shape[1], "n": node.args[1][0].meta["val"].shape[1]}, x.dtype
    if target == _ops.bmm.default:
        return "matmul", {"k": x.shape[2], "n": _fake(node, 1).shape[2]}, x.dtype
    if target in (_ops.sum.default, _ops.var_mean.default, _ops.logsumexp.default):
        dims = normalize_dims(x, node.args[1])
        return "row", {"n": math.prod(x.shape[d] for d in dims)}, x.dtype
    if target == _ops.softmax.default:
        return "row", {"n": x.shape[node.args[1] % x.dim()]}, x.dtype
    if target == _ops.cumsum.default:
        dtype = node.args[2] if len(node.args) > 2 and node.args[2] is not None else x.dtype
        return "row", {"n": x.shape[node.args[1] % x.dim()] if x.dim() else 1}, dtype
    if target == _ops.layer_norm.default:
        return "row", {"n": math.prod(node.args[1])}, x.dtype
    if target in (_ops.rms_norm.default, _ops.add_rms_norm.default, _ops.rms_norm_pair.default,
                  _ops.rms_norm_sandwich.default, _ops.rms_norm_rope.default, _ops.rms_norm_rope_cache.default,
                  _ops.rms_norm_rope_append.default):
        return "row", {"n": x.shape[-1]}, x.dtype
    if target in (_ops.attention.default, _ops.paged_attention.default):
        return "attention", {"head_dim": x.shape[-1], "value_dim": _fake(node, 2).shape[-1]}, x.dtype
    return None


def _static(value: Any) -> int | None:
    return int(value) if is_concrete_int(value) else None


def _plan(family: str, extents: dict[str, int], dtype: torch.dtype, device: Device) -> object:
    if family == "matmul":
        return matmul_plan(extents["k"], extents["n"], dtype, device)
    if family == "row":
        return row_plan(extents["n"], dtype, device)
    return attention_plan(extents["head_dim"], extents["value_dim"], dtype, device)


def op_plans(gm: torch.fx.GraphModule, device: Device) -> list[dict[str, Any]]:
    """One entry per template node: op, extents, dtype, plan (or why it is chosen at run time)."""
    entries = []
    for node in gm.graph.nodes:
        op = bi_op_of(node)
        found = _extents(node, op) if op is not None else None
        if found is None:
            continue
        family, extents, dtype = found
        entry: dict[str, Any] = {
            "node": node.name, "op": str(op), "family": family,
            "extents": {k: str(v) for k, v in extents.items()}, "dtype": str(dtype).removeprefix("torch."),
            "source": source_line(node),
        }
        static = {k: _static(v) for k, v in extents.items()}
        if any(v is None for v in static.values()):
            entry["plan"] = None
            entry["note"] = "reduced extent is symbolic: the plan is chosen at run time from the real extent"
        else:
            try:
                entry["plan"] = dataclasses.asdict(_plan(family, static, dtype, device))  # type: ignore[arg-type]
            except UnsupportedPlan as e:
                entry["plan"] = None
                entry["note"] = str(e)
        entries.append(entry)
    return entries
