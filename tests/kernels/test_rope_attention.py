"""A decode step's norms, rotation, cache writes and attention in one launch (``bi_rope_attention``,
interpreter): the bits of the norm-and-rotate launch followed by attention -- output, caches and write
position -- with or without query/key norms, appending or at given slots, under the serial and the
split schedule, and a sequence's bits alone equal its bits in a batch."""

from __future__ import annotations

import pytest
import torch

import ascend_compile.ops  # noqa: F401
from ascend_compile.kernels.plans import AttentionSchedule
from ascend_compile.kernels.rope_attention import bi_rope_attention, bi_rope_attention_grown
from tests.kernels.test_rope import EPS, inputs

bi = torch.ops.ascend_bi
SLOTS = 520  # two key splits of the interpreter's plan (512 keys): the step's slots in the first or the second
HEADS, KV_HEADS, DIM = 4, 2, 32
SPLIT = AttentionSchedule(block_m=16, split=True, num_warps=4)


def _case(batch: int, length: int, start: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(q, k, v, weights, cos, sin, k_cache, v_cache, position) and the mask of keys up to the step's last."""
    q, k, v, weights, cos, sin = inputs(batch, length, torch.bfloat16, heads=HEADS, kv_heads=KV_HEADS, dim=DIM)
    gen = torch.Generator().manual_seed(1)
    caches = [torch.randn(batch, KV_HEADS, SLOTS, DIM, generator=gen).to(torch.bfloat16) for _ in range(2)]
    keys = torch.arange(SLOTS)
    mask = (keys[None, :] <= start + torch.arange(length)[:, None]).expand(batch, 1, length, SLOTS)
    return [q, k, v, weights, cos, sin, *caches, torch.tensor([start])], mask


def _two_launches(case: list, mask: torch.Tensor, norm: bool, append: bool) -> list[torch.Tensor]:
    q, k, v, weights, cos, sin, k_cache, v_cache, position = case
    index = position if append else position + torch.arange(q.shape[1])
    if norm:
        op = bi.rms_norm_rope_append if append else bi.rms_norm_rope_cache
        q_rot = op(q, k, v, list(weights), list(EPS), [None, None], cos, sin, k_cache, v_cache, index)
    else:
        q_rot = (bi.rope_append if append else bi.rope_cache)(q, k, v, cos, sin, k_cache, v_cache, index)
    return [bi.attention(q_rot, k_cache, v_cache, mask, False, None, False), k_cache, v_cache, position]


def _fused(case: list, mask: torch.Tensor, norm: bool, append: bool,
           schedule: AttentionSchedule | None = None) -> list[torch.Tensor]:
    q, k, v, weights, cos, sin, k_cache, v_cache, position = case
    index = position if append else position + torch.arange(q.shape[1])
    out = bi_rope_attention(q, k, v, weights if norm else None, EPS if norm else None, cos, sin, k_cache, v_cache,
                            index, append=append, mask=mask, schedule=schedule)
    return [out, k_cache, v_cache, position]


def _copy(case: list) -> list:
    return [t.clone() if isinstance(t, torch.Tensor) else t for t in case]


#: Steps (length, write position, schedule) by rotation forms (norm, append): the default suite runs each step in
#: one form and each form once (the diagonal), the slow suite every pair.
_STEPS = [(1, 515, None), (1, 515, SPLIT), (1, 100, SPLIT), (3, 510, SPLIT)]
_FORMS = [(True, True), (True, False), (False, True), (False, False)]
ONE_LAUNCH_CASES = [pytest.param(norm, append, *step, marks=() if i == j else pytest.mark.slow)
                    for i, step in enumerate(_STEPS) for j, (norm, append) in enumerate(_FORMS)]


@pytest.mark.parametrize(("norm", "append", "length", "start", "schedule"), ONE_LAUNCH_CASES)
def test_one_launch_has_the_bits_of_two(norm: bool, append: bool, length: int, start: int,
                                        schedule: AttentionSchedule | None) -> None:
    case, mask = _case(3, length, start)
    want = _two_launches(_copy(case), mask, norm, append)
    got = _fused(_copy(case), mask, norm, append, schedule)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert int(got[3]) == start + (length if append else 0)
    written = slice(start, start + length)
    assert not torch.equal(got[1][:, :, written], case[6][:, :, written])  # the step's keys went in
    alone = _fused(_copy([t[:1] if isinstance(t, torch.Tensor) and t.shape[0] == 3 else t for t in case]),
                   mask[:1], norm, append, schedule)
    assert all(torch.equal(a, g[:1]) for a, g in zip(alone[:3], got[:3], strict=True))
    # Negative control: another write position gives the step's query other keys.
    moved = _fused(_copy(case[:8] + [torch.tensor([start - 1])]), mask, norm, append, schedule)
    assert not torch.equal(moved[0], got[0])


def test_longer_steps_take_the_two_launches() -> None:
    """Past one row block of query and key rows (16: five positions of two query heads and a key here), the
    same bits by two launches."""
    case, mask = _case(1, 9, 200)
    want = _two_launches(_copy(case), mask, True, True)
    got = _fused(_copy(case), mask, True, True)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_bad_cache_is_named() -> None:
    case, mask = _case(1, 1, 10)
    case[7] = case[7][:, :1]
    with pytest.raises(ValueError, match="do not fit key"):
        _fused(case, mask, True, True)


def _grown_separately(q, k, v, weights, cos, sin, past_k, past_v, norm: bool, interleaved: bool = False,
                      form: int = 0, is_causal: bool = False) -> list[torch.Tensor]:
    """The rotation, ``torch.cat`` of each cache and attention, as three ops."""
    if norm:
        q_rot, k_rot = bi.rms_norm_rope(q, k, list(weights), list(EPS), [None, None], cos, sin, interleaved, form)
    else:
        q_rot, k_rot = bi.rope(q, k, cos, sin, interleaved)
    keys, values = torch.cat((past_k, k_rot), 2), torch.cat((past_v, v.transpose(1, 2)), 2)
    return [bi.attention(q_rot, keys, values, None, is_causal, None, False), keys, values]


@pytest.mark.parametrize(("norm", "length", "past", "schedule"), [
    (True, 1, 515, None), (True, 1, 515, SPLIT), (False, 1, 100, SPLIT), (True, 3, 510, SPLIT), (False, 9, 200, None)])
def test_grown_caches_have_the_bits_of_rotation_cat_attention(norm: bool, length: int, past: int,
                                                             schedule: AttentionSchedule | None) -> None:
    """Pasts across one and two key splits, the serial and the split schedule; nine positions take the
    separate launches."""
    q, k, v, weights, cos, sin = inputs(3, length, torch.bfloat16, heads=HEADS, kv_heads=KV_HEADS, dim=DIM)
    gen = torch.Generator().manual_seed(1)
    pasts = [torch.randn(3, KV_HEADS, past, DIM, generator=gen).to(torch.bfloat16) for _ in range(2)]
    norms = (weights, EPS) if norm else (None, None)
    got = bi_rope_attention_grown(q, k, v, *norms, cos, sin, *pasts, schedule=schedule)
    want = _grown_separately(q, k, v, weights, cos, sin, *pasts, norm)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    alone = bi_rope_attention_grown(q[:1], k[:1], v[:1], *norms, cos, sin, *(p[:1] for p in pasts),
                                    schedule=schedule)
    assert all(torch.equal(a, g[:1]) for a, g in zip(alone, got, strict=True))
    # Negative control: a past one key shorter gives the query other keys.
    shorter = bi_rope_attention_grown(q, k, v, *norms, cos, sin, *(p[:, :, 1:] for p in pasts), schedule=schedule)
    assert not torch.equal(shorter[0], got[0])


def test_grown_caches_are_whole_when_causal_attention_skips_splits() -> None:
    """SDPA's ``is_causal`` lets a decode step's query see the first key alone, so the serial schedule
    folds no split past the first; the grown caches still hold every past key (negative control: the
    query then attends to other keys than without ``is_causal``)."""
    q, k, v, weights, cos, sin = inputs(2, 1, torch.bfloat16, heads=HEADS, kv_heads=KV_HEADS, dim=DIM)
    gen = torch.Generator().manual_seed(3)
    pasts = [torch.randn(2, KV_HEADS, 515, DIM, generator=gen).to(torch.bfloat16) for _ in range(2)]
    got = bi_rope_attention_grown(q, k, v, weights, EPS, cos, sin, *pasts, is_causal=True)
    want = _grown_separately(q, k, v, weights, cos, sin, *pasts, True, is_causal=True)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert not torch.equal(bi_rope_attention_grown(q, k, v, weights, EPS, cos, sin, *pasts)[0], got[0])


@pytest.mark.parametrize(("interleaved", "form", "schedule"), [(True, 0, SPLIT), (False, 3, None)],
                         ids=["gptj-split", "gemma-norms-serial"])
def test_rotation_forms_have_the_bits_of_the_rotation_launch(interleaved: bool, form: int,
                                                            schedule: AttentionSchedule | None) -> None:
    """GPT-J's interleaved pairs, and Gemma's norm form, rotate in the attention launch as in the norm-and-rotate
    launch; negative control: the default form's launch gives other bits."""
    q, k, v, weights, cos, sin = inputs(2, 1, torch.bfloat16, heads=HEADS, kv_heads=KV_HEADS, dim=DIM)
    gen = torch.Generator().manual_seed(2)
    pasts = [torch.randn(2, KV_HEADS, 515, DIM, generator=gen).to(torch.bfloat16) for _ in range(2)]
    got = bi_rope_attention_grown(q, k, v, weights, EPS, cos, sin, *pasts, interleaved=interleaved, form=form,
                                  schedule=schedule)
    want = _grown_separately(q, k, v, weights, cos, sin, *pasts, True, interleaved=interleaved, form=form)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert not torch.equal(bi_rope_attention_grown(q, k, v, weights, EPS, cos, sin, *pasts, schedule=schedule)[0],
                           got[0])


def test_bad_past_is_named() -> None:
    q, k, v, weights, cos, sin = inputs(1, 1, torch.bfloat16, heads=HEADS, kv_heads=KV_HEADS, dim=DIM)
    past = torch.zeros(1, KV_HEADS, 4, DIM, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="must both be"):
        bi_rope_attention_grown(q, k, v, weights, EPS, cos, sin, past, past[:, :1])
    with pytest.raises(ValueError, match="bi_rope_attention_grown: key .* does not match query"):
        bi_rope_attention_grown(q, k[..., :DIM // 2], v, weights, EPS, cos, sin, past, past)
