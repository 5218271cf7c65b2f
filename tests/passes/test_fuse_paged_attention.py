"""fuse_paged_attention: attention over a paged cache gathered by block table reads the cache in place, a length
mask becomes the sequences' lengths, with the bits of the gathered graph; other masks stay, and keys used
elsewhere keep their gather."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ascend_compile.passes.fuse_paged_attention import fuse_paged_attention
from ascend_compile.passes.rewrite_attention import rewrite_attention
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten
bi = torch.ops.ascend_bi
BATCH, HEADS, KV_HEADS, DIM, PAGE, PER_SEQ = 3, 4, 2, 32, 16, 4


def _inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    blocks = BATCH * PER_SEQ + 2
    k_cache, v_cache = (torch.randn(blocks, PAGE, KV_HEADS, DIM, generator=gen) for _ in range(2))
    tables = torch.randperm(blocks, generator=gen)[:BATCH * PER_SEQ].view(BATCH, PER_SEQ)
    return torch.randn(BATCH, HEADS, 1, DIM, generator=gen), k_cache, v_cache, tables, torch.tensor([50, 7, 64])


def _vllm_attention(q, k_cache, v_cache, tables, lens):
    """As the zoo's vLLM-shaped layer attends: gather by block table, a mask of each sequence's length."""
    keys = k_cache[tables].flatten(1, 2).transpose(1, 2)
    values = v_cache[tables].flatten(1, 2).transpose(1, 2)
    visible = torch.arange(keys.shape[2])[None, :] < lens[:, None]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None, :], enable_gqa=True)


def _graphs(fn, inputs):
    unfused = after_passes(aten_graph(fn, *inputs), rewrite_attention)
    fused = after_passes(aten_graph(fn, *inputs), rewrite_attention, fuse_paged_attention)
    return unfused, fused


def test_gathered_paged_attention_reads_the_cache_with_the_lengths_and_the_same_bits() -> None:
    inputs = _inputs()
    unfused, fused = _graphs(_vllm_attention, inputs)
    assert fused.count == 1
    names = targets(fused)
    assert bi.paged_attention.default in names and bi.attention.default not in names
    assert aten.index.Tensor not in names and aten.lt.Tensor not in names  # no gather, no mask
    (node,) = [n for n in fused.graph.nodes if n.target is bi.paged_attention.default]
    assert node.args[4] is not None and node.args[5] is None  # the lengths, not the mask
    assert torch.equal(fused(*inputs), unfused(*inputs))


def test_a_mask_that_is_not_a_length_mask_is_kept() -> None:
    def every_other_key(q, k_cache, v_cache, tables, lens):
        keys = k_cache[tables].flatten(1, 2).transpose(1, 2)
        values = v_cache[tables].flatten(1, 2).transpose(1, 2)
        keep = (torch.arange(keys.shape[2]) % 2 == 0).expand(q.shape[0], 1, 1, keys.shape[2])
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=keep, enable_gqa=True)

    inputs = _inputs()
    unfused, fused = _graphs(every_other_key, inputs)
    assert fused.count == 1
    (node,) = [n for n in fused.graph.nodes if n.target is bi.paged_attention.default]
    assert node.args[4] is None and node.args[5] is not None
    assert torch.equal(fused(*inputs), unfused(*inputs))


def test_gathered_keys_used_elsewhere_keep_their_gather() -> None:
    def keys_returned(q, k_cache, v_cache, tables, lens):
        keys = k_cache[tables].flatten(1, 2).transpose(1, 2)
        values = v_cache[tables].flatten(1, 2).transpose(1, 2)
        return F.scaled_dot_product_attention(q, keys, values, enable_gqa=True), keys

    _, fused = _graphs(keys_returned, _inputs())
    assert fused.count == 0 and bi.attention.default in targets(fused)


def test_idempotent() -> None:
    gm = after_passes(aten_graph(_vllm_attention, *_inputs()), rewrite_attention, fuse_paged_attention,
                      fuse_paged_attention)
    assert gm.count == 0 and targets(gm).count(bi.paged_attention.default) == 1
