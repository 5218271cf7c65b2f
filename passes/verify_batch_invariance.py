"""List every order-sensitive reduction still in the graph; the last pass of the pipeline.

A floating-point reduction whose summation order a stock kernel may choose from the batch size
(matrix products, sums, norms, softmax, attention, ...) breaks batch invariance unless a template
replaced it.  Exact reductions (max, min, argmax, any, all) and integer arithmetic give the same
bits in any order and are fine as they are.  vLLM's vendor matmuls and norms (``_C.onednn_mm``,
``_C.rms_norm``, ...) are listed too, also inside ``auto_functionalized_v2``.  vLLM's attention op
is not: it is the attention backend's (docs/VLLM.md).  An empty list means the graph is
batch-invariant by construction.

Matches::

    sum_1 = torch.ops.aten.sum.dim_IntList(mul, [-1])
    af = torch.ops.higher_order.auto_functionalized_v2(torch.ops._C.onednn_mm.default, a=x, ...)

Rewrites to: nothing.  Strict mode raises ``NotBatchInvariantError`` naming each node and its
source line; lenient mode logs a warning and the compile report lists the nodes.
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from ascend_compile.kernels.plans import FLOAT_DTYPES
from ascend_compile.passes.graph_facts import facts_of, source_line
from ascend_compile.passes.replace import UNSUPPORTED
from ascend_compile.report import UncoveredNode
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

#: aten ops (by packet name) whose floating-point result depends on the order of a reduction.
ORDER_SENSITIVE: frozenset[str] = frozenset({
    # matrix products
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "dot", "vdot", "mv", "addmv",
    "_addmm_activation", "convolution", "_convolution", "einsum", "tensordot",
    # sums and statistics
    "sum", "nansum", "mean", "nanmean", "var", "std", "var_mean", "std_mean", "prod", "cumsum",
    "cumprod", "logcumsumexp", "logsumexp", "norm", "linalg_vector_norm", "frobenius_norm",
    "_safe_softmax", "_softmax", "_log_softmax", "softmax", "log_softmax", "trace",
    # normalisation layers
    "native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm", "native_group_norm",
    "group_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    # attention
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable", "scaled_dot_product_attention",
    "_flash_attention_forward", "_efficient_attention_forward",
})


#: Ops outside aten (vLLM's ``_C`` extension, Inductor's prims) that reduce in an order their kernel
#: picks, by qualified name.  Passes rewrite the ones they can (``rewrite_vllm_ops``); any left here
#: is reported.
VENDOR_ORDER_SENSITIVE: frozenset[str] = frozenset({
    # linear layers: oneDNN, SGL packed weights, quantised GEMMs
    "_C::onednn_mm", "_C::onednn_scaled_mm", "_C::weight_packed_linear", "_C::bmm_cpu", "_C::cpu_gemm_wna16",
    "_C::int4_scaled_mm_cpu", "_C::fp8_scaled_mm_cpu", "_C::cutlass_scaled_mm", "_C::cutlass_scaled_mm_azp",
    "_C::marlin_gemm", "_C::machete_mm", "_C::gptq_gemm", "_C::awq_gemm", "_C::fp32_router_gemm",
    # fused normalisations
    "_C::rms_norm", "_C::fused_add_rms_norm", "_C::rms_norm_dynamic_per_token_quant", "_C::rms_norm_per_block_quant",
    "_C::fused_qk_norm_rope",
    # Inductor's online softmax (GPU post-grad graphs; the inductor executor turns it off)
    "prims::prepare_softmax_online",
})


class NotBatchInvariantError(RuntimeError):
    """Strict mode found order-sensitive reductions that no template covers."""


def _is_float_tensor(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype.is_floating_point or value.dtype.is_complex
    if isinstance(value, (tuple, list)):
        return any(_is_float_tensor(v) for v in value)
    return False


def _op(node: torch.fx.Node) -> torch._ops.OpOverload | None:
    """The op a node runs; for a functionalised out-argument op (``auto_functionalized``), the op inside."""
    if node.op != "call_function":
        return None
    if isinstance(node.target, torch._ops.HigherOrderOperator) and node.target.name().startswith("auto_functionalized"):
        inner = node.args[0] if node.args else None
        return inner if isinstance(inner, torch._ops.OpOverload) else None
    return node.target if isinstance(node.target, torch._ops.OpOverload) else None


def _order_sensitive(node: torch.fx.Node) -> bool:
    op = _op(node)
    if op is None:
        return False
    if op.namespace != "aten":
        return op.name().split(".")[0] in VENDOR_ORDER_SENSITIVE
    if op.__name__.split(".")[0] not in ORDER_SENSITIVE:
        return False
    # Integer and boolean arithmetic is exact in any order (wrap-around included).
    operands = [a.meta.get("val") for a in node.all_input_nodes]
    return _is_float_tensor(node.meta.get("val")) or any(_is_float_tensor(v) for v in operands)


def _reason(node: torch.fx.Node) -> str:
    if node.meta.get(UNSUPPORTED):
        return f"{node.target} not rewritten: {node.meta[UNSUPPORTED]}"
    dtypes = {a.meta["val"].dtype for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)}
    unplanned = sorted(_name(d) for d in dtypes if d.is_floating_point and d not in FLOAT_DTYPES)
    if unplanned:
        return (f"dtype {', '.join(unplanned)}: templates take {', '.join(map(_name, FLOAT_DTYPES))} only "
                f"({_op(node)} left stock)")
    named = ", ".join(sorted(map(_name, dtypes))) or "unknown"
    return f"no batch-invariant template for {_op(node)} with dtypes {named}"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def verify_batch_invariance(gm: torch.fx.GraphModule, settings: Settings) -> int:
    """Record every uncovered order-sensitive reduction; returns how many there are."""
    report = facts_of(gm).report
    found = [
        UncoveredNode(node=n.name, target=str(_op(n)), reason=_reason(n), source=source_line(n))
        for n in gm.graph.nodes if _order_sensitive(n)
    ]
    report.uncovered.extend(found)
    if not found:
        logger.info("verify_batch_invariance: graph %s is batch-invariant by construction", report.graph)
        return 0
    listing = "\n".join(f"  {u.node}: {u.reason}" + (f" at {u.source}" if u.source else "") for u in found)
    message = (f"ascend_bi: {len(found)} order-sensitive reduction(s) in graph {report.graph} "
               f"are not batch-invariant:\n{listing}")
    if settings.strict:
        raise NotBatchInvariantError(message + "\n(strict mode; pass options={'strict': False} to warn instead)")
    logger.warning("%s", message)
    return len(found)
