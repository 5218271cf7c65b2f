"""The norm + rotary embedding + cache-write template on a CUDA GPU at Qwen3-0.6B's attention shapes
(16 query and 8 key/value heads of 128, bf16, a 520-slot static cache): the bits of the norm pair,
transformers' rotation and ``index_copy_`` at batches 1, 8 and 32, and sequence 0's bits in all."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops  # noqa: F401
from tests.kernels.test_rope import EPS, separate

pytestmark = pytest.mark.gpu
bi = torch.ops.ascend_bi


def _step(batch: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator("cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=gen).bfloat16()

    q, k, v = randn(32, 1, 16, 128)[:batch], randn(32, 1, 8, 128)[:batch], randn(32, 1, 8, 128)[:batch]
    weights = [randn(128) + 1, randn(128) + 1]
    angles = torch.rand(1, 1, 1, 64, device="cuda", generator=gen) * 500
    cos, sin = (f(torch.cat((angles, angles), -1)).bfloat16() for f in (torch.cos, torch.sin))
    k_cache, v_cache = randn(32, 8, 520, 128)[:batch], randn(32, 8, 520, 128)[:batch]
    index = torch.tensor([512], device="cuda")
    want_q, want_k = separate(q, k, weights, cos, sin)
    want_caches = [k_cache.clone().index_copy_(2, index, want_k),
                   v_cache.clone().index_copy_(2, index, v.transpose(1, 2))]
    got_q = bi.rms_norm_rope_cache(q, k, v, weights, list(EPS), [None, None], cos, sin, k_cache, v_cache, index)
    assert torch.equal(got_q, want_q)
    assert torch.equal(k_cache, want_caches[0]) and torch.equal(v_cache, want_caches[1])
    return got_q, k_cache


def test_qwen3_shapes_equal_the_separate_ops_in_every_batch() -> None:
    alone = _step(1)
    for batch in (8, 32):
        placed = _step(batch)
        assert all(torch.equal(a[0], p[0]) for a, p in zip(alone, placed, strict=True))
