"""canonicalize_splits: chunk and split read through getitem become the slices they are, with the same values;
other cuts stay."""

from __future__ import annotations

import torch

from ascend_compile.passes.canonicalize_splits import canonicalize_splits
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _qkv(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return x.split([4, 2, 2], dim=1)


def test_chunks_and_splits_become_slices_with_the_same_values() -> None:
    for fn, x in ((_rotate_half, torch.randn(3, 2, 16)), (_qkv, torch.randn(5, 8))):
        gm = after_passes(aten_graph(fn, x), canonicalize_splits)
        assert gm.count == 1, fn.__name__
        names = targets(gm)
        assert aten.split.Tensor not in names and aten.split_with_sizes.default not in names
        assert names.count(aten.slice.Tensor) == (2 if fn is _rotate_half else 3)
        for got, want in zip(torch.utils._pytree.tree_leaves(gm(x)), torch.utils._pytree.tree_leaves(fn(x)),
                             strict=True):
            assert torch.equal(got, want)


def test_cuts_that_are_not_splits_stay() -> None:
    """``unbind`` drops the dim it cuts (its pieces are selects, not slices): not a split."""
    gm = after_passes(aten_graph(lambda x: x.unbind(1), torch.randn(4, 3)), canonicalize_splits)
    assert gm.count == 0 and aten.slice.Tensor not in targets(gm)


def test_idempotent() -> None:
    gm = after_passes(aten_graph(_qkv, torch.randn(5, 8)), canonicalize_splits, canonicalize_splits)
    assert gm.count == 0 and targets(gm).count(aten.slice.Tensor) == 3
