"""canonicalize_squares: ``x * x`` becomes ``pow(x, 2)`` with the same bits; other products stay."""

from __future__ import annotations

import torch

from ascend_compile.passes.canonicalize_squares import canonicalize_squares
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten


def _norm_by_hand(x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt((x32 * x32).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


def test_square_by_product_becomes_pow_with_the_same_bits() -> None:
    x = torch.randn(4, 64).bfloat16()
    gm = after_passes(aten_graph(_norm_by_hand, x), canonicalize_squares)
    assert gm.count == 1
    assert targets(gm).count(aten.pow.Tensor_Scalar) == 1 and targets(gm).count(aten.mul.Tensor) == 1
    assert torch.equal(gm(x), _norm_by_hand(x))


def test_products_of_different_tensors_and_integers_stay() -> None:
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    gm = after_passes(aten_graph(lambda a, b, i: (a * b, i * i), x, y, torch.arange(4)), canonicalize_squares)
    assert gm.count == 0 and aten.pow.Tensor_Scalar not in targets(gm)


def test_idempotent() -> None:
    gm = after_passes(aten_graph(_norm_by_hand, torch.randn(2, 16)), canonicalize_squares, canonicalize_squares)
    assert gm.count == 0 and targets(gm).count(aten.pow.Tensor_Scalar) == 1
