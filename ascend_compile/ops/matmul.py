"""``ascend_bi::mm`` (mm and addmm), ``ascend_bi::mm_group``, ``ascend_bi::mm_gated`` and ``ascend_bi::bmm``:
batch-invariant matrix products.

They are ``torch.library.custom_op`` ops whose real impl launches the Triton template and whose
fake impl only states the output's shape: a ``triton_op`` fails under torch.compile when the
kernels run in Triton's interpreter (fake tensors have no data pointer), a custom op does not.
"""

from __future__ import annotations

import torch

from ascend_compile.kernels.matmul import bi_matmul, bi_matmul_gated, bi_matmul_group
from ascend_compile.ops.library import bi_op


@bi_op("mm")
def mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, b_is_weight: bool = False) -> torch.Tensor:
    """``bias + a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N); ``bias`` broadcasts to (M, N).
    ``b_is_weight``: ``b`` views a parameter nothing writes (``rewrite_matmul`` says so)."""
    return bi_matmul(a, b, bias, b_is_weight=b_is_weight)


@mm.register_fake
def _mm_fake(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
             b_is_weight: bool = False) -> torch.Tensor:
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "ascend_bi::mm takes 2-D operands")
    torch._check(a.shape[1] == b.shape[0], lambda: f"ascend_bi::mm shape mismatch {a.shape} @ {b.shape}")
    return a.new_empty((a.shape[0], b.shape[1]))


@bi_op("mm_group")
def mm_group(a: torch.Tensor, bs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[a @ b for b in bs]`` in one launch (``fuse_sibling_matmuls`` inserts it); ``mm``'s bits."""
    return bi_matmul_group(a, bs)


@mm_group.register_fake
def _mm_group_fake(a: torch.Tensor, bs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [_mm_fake(a, b) for b in bs]


@bi_op("mm_gated")
def mm_gated(a: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(a @ gate) * (a @ up)`` in one launch (``fuse_gated_activation`` inserts it), ``activation``
    ``"silu"`` or ``"gelu_tanh"``; each product has ``mm``'s bits."""
    return bi_matmul_gated(a, gate, up, activation)


@mm_gated.register_fake
def _mm_gated_fake(a: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    return _mm_fake(a, gate)


@bi_op("bmm")
def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 3-D ``a`` (B, M, K) and ``b`` (B, K, N)."""
    return bi_matmul(a, b)


@bmm.register_fake
def _bmm_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    torch._check(a.dim() == 3 and b.dim() == 3, lambda: "ascend_bi::bmm takes 3-D operands")
    torch._check(a.shape[2] == b.shape[1], lambda: f"ascend_bi::bmm shape mismatch {a.shape} @ {b.shape}")
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))
