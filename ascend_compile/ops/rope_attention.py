"""``ascend_bi::rope_attention`` and ``ascend_bi::rope_attention_append``: a decode step's query/key
norms (when the layer has them), rotary embedding, static-cache writes and attention in one launch
(``kernels/rope_attention.py``); ``ascend_bi::rope_attention_grown`` the same over a cache grown by
``torch.cat``.

The first two take what ``rms_norm_rope_cache`` / ``rms_norm_rope_append`` (``rope_cache`` /
``rope_append`` with no ``weights``) and ``attention`` take, and return what attention returns; the
caches (and, appending, the write position) change in place.  The grown form changes nothing: it
returns attention's output and the two grown caches.
"""

from __future__ import annotations

import torch

from ascend_compile.kernels.rope_attention import bi_rope_attention, bi_rope_attention_grown
from ascend_compile.ops.cache_bounds import check_cache
from ascend_compile.ops.library import bi_op
from ascend_compile.ops.reductions import eps_value


def _norms(weights: list[torch.Tensor], eps: list[float], eps_tensors: list[torch.Tensor | None]
           ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[float, float] | None]:
    """The kernels' ``weights`` and ``eps`` (None, None: no norms, the rotation alone)."""
    if not weights:
        return None, None
    return (weights[0], weights[1]), tuple(eps_value(e, t) for e, t in zip(eps, eps_tensors, strict=True))


def _attend(mask: torch.Tensor | None, is_causal: bool, scale: float | None, heads_inner: bool,
            scale_tensor: torch.Tensor | None, masked_score: float | None) -> dict[str, object]:
    """The kernels' attention keywords."""
    return dict(mask=mask, is_causal=is_causal, scale=float(scale_tensor) if scale_tensor is not None else scale,
                masked_score=float("-inf") if masked_score is None else masked_score, heads_inner=heads_inner)


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
         eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
         v_cache: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
         scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None, masked_score: float | None,
         interleaved: bool, form: int, append: bool) -> torch.Tensor:
    check_cache("rope_attention_append" if append else "rope_attention", q, k, v, k_cache, v_cache, index, append)
    return bi_rope_attention(q, k, v, *_norms(weights, eps, eps_tensors), cos, sin, k_cache, v_cache, index,
                             append=append, interleaved=interleaved, form=form,
                             **_attend(mask, is_causal, scale, heads_inner, scale_tensor, masked_score))


@bi_op("rope_attention", mutates_args=("k_cache", "v_cache"))
def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
                   eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None,
                   is_causal: bool, scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None = None,
                   masked_score: float | None = None, interleaved: bool = False, form: int = 0) -> torch.Tensor:
    """``attention(rms_norm_rope_cache(q, k, v, ...), k_cache, v_cache, mask, ...)`` (``rope_cache``
    when ``weights`` is empty)."""
    return _run(q, k, v, weights, eps, eps_tensors, cos, sin, k_cache, v_cache, index, mask, is_causal, scale,
                heads_inner, scale_tensor, masked_score, interleaved, form, append=False)


@bi_op("rope_attention_append", mutates_args=("k_cache", "v_cache", "cache_length"))
def rope_attention_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor],
                          eps: list[float], eps_tensors: list[torch.Tensor | None], cos: torch.Tensor,
                          sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_length: torch.Tensor,
                          mask: torch.Tensor | None, is_causal: bool, scale: float | None, heads_inner: bool,
                          scale_tensor: torch.Tensor | None = None, masked_score: float | None = None,
                          interleaved: bool = False, form: int = 0) -> torch.Tensor:
    """``attention(rms_norm_rope_append(q, k, v, ...), k_cache, v_cache, mask, ...)`` (``rope_append``
    when ``weights`` is empty): the slots start at ``cache_length``, which advances by the step's length."""
    return _run(q, k, v, weights, eps, eps_tensors, cos, sin, k_cache, v_cache, cache_length, mask, is_causal, scale,
                heads_inner, scale_tensor, masked_score, interleaved, form, append=True)


@bi_op("rope_attention_grown")
def rope_attention_grown(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor],
                         eps: list[float], eps_tensors: list[torch.Tensor | None], cos: torch.Tensor,
                         sin: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor | None,
                         is_causal: bool, scale: float | None, heads_inner: bool,
                         scale_tensor: torch.Tensor | None = None,
                         masked_score: float | None = None,
                         interleaved: bool = False, form: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q_rot, k_rot = rms_norm_rope(q, k, ...)`` (``rope`` when ``weights`` is empty), then
    ``keys = cat((past_k, k_rot), 2)``, ``values = cat((past_v, v.transpose(1, 2)), 2)``: returns
    ``(attention(q_rot, keys, values, mask, ...), keys, values)``."""
    return bi_rope_attention_grown(q, k, v, *_norms(weights, eps, eps_tensors), cos, sin, past_k, past_v,
                                   interleaved=interleaved, form=form,
                                   **_attend(mask, is_causal, scale, heads_inner, scale_tensor, masked_score))


@rope_attention_grown.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
      eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor, past_k: torch.Tensor,
      past_v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, scale: float | None, heads_inner: bool,
      scale_tensor: torch.Tensor | None = None,
      masked_score: float | None = None, interleaved: bool = False,
      form: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grown = [p.new_empty((p.shape[0], p.shape[1], p.shape[2] + q.shape[1], p.shape[3])) for p in (past_k, past_v)]
    return _output(q, v.shape[-1], heads_inner), grown[0], grown[1]


def _attention_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
                   eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None,
                   is_causal: bool, scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None = None,
                   masked_score: float | None = None, interleaved: bool = False, form: int = 0) -> torch.Tensor:
    return _output(q, v_cache.shape[-1], heads_inner)


def _output(q: torch.Tensor, dv: int, heads_inner: bool) -> torch.Tensor:
    """Attention's output for query ``q`` (batch, length, heads, dim) per head."""
    batch, length, heads, _ = q.shape
    if heads_inner:
        return q.new_empty((batch, length, heads, dv)).transpose(1, 2)
    return q.new_empty((batch, heads, length, dv))


for _op in (rope_attention, rope_attention_append):
    _op.register_fake(_attention_out)
