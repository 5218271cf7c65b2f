"""The norm + rotary embedding + cache-write template on a CUDA GPU at Qwen3-0.6B's attention shapes
(16 query and 8 key/value heads of 128, bf16, a 520-slot static cache): the bits of the norm pair,
transformers' rotation and ``index_copy_`` at batches 1, 8 and 32, and sequence 0's bits in all; vLLM's
paged cache written at each token's slot."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops  # noqa: F401
from tests.kernels.test_rope import EPS, rotate_every_two, rotate_half, separate

pytestmark = pytest.mark.gpu
bi = torch.ops.ascend_bi


def qwen3_step(batch: int) -> list:
    """Sequence i's query, key and value of one decode step, the norm weights, the angles and the
    520-slot caches, the same for every batch that holds sequence i."""
    gen = torch.Generator("cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=gen).bfloat16()

    q, k, v = randn(32, 1, 16, 128)[:batch], randn(32, 1, 8, 128)[:batch], randn(32, 1, 8, 128)[:batch]
    weights = [randn(128) + 1, randn(128) + 1]
    angles = torch.rand(1, 1, 1, 64, device="cuda", generator=gen) * 500
    cos, sin = (f(torch.cat((angles, angles), -1)).bfloat16() for f in (torch.cos, torch.sin))
    return [q, k, v, weights, cos, sin, *(randn(32, 8, 520, 128)[:batch].contiguous() for _ in range(2))]


def _step(batch: int) -> tuple[torch.Tensor, ...]:
    q, k, v, weights, cos, sin, k_cache, v_cache = qwen3_step(batch)
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


@pytest.mark.parametrize("batch", [1, 32])
def test_appending_advances_the_write_position_once_per_launch(batch: int) -> None:
    """Every program reads the write position before the last to arrive advances it: 64 steps in a
    row land in 64 consecutive slots (each the rows ``rms_norm_rope_cache`` writes at that slot),
    and the position ends 64 further on, with every program of each launch racing."""
    gen = torch.Generator("cuda").manual_seed(1)
    q, k, v = (torch.randn(batch, 1, heads, 128, device="cuda", generator=gen).bfloat16() for heads in (16, 8, 8))
    weights = [torch.rand(128, device="cuda", generator=gen).bfloat16() + 0.5 for _ in range(2)]
    angles = torch.rand(1, 1, 1, 64, device="cuda", generator=gen) * 500
    cos, sin = (f(torch.cat((angles, angles), -1)).bfloat16() for f in (torch.cos, torch.sin))
    caches = [torch.zeros(batch, 8, 80, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    want = [c.clone() for c in caches]
    args = (q, k, v, weights, list(EPS), [None, None], cos, sin)
    position = torch.tensor(3, device="cuda")
    for step in range(64):
        bi.rms_norm_rope_append(*args, *caches, position)
        bi.rms_norm_rope_cache(*args, *want, torch.tensor([3 + step], device="cuda"))
    assert position.item() == 67
    assert all(torch.equal(c, w) for c, w in zip(caches, want, strict=True))
    assert caches[0][:, :, 3:67].abs().sum(-1).all() and not caches[0][:, :, 67:].any()


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_without_norms_equals_the_rotation_on_gpu(batch: int) -> None:
    """Llama-3-8B's attention shapes (32 query and 8 key/value heads of 128, bf16): ``rope_cache``
    has the bits of transformers' rotation and ``index_copy_``."""
    gen = torch.Generator("cuda").manual_seed(2)
    q, k, v = (torch.randn(batch, 1, heads, 128, device="cuda", generator=gen).bfloat16() for heads in (32, 8, 8))
    angles = torch.rand(1, 1, 1, 64, device="cuda", generator=gen) * 500
    cos, sin = (f(torch.cat((angles, angles), -1)).bfloat16() for f in (torch.cos, torch.sin))
    caches = [torch.randn(batch, 8, 520, 128, device="cuda", generator=gen).bfloat16() for _ in range(2)]
    index = torch.tensor([511], device="cuda")
    want_q, want_k = separate(q, k, (None, None), cos, sin, norm=lambda x, w, e: x)
    want = [caches[0].clone().index_copy_(2, index, want_k), caches[1].clone().index_copy_(2, index, v.transpose(1, 2))]
    assert torch.equal(bi.rope_cache(q, k, v, cos, sin, *caches, index), want_q)
    assert all(torch.equal(c, w) for c, w in zip(caches, want, strict=True))


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("tokens", [1, 8, 32])
def test_paged_writes_are_index_copy_through_the_merged_view(tokens: int, interleaved: bool) -> None:
    """vLLM's paged cache (64 blocks of 16, 8 heads of 128): each token's rotated key and value land at its
    slot, and the rotated query has the separate ops' bits, rotating halves or GPT-J's interleaved pairs."""
    q, k, v, weights, cos, sin, _, _ = qwen3_step(tokens)
    cos, sin = cos.expand(tokens, 1, 1, 128), sin.expand(tokens, 1, 1, 128)
    caches = [torch.randn(64, 16, 8, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(s)).bfloat16()
              for s in (3, 4)]
    slots = torch.randperm(64 * 16, device="cuda", generator=torch.Generator("cuda").manual_seed(5))[:tokens]
    want_q, want_k = separate(q, k, weights, cos, sin, rotate=rotate_every_two if interleaved else rotate_half)
    want = [c.clone() for c in caches]
    for cache, new in zip(want, (want_k, v.transpose(1, 2)), strict=True):
        cache.view(-1, 8, 128).index_copy_(0, slots, new.reshape(tokens, 8, 128))
    got_q = bi.rms_norm_rope_paged(q, k, v, weights, list(EPS), [None, None], cos, sin, *caches, slots, interleaved)
    assert torch.equal(got_q, want_q) and all(torch.equal(c, w) for c, w in zip(caches, want, strict=True))
