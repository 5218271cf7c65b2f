"""Row templates on a CUDA GPU: invariance (bf16 and fp32) and the stock negative control."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import all_bitwise_equal, rel_error
from tests.kernels.test_reductions import OPS

pytestmark = pytest.mark.gpu

ROWS = (1, 7, 64, 300)


@pytest.mark.parametrize("n", [1024, 151936])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", list(OPS))
def test_rows_bitwise_equal_at_every_row_count(name: str, dtype: torch.dtype, n: int) -> None:
    ours, reference = OPS[name]
    x = torch.randn(max(ROWS), n, device="cuda", generator=torch.Generator("cuda").manual_seed(n)).to(dtype)
    full = ours(x)
    for m in ROWS:
        assert all_bitwise_equal(full[:1], [ours(x[:m])[:1]]), f"{name} differs at {m} rows"
    assert rel_error(full, reference(x.double())) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_stock_compiled_sum_differs_on_gpu() -> None:
    """Negative control: Inductor splits a long row's sum when there are few rows."""
    stock = torch.compile(lambda x: x.sum(-1), dynamic=True)
    x = torch.randn(64, 151936, device="cuda")
    full = stock(x)
    assert any(not torch.equal(stock(x[:m]), full[:m]) for m in (1, 2, 3))


def test_stock_cumsum_differs_on_gpu() -> None:
    """Negative control for cumsum, which CPU scans sequentially: CUDA's scan of one long row is
    organised differently from a batch of rows."""
    x = torch.randn(64, 151936, device="cuda")
    full = torch.cumsum(x, -1)
    assert any(not torch.equal(torch.cumsum(x[:m], -1), full[:m]) for m in (1, 2, 3))
