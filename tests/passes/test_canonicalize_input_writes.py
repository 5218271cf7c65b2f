"""canonicalize_input_writes: vLLM's slot write through a merged view of a paged cache becomes a
write of the cache itself, with the same cache afterwards and the same reads after the write."""

from __future__ import annotations

import pytest
import torch

from ascend_compile.passes.canonicalize_input_writes import canonicalize_input_writes
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten
BLOCKS, BLOCK, HEADS, DIM = 6, 4, 2, 8


def _copy_then_read(cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """vLLM's write (``index_copy_`` by slot on the merged view), then a read of the written cache."""
    cache.view(-1, HEADS, DIM).index_copy_(0, slots, k)
    return cache[torch.tensor([1, 0])].sum(0)


def _put_then_read(cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The same write as an assignment by slot (negative slots count from the end)."""
    cache.view(-1, HEADS, DIM)[slots] = k
    return cache[torch.tensor([1, 5])].sum(0)


@pytest.mark.parametrize("fn, slots", [(_copy_then_read, [0, 5, 23, 9]), (_put_then_read, [-1, 3])],
                         ids=["index_copy_", "assignment, last slot as -1"])
def test_slot_write_through_merged_view_writes_the_cache(fn, slots: list[int]) -> None:
    inputs = (torch.randn(BLOCKS, BLOCK, HEADS, DIM), torch.tensor(slots), torch.randn(len(slots), HEADS, DIM))
    gm = after_passes(aten_graph(fn, *inputs, decompose=(aten.index_copy.default,)), canonicalize_input_writes)
    assert gm.count == 1
    (put,) = [n for n in gm.graph.nodes if n.target is aten.index_put.default]
    assert put.args[0].op == "placeholder" and len(put.args[1]) == 2  # (block, offset) of the cache itself
    (copy,) = [n for n in gm.graph.nodes if n.target is aten.copy_.default]
    assert copy.args == (put.args[0], put)
    ours, theirs = inputs[0].clone(), inputs[0].clone()
    assert torch.equal(gm(ours, *inputs[1:]), fn(theirs, *inputs[1:]))
    assert torch.equal(ours, theirs)
    assert not torch.equal(theirs, inputs[0])  # the write happened (the comparison can fail)


def _permuted_write(cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cache.transpose(0, 1).reshape(-1, HEADS, DIM).index_copy_(0, slots, k)  # a copy: writes nothing back
    return cache.sum()


def _accumulating_write(cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cache.view(-1, HEADS, DIM).index_put_((slots,), k, accumulate=True)
    return cache.sum()


def _masked_write(cache: torch.Tensor, mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cache.view(-1, HEADS, DIM)[mask] = k
    return cache.sum()


def _direct_write(cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cache.index_copy_(0, slots, k.view(-1, BLOCK, HEADS, DIM))  # already the input itself
    return cache.sum()


@pytest.mark.parametrize("fn, index", [
    (_permuted_write, torch.tensor([0, 5])),
    (_accumulating_write, torch.tensor([0, 5])),
    (_masked_write, torch.arange(BLOCKS * BLOCK) < 2),
    (_direct_write, torch.tensor([1])),
], ids=["not a view of the input", "accumulating", "boolean mask", "no view"])
def test_other_writes_stay(fn, index: torch.Tensor) -> None:
    rows = BLOCK if fn is _direct_write else 2
    cache, k = torch.randn(BLOCKS, BLOCK, HEADS, DIM), torch.randn(rows, HEADS, DIM)
    gm = after_passes(aten_graph(fn, cache, index, k, decompose=(aten.index_copy.default,)), canonicalize_input_writes)
    assert gm.count == 0
    assert aten.remainder.Scalar not in targets(gm)
