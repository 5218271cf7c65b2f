"""``ascend_bi::rms_norm_rope``, ``ascend_bi::rms_norm_rope_cache``, ``ascend_bi::rms_norm_rope_append`` and
``ascend_bi::rms_norm_rope_paged``: a layer's query/key norms and rotary embedding in one launch, with
the key/value cache writes in it when there is a static cache (at given slots, or appended at the
cache's write position, which then advances) or vLLM's paged cache (at each token's slot);
``ascend_bi::rope``, ``rope_cache``, ``rope_append`` and ``rope_paged`` are the same for layers
without query/key norms.

Inputs are the projections viewed per head, (batch, length, heads, dim), as the norms read them;
``cos``/``sin`` broadcast as (batch or 1, 1, length, dim), as ``apply_rotary_pos_emb`` uses them.
Rotated outputs are (batch, heads, length, dim), contiguous in the real and the fake impl.
"""

from __future__ import annotations

import torch

from ascend_compile.kernels.rope import bi_rms_norm_rope, bi_rope
from ascend_compile.ops.cache_bounds import check_cache
from ascend_compile.ops.library import bi_op
from ascend_compile.ops.reductions import eps_value


def _rotated(x: torch.Tensor) -> torch.Tensor:
    batch, length, heads, dim = x.shape
    return x.new_empty((batch, heads, length, dim))


@bi_op("rms_norm_rope")
def rms_norm_rope(q: torch.Tensor, k: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
                  eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor,
                  interleaved: bool = False, form: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb(rms_norm(q).transpose(1, 2), rms_norm(k).transpose(1, 2), cos, sin)``
    with the weights, epsilons and ``form`` of ``rms_norm_pair`` (its weight flags: ``NormForm.LLAMA``,
    Gemma's ``WEIGHT_FP32 | WEIGHT_PLUS_ONE``); ``interleaved``: GPT-J's ``rotate_every_two`` for
    ``rotate_half`` (every op here takes it)."""
    q_rot, k_rot = bi_rms_norm_rope(q, k, (weights[0], weights[1]), _eps(eps, eps_tensors), cos, sin,
                                    interleaved=interleaved, form=form)
    return q_rot, k_rot


@rms_norm_rope.register_fake
def _(q: torch.Tensor, k: torch.Tensor, weights: list[torch.Tensor], eps: list[float],
      eps_tensors: list[torch.Tensor | None], cos: torch.Tensor, sin: torch.Tensor,
      interleaved: bool = False, form: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return _rotated(q), _rotated(k)


@bi_op("rms_norm_rope_cache", mutates_args=("k_cache", "v_cache"))
def rms_norm_rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor],
                        eps: list[float], eps_tensors: list[torch.Tensor | None], cos: torch.Tensor,
                        sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        index: torch.Tensor, interleaved: bool = False, form: int = 0) -> torch.Tensor:
    """``rms_norm_rope``, then ``k_cache[:, :, index] = k_rot`` and ``v_cache[:, :, index] =
    v.transpose(1, 2)`` in place (transformers' static cache update); returns the rotated query."""
    check_cache("rms_norm_rope_cache", q, k, v, k_cache, v_cache, index, append=False)
    q_rot, _ = bi_rms_norm_rope(q, k, (weights[0], weights[1]), _eps(eps, eps_tensors), cos, sin,
                                cache=(v, k_cache, v_cache, index), interleaved=interleaved, form=form)
    return q_rot


@bi_op("rms_norm_rope_append", mutates_args=("k_cache", "v_cache", "cache_length"))
def rms_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor],
                         eps: list[float], eps_tensors: list[torch.Tensor | None], cos: torch.Tensor,
                         sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_length: torch.Tensor, interleaved: bool = False, form: int = 0) -> torch.Tensor:
    """``rms_norm_rope_cache`` at ``index = arange(length) + cache_length``, then ``cache_length +=
    length`` in place: all of transformers' ``StaticLayer.update`` (``cache_length`` is its
    ``cumulative_length``, one int64)."""
    check_cache("rms_norm_rope_append", q, k, v, k_cache, v_cache, cache_length, append=True)
    q_rot, _ = bi_rms_norm_rope(q, k, (weights[0], weights[1]), _eps(eps, eps_tensors), cos, sin,
                                cache=(v, k_cache, v_cache, cache_length), append=True, interleaved=interleaved,
                                form=form)
    return q_rot


@bi_op("rms_norm_rope_paged", mutates_args=("k_cache", "v_cache"))
def rms_norm_rope_paged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: list[torch.Tensor],
                        eps: list[float], eps_tensors: list[torch.Tensor | None], cos: torch.Tensor,
                        sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        slot_mapping: torch.Tensor, interleaved: bool = False, form: int = 0) -> torch.Tensor:
    """``rms_norm_rope``, then token ``t``'s key and value (batch x length tokens) into vLLM's paged caches
    (blocks, block size, kv heads, dim) at slot ``slot_mapping[t]``, ``block * block size + offset``, in
    place (``key_cache.view(-1, heads, dim).index_copy_(0, slot_mapping, k_rot)``); returns the rotated query."""
    check_cache("rms_norm_rope_paged", q, k, v, k_cache, v_cache, slot_mapping, append=False, paged=True)
    q_rot, _ = bi_rms_norm_rope(q, k, (weights[0], weights[1]), _eps(eps, eps_tensors), cos, sin,
                                cache=(v, k_cache, v_cache, slot_mapping), paged=True, interleaved=interleaved,
                                form=form)
    return q_rot


@bi_op("rope")
def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)``."""
    q_rot, k_rot = bi_rope(q, k, cos, sin, interleaved=interleaved)
    return q_rot, k_rot


@rope.register_fake
def _(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
      interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _rotated(q), _rotated(k)


@bi_op("rope_cache", mutates_args=("k_cache", "v_cache"))
def rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor,
               interleaved: bool = False) -> torch.Tensor:
    """``rms_norm_rope_cache`` without the norms."""
    check_cache("rope_cache", q, k, v, k_cache, v_cache, index, append=False)
    return bi_rope(q, k, cos, sin, cache=(v, k_cache, v_cache, index), interleaved=interleaved)[0]


@bi_op("rope_append", mutates_args=("k_cache", "v_cache", "cache_length"))
def rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, cache_length: torch.Tensor,
                interleaved: bool = False) -> torch.Tensor:
    """``rms_norm_rope_append`` without the norms."""
    check_cache("rope_append", q, k, v, k_cache, v_cache, cache_length, append=True)
    return bi_rope(q, k, cos, sin, cache=(v, k_cache, v_cache, cache_length), append=True, interleaved=interleaved)[0]


@bi_op("rope_paged", mutates_args=("k_cache", "v_cache"))
def rope_paged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
               interleaved: bool = False) -> torch.Tensor:
    """``rms_norm_rope_paged`` without the norms."""
    check_cache("rope_paged", q, k, v, k_cache, v_cache, slot_mapping, append=False, paged=True)
    return bi_rope(q, k, cos, sin, cache=(v, k_cache, v_cache, slot_mapping), paged=True, interleaved=interleaved)[0]


def _rotated_query(q: torch.Tensor, *args: object) -> torch.Tensor:
    """The cache-writing ops' fake: they return the rotated query; the caches change in place."""
    return _rotated(q)


for _op in (rms_norm_rope_cache, rms_norm_rope_append, rms_norm_rope_paged, rope_cache, rope_append, rope_paged):
    _op.register_fake(_rotated_query)


def _eps(eps: list[float], eps_tensors: list[torch.Tensor | None]) -> tuple[float, float]:
    first, second = (eps_value(e, t) for e, t in zip(eps, eps_tensors, strict=True))
    return first, second
