"""A decode step's norms, rotation, cache writes and attention in one launch on a CUDA GPU at Qwen3-0.6B's
attention shapes (16 query and 8 key/value heads of 128, bf16, a 520-slot static cache, keys up to the
step's visible): the bits of the two launches at batches 1, 8 and 32 under the shipped schedule (key
splits in parallel programs), 64 appends in a row included, and sequence 0's bits in every batch; over
caches grown by ``cat``, the bits of the rotation, the two ``cat``s and attention."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops  # noqa: F401
from ascend_compile.kernels.rope_attention import bi_rope_attention, bi_rope_attention_grown
from tests.kernels.test_rope import EPS
from tests.kernels.test_rope_gpu import qwen3_step

pytestmark = pytest.mark.gpu
bi = torch.ops.ascend_bi
SLOTS = 520


def _steps(batch: int, fused: bool, steps: int, start: int = 450) -> list[torch.Tensor]:
    """``steps`` decode steps appending from ``start``: each step's attention output, then the caches."""
    q, k, v, weights, cos, sin, k_cache, v_cache = qwen3_step(batch)
    position = torch.tensor([start], device="cuda")
    outs = []
    for step in range(steps):
        mask = (torch.arange(SLOTS, device="cuda") <= start + step).expand(batch, 1, 1, SLOTS)
        qs, ks, vs = (t * (1 + step / 64) for t in (q, k, v))  # another query, key and value each step
        if fused:
            outs.append(bi_rope_attention(qs, ks, vs, tuple(weights), EPS, cos, sin, k_cache, v_cache, position,
                                          append=True, mask=mask))
        else:
            q_rot = bi.rms_norm_rope_append(qs, ks, vs, weights, list(EPS), [None, None], cos, sin, k_cache, v_cache,
                                            position)
            outs.append(bi.attention(q_rot, k_cache, v_cache, mask, False, None, False))
    assert int(position) == start + steps
    return [*outs, k_cache, v_cache]


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_qwen3_decode_steps_have_the_bits_of_two_launches(batch: int) -> None:
    fused, separate = _steps(batch, True, 64), _steps(batch, False, 64)
    assert all(torch.equal(f, s) for f, s in zip(fused, separate, strict=True))
    alone = _steps(1, True, 64)
    assert all(torch.equal(a, f[:1]) for a, f in zip(alone, fused, strict=True))


@pytest.mark.parametrize(("batch", "past"), [(1, 511), (8, 512), (32, 200)])
def test_caches_grown_by_cat_have_the_bits_of_three_ops(batch: int, past: int) -> None:
    """A hand-written model's step: pasts ending inside, at and before a key split's end."""
    q, k, v, weights, cos, sin, k_cache, v_cache = qwen3_step(batch)
    pasts = [c[:, :, :past] for c in (k_cache, v_cache)]
    got = bi_rope_attention_grown(q, k, v, tuple(weights), EPS, cos, sin, *pasts)
    q_rot, k_rot = bi.rms_norm_rope(q, k, weights, list(EPS), [None, None], cos, sin)
    keys, values = torch.cat((pasts[0], k_rot), 2), torch.cat((pasts[1], v.transpose(1, 2)), 2)
    want = [bi.attention(q_rot, keys, values, None, False, None, False), keys, values]
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    alone = bi_rope_attention_grown(q[:1], k[:1], v[:1], tuple(weights), EPS, cos, sin, *(p[:1] for p in pasts))
    assert all(torch.equal(a, g[:1]) for a, g in zip(alone, got, strict=True))
    # Negative control: a past one key shorter gives the query other keys.
    shorter = bi_rope_attention_grown(q, k, v, tuple(weights), EPS, cos, sin, *(p[:, :, 1:] for p in pasts))
    assert not torch.equal(shorter[0], got[0])
