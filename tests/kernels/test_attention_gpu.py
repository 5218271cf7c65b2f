"""The attention template on a CUDA GPU: decode == prefill, both schedules agree, a GQA group's packed
heads equal each head alone, every mask form gives one result; bf16 and fp32."""

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
    bits (the additive mask's 64-row blocks run with 8 warps, the others with 4), and a decode step
    with every key visible gives the prefill's row."""
    gen = torch.Generator("cuda").manual_seed(2)
    q, k, v = (torch.randn(1, h, 300, 128, device="cuda", generator=gen).to(torch.bfloat16) for h in (16, 8, 8))
    keep = torch.ones(300, 300, dtype=torch.bool, device="cuda").tril()[None, None]
    additive = torch.zeros(keep.shape, dtype=torch.bfloat16, device="cuda").masked_fill(~keep, float("-inf"))
    causal = bi_attention(q, k, v, is_causal=True)
    assert torch.equal(bi_attention(q, k, v, keep), causal)
    assert torch.equal(bi_attention(q, k, v, additive), causal)
    decode = bi_attention(q[:, :, 290:291], k[:, :, :291], v[:, :, :291], keep[:, :, :1, :291] | True)
    assert torch.equal(decode[:, :, 0], causal[:, :, 290])


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_mask_forms_agree_in_a_static_cache_decode_on_gpu(batch: int) -> None:
    """A decode step over a 520-key static cache with 513 keys written (the decode bench's shape):
    the boolean mask, the additive masks SDPA's conversions make of it (-inf; cuDNN's -65504,
    which the template takes as ``masked_score``) and the keys cut at 513 give one result.  The
    boolean and additive paths once differed by an ulp at batches 8 and 32: the compiler
    contracted different products into FMAs in the two."""
    gen = torch.Generator("cuda").manual_seed(batch)
    q = torch.randn(batch, 16, 1, 128, device="cuda", generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(batch, 8, 520, 128, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    keep = (torch.arange(520, device="cuda") < 513).expand(batch, 1, 1, 520).contiguous()
    expected = bi_attention(q, k[:, :, :513], v[:, :, :513])
    assert torch.equal(bi_attention(q, k, v, keep), expected)
    assert torch.equal(bi_attention(q, k, v, torch.where(keep, 0.0, float("-inf")).to(torch.bfloat16)), expected)
    cudnn_form = torch.where(keep, 0.0, -65504.0).to(torch.bfloat16)  # rounds to -65536
    assert torch.equal(bi_attention(q, k, v, keep, masked_score=-65536.0), bi_attention(q, k, v, cudnn_form))
