"""The attention template under the interpreter: a query's bits depend only on the keys it sees
(any batch, any companions; prefill == decode); both schedules agree; results match float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ascend_compile.kernels.attention import bi_attention, mask_row
from ascend_compile.kernels.plans import AttentionSchedule
from tests.helpers import all_bitwise_equal, rel_error, rows_in_batches

HEADS, KV_HEADS, DIM = 4, 2, 32
LENGTH = 600  # more than one key split (512 in the interpreter's plan)


def _qkv(batch: int, length: int = LENGTH, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, h, length, DIM, generator=gen).to(dtype) for h in (HEADS, KV_HEADS, KV_HEADS))


def _reference(q, k, v, **kwargs) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(group, 1),
                                          v.double().repeat_interleave(group, 1), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_bitwise_equal_alone_and_in_batches(dtype: torch.dtype) -> None:
    q, k, v = _qkv(1, length=80, dtype=dtype)
    probe = torch.cat([q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)], dim=-1)

    def attend(packed: torch.Tensor) -> torch.Tensor:
        q, k, v = packed.split(DIM, dim=-1)
        return bi_attention(q, k[:, ::2], v[:, ::2], is_causal=True)

    alone, placed = rows_in_batches(attend, probe, batch_sizes=(2, 5))
    assert all_bitwise_equal(alone, placed)
    assert rel_error(alone, _reference(q, k, v, is_causal=True)[0]) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_decode_step_equals_prefill_row() -> None:
    q, k, v = _qkv(2)
    prefill = bi_attention(q, k, v, is_causal=True)
    assert rel_error(prefill, _reference(q, k, v, is_causal=True)) < 1e-5
    for t in (0, 63, 64, 511, 512, LENGTH - 1):  # tile and split boundaries
        decode = bi_attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1])
        assert torch.equal(decode[:, :, 0], prefill[:, :, t]), f"position {t}"


def test_free_cache_slots_change_nothing() -> None:
    """A static cache's free slots, masked out, give the bits of keys that are not there, in both
    schedules (a split's tiles past the last key are not run).  Negative control: one more visible
    key changes the output."""
    q, k, v = _qkv(1)
    q = q[:, :, :1]
    for visible in (70, 513):
        keep = torch.zeros(1, 1, 1, LENGTH, dtype=torch.bool)
        keep[..., :visible] = True
        short = bi_attention(q, k[:, :, :visible], v[:, :, :visible])
        for split in (False, True):
            schedule = AttentionSchedule(block_m=16, split=split, num_warps=4)
            assert torch.equal(bi_attention(q, k, v, keep, schedule=schedule), short), (visible, split)
            assert torch.equal(bi_attention(q, k[:, :, :visible], v[:, :, :visible], schedule=schedule), short)
        keep[..., visible] = True
        assert not torch.equal(bi_attention(q, k, v, keep), short)


def test_stock_sdpa_decode_differs_from_prefill() -> None:
    """Negative control: the same check catches stock SDPA (CPU flash kernel)."""
    q, k, v = _qkv(2)
    group = HEADS // KV_HEADS
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    prefill = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    decodes = {t: F.scaled_dot_product_attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1])
               for t in (63, 511, LENGTH - 1)}
    assert any(not torch.equal(out[:, :, 0], prefill[:, :, t]) for t, out in decodes.items())


def test_group_packing_leaves_each_head_unchanged() -> None:
    """A group's query heads share one tile (rows interleaved per position); each head's bits are
    those it gets attending alone, in prefill and in decode."""
    q, k, v = _qkv(1, length=70)
    for queries in (q, q[:, :, -1:]):
        grouped = bi_attention(queries, k, v, is_causal=queries.shape[2] > 1)
        for h in range(HEADS):
            kv = slice(h // (HEADS // KV_HEADS), h // (HEADS // KV_HEADS) + 1)
            alone = bi_attention(queries[:, h:h + 1], k[:, kv], v[:, kv], is_causal=queries.shape[2] > 1)
            assert torch.equal(grouped[:, h:h + 1], alone), f"head {h}, {queries.shape[2]} queries"


@pytest.mark.parametrize("length", [LENGTH, 2600])
def test_split_and_serial_schedules_agree(length: int) -> None:
    """The split schedule's fold launch reads the stored states four at a time: 2600 keys are six
    splits (one group of four, one short group)."""
    q, k, v = _qkv(1, length=length)
    serial = bi_attention(q[:, :, -3:], k, v, schedule=AttentionSchedule(block_m=16, split=False, num_warps=4))
    split = bi_attention(q[:, :, -3:], k, v, schedule=AttentionSchedule(block_m=16, split=True, num_warps=4))
    assert torch.equal(serial, split)


def test_boolean_and_additive_masks_and_scale() -> None:
    q, k, v = _qkv(1, length=70)
    keep = torch.rand(1, 1, 70, 70, generator=torch.Generator().manual_seed(1)) > 0.3
    keep[..., 0] = True
    assert rel_error(bi_attention(q, k, v, keep), _reference(q, k, v, attn_mask=keep)) < 1e-5
    # A boolean mask is the additive mask where(keep, 0, masked_score), bit for bit, across tiles
    # (the kernel reads each tile's mask a tile ahead).
    for score in (float("-inf"), -1e4):
        additive = torch.where(keep, 0.0, score)
        assert torch.equal(bi_attention(q, k, v, keep, masked_score=score), bi_attention(q, k, v, additive))
    bias = torch.randn(1, HEADS, 70, 70, generator=torch.Generator().manual_seed(2))
    want = _reference(q, k, v, attn_mask=bias.double(), scale=0.3)
    assert rel_error(bi_attention(q, k, v, bias, scale=0.3), want) < 1e-5


def test_decode_mask_shared_by_heads_is_read_as_one_row() -> None:
    """A decode step's mask of shape (batch, 1, 1, keys) is read as one vector per key tile in the
    split schedule (``mask_row``); it gives the bits of the same mask laid out per head and position,
    read per row, in both schedules, boolean and additive.  Negative control: the row read is the
    mask's (one key masked more changes the output), so two paths that both ignored it could not pass."""
    q, k, v = _qkv(2)
    q = q[:, :, :1]
    keep = torch.rand(2, 1, 1, LENGTH, generator=torch.Generator().manual_seed(3)) > 0.2
    for mask in (keep, torch.where(keep, 0.0, -1e4)):
        per_row = mask.expand(2, HEADS, 1, LENGTH).contiguous()
        assert mask_row(mask.expand(2, HEADS, 1, LENGTH), 1, True) and not mask_row(per_row, 1, True)
        assert not mask_row(mask.expand(2, HEADS, 1, LENGTH), 1, False)
        for split in (False, True):
            schedule = AttentionSchedule(block_m=16, split=split, num_warps=4)
            assert torch.equal(bi_attention(q, k, v, mask, schedule=schedule),
                               bi_attention(q, k, v, per_row, schedule=schedule)), (mask.dtype, split)
    fewer = keep.clone()
    fewer[1, 0, 0, int(keep[1, 0, 0].nonzero()[-1])] = False
    assert not torch.equal(bi_attention(q, k, v, fewer)[1], bi_attention(q, k, v, keep)[1])
    assert mask_row(keep.expand(2, HEADS, 3, LENGTH), 3, True)  # three positions, one row for all
    assert not mask_row(torch.ones(2, 1, 3, LENGTH, dtype=torch.bool).expand(2, HEADS, 3, LENGTH), 3, True)


def test_heads_inner_layout() -> None:
    q, k, v = _qkv(1, length=20)
    out = bi_attention(q, k, v, is_causal=True, heads_inner=True)
    assert out.stride(1) < out.stride(2)
    assert torch.equal(out, bi_attention(q, k, v, is_causal=True))


def test_rejects_bad_head_counts() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        bi_attention(torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))


def _paged(batch: int, lengths: list[int], page: int = 16, seed: int = 0):
    """A decode step over a paged cache: queries, the caches, each sequence's blocks (in a shuffled order, among
    other sequences' and free ones) and the keys gathered as the graph gathers them."""
    gen = torch.Generator().manual_seed(seed)
    per_seq = -(-max(lengths) // page) + 1
    blocks = batch * per_seq + 3
    k_cache, v_cache = (torch.randn(blocks, page, KV_HEADS, DIM, generator=gen) for _ in range(2))
    tables = torch.randperm(blocks, generator=gen)[:batch * per_seq].view(batch, per_seq)
    q = torch.randn(batch, HEADS, 1, DIM, generator=gen)
    keys, values = (c[tables].flatten(1, 2).transpose(1, 2) for c in (k_cache, v_cache))
    visible = (torch.arange(per_seq * page)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    return q, k_cache, v_cache, tables, torch.tensor(lengths), keys, values, visible


@pytest.mark.parametrize("split", [False, True])
def test_paged_cache_read_in_place_gives_the_gathered_bits(split: bool) -> None:
    """Keys read through the block table, and stopping at each sequence's length, give the bits of attention over
    the gathered copy with a length mask: the same keys in the same order, the skipped ones masked.  Negative
    control: a table that maps one block elsewhere changes the output."""
    q, k_cache, v_cache, tables, lens, keys, values, visible = _paged(3, [600, 37, 515])
    schedule = AttentionSchedule(block_m=16, split=split, num_warps=4)
    gathered = bi_attention(q, keys, values, visible, schedule=schedule)
    assert torch.equal(bi_attention(q, k_cache, v_cache, visible, block_tables=tables, schedule=schedule), gathered)
    assert torch.equal(bi_attention(q, k_cache, v_cache, block_tables=tables, seq_lens=lens, schedule=schedule),
                       gathered)
    assert rel_error(gathered, _reference(q, keys, values, attn_mask=visible)) < 1e-5
    moved = tables.clone()
    moved[0, 0] = tables[1, 0]
    assert not torch.equal(bi_attention(q, k_cache, v_cache, block_tables=moved, seq_lens=lens)[0], gathered[0])


def test_paged_sequence_bitwise_equal_alone_and_in_batches() -> None:
    """Sequence 0 alone, and at other rows of batches with other companions' blocks and lengths: the same bits."""
    q, k_cache, v_cache, tables, lens, *_ = _paged(4, [300, 40, 517, 64])
    alone = bi_attention(q[:1], k_cache, v_cache, block_tables=tables[:1], seq_lens=lens[:1])
    for order in ([1, 0, 2], [3, 2, 1, 0], [2, 0]):
        batched = bi_attention(q[order], k_cache, v_cache, block_tables=tables[order], seq_lens=lens[order])
        assert torch.equal(batched[order.index(0)], alone[0]), order


def test_paged_cache_layout_errors_name_the_problem() -> None:
    q, k_cache, v_cache, tables, *_ = _paged(1, [20])
    with pytest.raises(ValueError, match="paged key cache's blocks must lie one after another"):
        bi_attention(q, k_cache.transpose(0, 1).contiguous().transpose(0, 1), v_cache, block_tables=tables)
    with pytest.raises(ValueError, match="block_tables must be a 2-D integer tensor"):
        bi_attention(q, k_cache, v_cache, block_tables=tables.float())
