"""The norm + rotary embedding (+ cache write) template under the interpreter: bit for bit the norm
pair followed by transformers' ``apply_rotary_pos_emb`` and ``index_copy_`` into the caches, close to
float64, and a position's bits do not depend on the batch around it."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops  # noqa: F401
from ascend_compile.kernels import rope
from ascend_compile.kernels.plans import UnsupportedPlan
from ascend_compile.kernels.rms_norm import NormForm
from ascend_compile.kernels.rope import bi_rms_norm_rope
from tests.helpers import rel_error

bi = torch.ops.ascend_bi
EPS = (1e-6, 1e-5)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """transformers' GPT-J: each even element paired with the odd one after it."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def separate(q, k, weights, cos, sin, norm=lambda x, w, e: bi.rms_norm(x, w, e), rotate=rotate_half):
    """What the graph runs without the fusion: the norms, the transpose, then the rotation op by op."""
    qn, kn = (norm(x, w, e).transpose(1, 2) for x, w, e in zip((q, k), weights, EPS, strict=True))
    return tuple(x * cos + rotate(x) * sin for x in (qn, kn))


def inputs(batch: int, length: int, dtype: torch.dtype, heads: int = 4, kv_heads: int = 2, dim: int = 64,
           seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, length, heads, dim, generator=gen).to(dtype)
    k = torch.randn(batch, length, kv_heads, dim, generator=gen).to(dtype)
    v = torch.randn(batch, length, kv_heads, dim, generator=gen).to(dtype)
    weights = tuple(torch.rand(dim, generator=gen).to(dtype) + 0.5 for _ in range(2))
    angles = torch.rand(1, 1, length, dim // 2, generator=gen) * 50
    angles = torch.cat((angles, angles), dim=-1)
    return q, k, v, weights, angles.cos().to(dtype), angles.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_the_separate_ops_and_float64(dtype: torch.dtype) -> None:
    q, k, _, weights, cos, sin = inputs(3, 2, dtype)
    got = bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin)
    want = separate(q, k, weights, cos, sin)
    assert all(g.is_contiguous() and torch.equal(g, w) for g, w in zip(got, want, strict=True))
    float64 = [t.double() for t in (q, k, *weights, cos, sin)]

    def norm64(x, w, e):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + e)

    reference = separate(*float64[:2], float64[2:4], *float64[4:], norm=norm64)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert all(rel_error(g, r) < tolerance for g, r in zip(got, reference, strict=True))
    # Negative control: the test sees the key's epsilon and the angles.
    assert not torch.equal(bi.rms_norm_rope(q, k, list(weights), [EPS[0], 0.5], [None, None], cos, sin)[1], want[1])
    assert not torch.equal(bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], sin, cos)[0], want[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_writes_land_at_the_step_slots(dtype: torch.dtype) -> None:
    """With caches, the rotated key and the value go to slots ``index`` of each sequence's cache,
    in place; every other slot keeps its contents."""
    q, k, v, weights, cos, sin = inputs(3, 2, dtype, seed=1)
    k_cache, v_cache = (torch.randn(3, 2, 9, 64, generator=torch.Generator().manual_seed(s)).to(dtype) for s in (2, 3))
    index = torch.tensor([5, 6])
    want_k, want_v = k_cache.clone(), v_cache.clone()
    q_rot, k_rot = separate(q, k, weights, cos, sin)
    want_k.index_copy_(2, index, k_rot)
    want_v.index_copy_(2, index, v.transpose(1, 2))
    got = bi.rms_norm_rope_cache(q, k, v, list(weights), list(EPS), [None, None], cos, sin, k_cache, v_cache, index)
    assert torch.equal(got, q_rot) and torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@pytest.mark.parametrize("start", [0, 5])
def test_appending_writes_at_the_write_position_and_advances_it(start: int) -> None:
    """Appending is ``rms_norm_rope_cache`` at ``arange(length) + position``, and the position (a
    0-dim int64, as transformers keeps it) advances by the length; called again, the next step
    lands after it.  Negative control: another position writes other slots."""
    q, k, v, weights, cos, sin = inputs(3, 2, torch.bfloat16, seed=1)
    caches = [torch.randn(3, 2, 9, 64, generator=torch.Generator().manual_seed(s)).bfloat16() for s in (2, 3)]
    want = [c.clone() for c in caches]
    position = torch.tensor(start)
    args = (q, k, v, list(weights), list(EPS), [None, None], cos, sin)
    for step in range(2):
        index = torch.arange(2) + start + 2 * step
        want_q = bi.rms_norm_rope_cache(*args, *want, index)
        got_q = bi.rms_norm_rope_append(*args, *caches, position)
        assert torch.equal(got_q, want_q) and all(torch.equal(c, w) for c, w in zip(caches, want, strict=True))
        assert position.item() == start + 2 * (step + 1)
    elsewhere = [c.clone() for c in caches]
    bi.rms_norm_rope_append(*args, *elsewhere, torch.tensor(start + 1))
    assert not torch.equal(elsewhere[0], want[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_norms_equals_the_rotation(dtype: torch.dtype) -> None:
    """Layers without query/key norms: ``ascend_bi::rope`` has the bits of transformers' rotation of
    the projections as they are, and the cache forms write what ``index_copy_`` writes.  Negative
    control: the angles are seen."""
    q, k, v, _, cos, sin = inputs(3, 2, dtype, seed=6)
    want = separate(q, k, (None, None), cos, sin, norm=lambda x, w, e: x)
    assert all(torch.equal(g, w) for g, w in zip(bi.rope(q, k, cos, sin), want, strict=True))
    assert not torch.equal(bi.rope(q, k, sin, cos)[0], want[0])
    caches = [torch.zeros(3, 2, 9, 64, dtype=dtype) for _ in range(4)]
    position = torch.tensor(4)
    got_q = bi.rope_cache(q, k, v, cos, sin, *caches[:2], torch.tensor([4, 5]))
    appended_q = bi.rope_append(q, k, v, cos, sin, *caches[2:], position)
    assert torch.equal(got_q, want[0]) and torch.equal(appended_q, want[0]) and position.item() == 6
    assert torch.equal(caches[0][:, :, 4:6], want[1]) and torch.equal(caches[1][:, :, 4:6], v.transpose(1, 2))
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("norm", [True, False])
def test_paged_writes_land_at_each_tokens_slot(norm: bool) -> None:
    """vLLM's paged cache (blocks, block size, kv heads, dim): token ``t``'s rotated key and its value go
    to slot ``slots[t]`` as ``index_copy_`` through the merged view puts them, whatever tokens come with
    it; every other slot keeps its contents.  Negative control: other slots write other rows."""
    tokens = 5
    q, k, v, weights, cos, sin = inputs(tokens, 1, torch.bfloat16, seed=7)
    angles = torch.rand(tokens, 1, 1, 32, generator=torch.Generator().manual_seed(8)) * 50
    cos, sin = torch.cat((angles, angles), -1).cos().bfloat16(), torch.cat((angles, angles), -1).sin().bfloat16()
    caches = [torch.randn(6, 4, 2, 64, generator=torch.Generator().manual_seed(s)).bfloat16() for s in (2, 3)]
    slots = torch.tensor([17, 3, 23, 8, 0])

    def paged(n: int, at: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        written = [c.clone() for c in caches]
        args = (list(weights), list(EPS), [None, None]) if norm else ()
        op = bi.rms_norm_rope_paged if norm else bi.rope_paged
        return op(q[:n], k[:n], v[:n], *args, cos[:n], sin[:n], *written, at[:n]), written

    got_q, got = paged(tokens, slots)
    want_q, want_k = separate(q, k, weights, cos, sin, **({} if norm else {"norm": lambda x, w, e: x}))
    want = [c.clone() for c in caches]
    for cache, new in zip(want, (want_k, v.transpose(1, 2)), strict=True):
        cache.view(-1, 2, 64).index_copy_(0, slots, new.reshape(tokens, 2, 64))
    assert torch.equal(got_q, want_q) and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    alone_q, alone = paged(1, slots)
    assert torch.equal(alone_q[0], got_q[0]) and torch.equal(alone[0].view(-1, 2, 64)[17], got[0].view(-1, 2, 64)[17])
    assert not torch.equal(paged(tokens, slots.roll(1))[1][0], got[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interleaved_pairs_equal_gptjs_rotation(dtype: torch.dtype) -> None:
    """``interleaved``: GPT-J's ``x * cos + rotate_every_two(x) * sin`` with each angle twice in a row, with
    and without the norms, the paged writes too.  Negative control: ``rotate_half``'s bits differ."""
    q, k, v, weights, _, _ = inputs(4, 1, dtype, seed=9)
    angles = (torch.rand(4, 1, 1, 32, generator=torch.Generator().manual_seed(10)) * 50).repeat_interleave(2, -1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    got = bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin, interleaved=True)
    want = separate(q, k, weights, cos, sin, rotate=rotate_every_two)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert not torch.equal(bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin)[0], want[0])
    caches = [torch.zeros(2, 4, 2, 64, dtype=dtype) for _ in range(2)]
    slots = torch.tensor([5, 0, 7, 2])
    got_q = bi.rope_paged(q, k, v, cos, sin, *caches, slots, interleaved=True)
    want_q, want_k = separate(q, k, weights, cos, sin, norm=lambda x, w, e: x, rotate=rotate_every_two)
    assert torch.equal(got_q, want_q)
    assert torch.equal(caches[0].view(-1, 2, 64)[slots], want_k.reshape(4, 2, 64))


@pytest.mark.parametrize("interleaved", [False, True])
def test_a_head_short_of_the_block_pairs_within_the_head(interleaved: bool) -> None:
    """A head dim of 48 runs on 64 lanes: ``rotate_half`` pairs a column with the one 24 away (not 32, half
    the lanes), GPT-J's with its neighbour; the bits are the separate ops' either way.  Negative control:
    pairing half the lanes apart gives other bits."""
    q, k, _, weights, _, _ = inputs(3, 2, torch.bfloat16, dim=48, seed=12)
    angles = torch.rand(1, 1, 2, 24, generator=torch.Generator().manual_seed(13)) * 50
    angles = angles.repeat_interleave(2, -1) if interleaved else torch.cat((angles, angles), -1)
    cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()
    got = bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin, interleaved=interleaved)
    want = separate(q, k, weights, cos, sin, rotate=rotate_every_two if interleaved else rotate_half)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))

    def half_the_lanes_apart(x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, (0, 16))
        return rotate_half(padded)[..., :48]

    assert not torch.equal(got[0], separate(q, k, weights, cos, sin, rotate=half_the_lanes_apart)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemmas_norm_form_equals_its_norm_then_the_rotation(dtype: torch.dtype) -> None:
    """``form``: the norms round as ``rms_norm`` with that form (Gemma's fp32 ``1 + w`` weight) before the
    rotation; a form with a residual flag is refused by name."""
    q, k, _, weights, cos, sin = inputs(3, 2, dtype, seed=11)
    form = int(NormForm.WEIGHT_FP32 | NormForm.WEIGHT_PLUS_ONE)
    got = bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin, form=form)
    want = separate(q, k, weights, cos, sin, norm=lambda x, w, e: bi.rms_norm(x, w, e, form=form))
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    if dtype == torch.bfloat16:  # negative control: Llama's rounding
        assert not torch.equal(bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin)[0], want[0])
    with pytest.raises(ValueError, match="WEIGHT_FP32 and WEIGHT_PLUS_ONE"):
        bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin, form=int(NormForm.FP32_SUM))


def test_a_position_has_its_bits_in_every_batch() -> None:
    """Sequence 0's rotated query and key alone equal its rows inside batches of 2 and 5 whose other
    sequences are random (bf16, per-sequence angles); a different sequence 0 gives other bits."""
    q, k, _, weights, _, _ = inputs(5, 3, torch.bfloat16, seed=4)
    angles = torch.rand(5, 1, 3, 64, generator=torch.Generator().manual_seed(5)) * 50
    cos, sin = angles.cos().bfloat16(), angles.sin().bfloat16()

    def run(b: int) -> tuple[torch.Tensor, ...]:
        return bi.rms_norm_rope(q[:b], k[:b], list(weights), list(EPS), [None, None], cos[:b], sin[:b])

    alone = run(1)
    for b in (2, 5):
        assert all(torch.equal(a[0], p[0]) for a, p in zip(alone, run(b), strict=True))
    other = bi.rms_norm_rope(q[1:2], k[1:2], list(weights), list(EPS), [None, None], cos[:1], sin[:1])
    assert not torch.equal(other[0], alone[0])


@pytest.mark.parametrize("heads_per_program", [1, 2, 4])
def test_heads_per_program_is_a_schedule(heads_per_program: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Programs of fewer heads than the default (on GPUs 1024 elements, ``plans.rope_heads_per_program``), some
    of their rows past the last head (3 query heads), give the same query bits and cache writes."""
    q, k, v, weights, cos, sin = inputs(2, 3, torch.bfloat16, heads=6, kv_heads=3, seed=6)
    index = torch.tensor([1, 3, 4])

    def run() -> tuple[torch.Tensor, ...]:
        caches = [torch.zeros(2, 3, 5, 64, dtype=torch.bfloat16) for _ in range(2)]
        q_rot = bi.rms_norm_rope_cache(q, k, v, list(weights), list(EPS), [None, None], cos, sin, *caches, index)
        return q_rot, *caches

    default = run()
    monkeypatch.setattr(rope, "rope_heads_per_program", lambda *args: heads_per_program)
    assert all(torch.equal(a, b) for a, b in zip(default, run(), strict=True))


def test_bad_inputs_name_the_problem() -> None:
    q, k, v, weights, cos, sin = inputs(2, 1, torch.float32, dim=6)
    with pytest.raises(UnsupportedPlan, match="even head dim"):
        bi_rms_norm_rope(q[..., :5], k[..., :5], (weights[0][:5], weights[1][:5]), EPS, cos[..., :5], sin[..., :5])
    with pytest.raises(ValueError, match="does not match query"):
        bi_rms_norm_rope(q, k[:1], weights, EPS, cos, sin)
    with pytest.raises(ValueError, match="append=True writes to a cache"):
        bi_rms_norm_rope(q, k, weights, EPS, cos, sin, append=True)
    with pytest.raises(ValueError, match="write position, one int64"):
        bi_rms_norm_rope(q, k, weights, EPS, cos, sin, (v, k.transpose(1, 2), k.transpose(1, 2), torch.tensor(0.0)),
                         append=True)
    with pytest.raises(ValueError, match="must broadcast over heads"):
        bi_rms_norm_rope(q, k, weights, EPS, cos.expand(1, 2, 1, 6), sin)
    with pytest.raises(ValueError, match="do not fit key"):
        bi_rms_norm_rope(q, k, weights, EPS, cos, sin, cache=(v, torch.zeros(2, 2, 4, 6), torch.zeros(2, 2, 4, 6),
                                                              torch.tensor([0, 1])))
