"""Copy template operands whose layout the template cannot read, and count what that costs.

The templates read operands through their strides, so transposed weights and most views are
taken as they are.  An operand with no unit-stride matrix dimension (e.g. ``x[:, ::2]``) cannot be
loaded as vectors; if it is an activation, it is copied to a contiguous tensor right before the
template.  Parameters and buffers are never copied (that would copy the weights on every call):
they are read by strides and the report says so.

Row templates (sums, softmax, cumsum) reduce a ``(rows, n)`` view of their input; when the
reduced dims cannot be flattened in place (a reduction over a middle dim of a contiguous
tensor), the template copies its input on every call.  Nothing is inserted for those, but the
report lists each such copy and its bytes (``inside_template``), so no copy goes unseen.

Matches::

    slice = torch.ops.aten.slice.Tensor(x, 1, 0, 9223372036854775807, 2)
    mm = torch.ops.ascend_bi.mm.default(slice, permute)

Rewrites to::

    clone = torch.ops.aten.clone.default(slice, memory_format=torch.contiguous_format)
    mm = torch.ops.ascend_bi.mm.default(clone, permute)
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ascend_compile.kernels.plans import matmul_operand_readable
from ascend_compile.kernels.rows import as_rows, normalize_dims
from ascend_compile.passes.graph_facts import GraphFacts, facts_of
from ascend_compile.report import AddedCopy
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

#: Template ops and the positions of their matrix operands.
_MATRIX_OPERANDS: dict[object, tuple[int, ...]] = {
    torch.ops.ascend_bi.mm.default: (0, 1),
    torch.ops.ascend_bi.bmm.default: (0, 1),
}


#: Row templates and how to read their reduced dims from a node's arguments.
_ROW_DIMS = {
    torch.ops.ascend_bi.sum.default: lambda args: args[1],
    torch.ops.ascend_bi.var_mean.default: lambda args: args[1],
    torch.ops.ascend_bi.logsumexp.default: lambda args: args[1],
    torch.ops.ascend_bi.softmax.default: lambda args: [args[1]],
    torch.ops.ascend_bi.cumsum.default: lambda args: [args[1]],
}


def _bytes(val: torch.Tensor) -> str:
    return str(val.numel() * val.element_size())


def _count_template_copy(node: torch.fx.Node, facts: GraphFacts) -> None:
    """Report the copy a row template makes of an input whose reduced dims do not flatten in place."""
    operand = node.args[0]
    val = operand.meta.get("val") if isinstance(operand, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return
    rows, _ = as_rows(val, normalize_dims(val, _ROW_DIMS[node.target](node.args)))
    if rows._is_view() or rows.numel() == 0:
        return
    facts.report.copies.append(AddedCopy(node=node.name, operand=operand.name, bytes_per_call=_bytes(val),
                                         inside_template=True))
    logger.info("fix_contiguity: %s copies %s to reduce it as rows (%s bytes per call)",
                node.name, operand.name, _bytes(val))


def fix_contiguity(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Insert a contiguous copy before each unreadable activation operand; returns copies added."""
    facts = facts_of(gm)
    static_inputs = facts.static_inputs(gm)
    added = 0
    for node in list(gm.graph.nodes):
        if node.target in _ROW_DIMS:
            _count_template_copy(node, facts)
        positions = _MATRIX_OPERANDS.get(node.target)
        if positions is None:
            continue
        for pos in positions:
            operand = node.args[pos]
            val = operand.meta.get("val") if isinstance(operand, torch.fx.Node) else None
            if not isinstance(val, torch.Tensor):
                continue
            if matmul_operand_readable(tuple(val.shape), tuple(val.stride()), facts.device):
                continue
            if operand.op == "placeholder" and operand.name in static_inputs:
                logger.info("fix_contiguity: parameter %s of %s has no unit stride; read by strides, not copied",
                            operand.name, node.name)
                continue
            with gm.graph.inserting_before(node):
                clone = gm.graph.call_function(
                    torch.ops.aten.clone.default, (operand,), {"memory_format": torch.contiguous_format}
                )
            clone.meta["val"] = val.clone(memory_format=torch.contiguous_format)
            node.replace_input_with(operand, clone)
            nbytes = _bytes(val)
            facts.report.copies.append(AddedCopy(node=node.name, operand=operand.name, bytes_per_call=nbytes))
            logger.info("fix_contiguity: copying %s for %s (%s bytes per call)", operand.name, node.name, nbytes)
            added += 1
    return added
