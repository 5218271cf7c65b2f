"""The attention template on a CUDA GPU: decode == prefill, both schedules agree, a GQA group's packed
heads equal each head alone; bf16 and fp32."""

from __future__ import annotations

import pytest
import torch

from ascend_compile.kernels.attention import bi_attention
from ascend_compile.kernels.plans import AttentionSchedule

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_equals_prefill_and_schedules_agree_on_gpu(dtype: torch.dtype) -> None:
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, h, 1100, 128, device="cuda", generator=gen).to(dtype) for h in (16, 8, 8))
    prefill = bi_attention(q, k, v, is_causal=True)
    for t in (0, 255, 256, 1099):
        for split in (False, True):
            decode = bi_attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1],
                                  schedule=AttentionSchedule(block_m=16, split=split, num_warps=4))
            assert torch.equal(decode[:, :, 0], prefill[:, :, t]), (t, split)
    alone = bi_attention(q[1:], k[1:], v[1:], is_causal=True)
    assert torch.equal(alone, prefill[1:])
    one_head = bi_attention(q[:, 5:6], k[:, 2:3], v[:, 2:3], is_causal=True)  # group of 2 packed into one tile
    assert torch.equal(one_head, prefill[:, 5:6])


def test_boolean_additive_and_causal_masks_give_one_result_on_gpu() -> None:
    """A boolean causal mask, the additive mask SDPA would make of it and ``is_causal`` hide the
    same keys, and a hidden key adds an exact zero: the compiled kernel gives all three the same
    bits, and a decode step with every key visible gives the prefill's row."""
    gen = torch.Generator("cuda").manual_seed(2)
    q, k, v = (torch.randn(1, h, 300, 128, device="cuda", generator=gen).to(torch.bfloat16) for h in (16, 8, 8))
    keep = torch.ones(300, 300, dtype=torch.bool, device="cuda").tril()[None, None]
    additive = torch.zeros(keep.shape, dtype=torch.bfloat16, device="cuda").masked_fill(~keep, float("-inf"))
    causal = bi_attention(q, k, v, is_causal=True)
    assert torch.equal(bi_attention(q, k, v, keep), causal)
    assert torch.equal(bi_attention(q, k, v, additive), causal)
    decode = bi_attention(q[:, :, 290:291], k[:, :, :291], v[:, :, :291], keep[:, :, :1, :291] | True)
    assert torch.equal(decode[:, :, 0], causal[:, :, 290])
