"""``ascend_bi::attention``: scaled dot-product attention with a fixed key split size."""

from __future__ import annotations

import torch

from ascend_compile.kernels.attention import bi_attention
from ascend_compile.ops.library import bi_op


@bi_op("attention")
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
              scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None = None,
              masked_score: float | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on (batch, heads, length, dim) inputs; GQA when k/v have
    fewer heads; boolean or additive ``mask``; output stored as (batch, length, heads, dim) when
    ``heads_inner`` (the layout of the SDPA kernel it replaces), else contiguous.  ``scale_tensor``
    (a CPU scalar, as Dynamo passes a model's float attributes) overrides ``scale``; a boolean mask
    adds ``masked_score`` where False (None: -inf, the key is skipped)."""
    if scale_tensor is not None:
        scale = float(scale_tensor)
    return bi_attention(q, k, v, mask, is_causal, scale, heads_inner=heads_inner,
                        masked_score=float("-inf") if masked_score is None else masked_score)


@attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
      scale: float | None, heads_inner: bool, scale_tensor: torch.Tensor | None = None,
      masked_score: float | None = None) -> torch.Tensor:
    batch, heads, length, _ = q.shape
    if heads_inner:
        return q.new_empty((batch, length, heads, v.shape[-1])).transpose(1, 2)
    return q.new_empty((batch, heads, length, v.shape[-1]))


@bi_op("paged_attention")
def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor | None, mask: torch.Tensor | None, is_causal: bool, scale: float | None,
                    heads_inner: bool, scale_tensor: torch.Tensor | None = None,
                    masked_score: float | None = None) -> torch.Tensor:
    """``attention`` over a paged cache read in place: ``k_cache``/``v_cache`` (blocks, keys a block, heads,
    dim), sequence ``b``'s keys its ``block_tables[b]`` blocks in order; ``seq_lens[b]`` keys of them seen
    (None: all, or as ``mask`` says).  The bits of ``attention`` on the gathered keys."""
    if scale_tensor is not None:
        scale = float(scale_tensor)
    return bi_attention(q, k_cache, v_cache, mask, is_causal, scale, heads_inner=heads_inner,
                        masked_score=float("-inf") if masked_score is None else masked_score,
                        block_tables=block_tables, seq_lens=seq_lens)


@paged_attention.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
      seq_lens: torch.Tensor | None, mask: torch.Tensor | None, is_causal: bool, scale: float | None,
      heads_inner: bool, scale_tensor: torch.Tensor | None = None, masked_score: float | None = None) -> torch.Tensor:
    batch, heads, length, _ = q.shape
    if heads_inner:
        return q.new_empty((batch, length, heads, v_cache.shape[-1])).transpose(1, 2)
    return q.new_empty((batch, heads, length, v_cache.shape[-1]))
