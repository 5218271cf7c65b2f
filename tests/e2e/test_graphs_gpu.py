"""Graph capture per bucket on a GPU, Qwen3-0.6B shapes (4 layers), bf16: a request's logits are
bitwise equal whichever bucket it runs in, padded or not."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.e2e.tiny_transformers import qwen3_0_6b

pytestmark = pytest.mark.gpu
pytest.importorskip("transformers")

#: Batches and the buckets they run in: 1 -> 1, 2 -> 2, 3 -> 4, 5 -> 8 (padded), 9 -> 16, 17 -> 32.
BATCHES = (1, 2, 3, 5, 9, 17, 32)


def _probe_rows(**compile_kwargs: object) -> list[torch.Tensor]:
    torch._dynamo.reset()
    model = qwen3_0_6b(num_hidden_layers=4, attn_implementation="sdpa")
    compiled = torch.compile(lambda ids: model(input_ids=ids).logits[:, -1], dynamic=True, **compile_kwargs)
    torch.manual_seed(0)
    ids = torch.randint(0, 151936, (max(BATCHES), 16), device="cuda")
    with torch.no_grad():
        return [compiled(ids[:batch])[0].clone() for batch in BATCHES]


def test_every_bucket_gives_the_probe_the_same_logits(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ascend_compile.graphs"):
        rows = _probe_rows(backend="ascend_bi")
    assert "captured bucket 8" in caplog.text and "captured bucket 32" in caplog.text
    assert all(torch.equal(rows[0], row) for row in rows[1:])


def test_stock_reduce_overhead_differs_across_batches() -> None:
    """Negative control: stock torch.compile with CUDA graphs changes the probe's bits with the batch."""
    rows = _probe_rows(mode="reduce-overhead")
    assert not all(torch.equal(rows[0], row) for row in rows[1:])
