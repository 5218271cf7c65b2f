"""``ascend_bi::rope_attention`` and ``ascend_bi::rope_attention_append``: a decode step's query/key
norms (when the layer has them), rotary embedding, static-cache writes and attention in one launch
(``kernels/rope_attention.py``).

They take what ``rms_norm_rope_cache`` / ``rms_norm_rope_append`` (``rope_cache`` / ``rope_append``
with no ``weights``) and ``attention`` take, and return what attention returns; the caches (and,
appending, the write position) change in place.
"""

from __future__ import annotations

import torch

from ascend_compile.kernels.rope_attention import bi_rope_attention
from ascend_compile.ops.cache_bounds import check_cache
from ascend_compile.ops.library import bi_op
from ascend_compile.ops.reductions import eps_value


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
         eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
         v_cache: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
         scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None, masked_score: float | None,
         append: bool) -> torch.Tensor:
    check_cache("rope_attention_append" if append else "rope_attention", q, k, v, k_cache, v_cache, index, append)
    norms = (weights[0], weights[1]) if weights else None
    epsilons = tuple(eps_value(e, t) for e, t in zip(eps, eps_tensors, strict=True)) if weights else None
    return bi_rope_attention(q, k, v, norms, epsilons, cos, sin, k_cache, v_cache, index, append=append, mask=mask,
                             is_causal=is_causal, scale=float(scale_tensor) if scale_tensor is not None else scale,
                             masked_score=float("-inf") if masked_score is None else masked_score,
                             heads_inner=heads_inner)


@bi_op("rope_attention", mutates_args=("k_cache", "v_cache"))
def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
                   eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None,
                   is_causal: bool, scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None = None,
                   masked_score: float | None = None) -> torch.Tensor:
    """``attention(rms_norm_rope_cache(q, k, v, ...), k_cache, v_cache, mask, ...)`` (``rope_cache``
    when ``weights`` is empty)."""
    return _run(q, k, v, weights, eps, eps_tensors, cos, sin, k_cache, v_cache, index, mask, is_causal, scale,
                heads_inner, scale_tensor, masked_score, append=False)


@bi_op("rope_attention_append", mutates_args=("k_cache", "v_cache", "cache_length"))
def rope_attention_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor],
                          eps: list[float], eps_tensors: list[torch.Tensor | None], cos: torch.Tensor,
                          sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_length: torch.Tensor,
                          mask: torch.Tensor | None, is_causal: bool, scale: float | None, heads_inner: bool,
                          scale_tensor: torch.Tensor | None = None, masked_score: float | None = None) -> torch.Tensor:
    """``attention(rms_norm_rope_append(q, k, v, ...), k_cache, v_cache, mask, ...)`` (``rope_append``
    when ``weights`` is empty): the slots start at ``cache_length``, which advances by the step's length."""
    return _run(q, k, v, weights, eps, eps_tensors, cos, sin, k_cache, v_cache, cache_length, mask, is_causal, scale,
                heads_inner, scale_tensor, masked_score, append=True)


def _attention_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
                   eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None,
                   is_causal: bool, scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None = None,
                   masked_score: float | None = None) -> torch.Tensor:
    batch, length, heads, _ = q.shape
    if heads_inner:
        return q.new_empty((batch, length, heads, v_cache.shape[-1])).transpose(1, 2)
    return q.new_empty((batch, heads, length, v_cache.shape[-1]))


for _op in (rope_attention, rope_attention_append):
    _op.register_fake(_attention_out)
