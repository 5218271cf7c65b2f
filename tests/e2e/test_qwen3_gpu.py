"""Qwen3 at the Qwen3-0.6B shapes (4 of its 28 layers, to keep compile time short), bf16, on a
GPU: prefill logits, log-probs and the next decode step are bitwise equal alone and in batches."""

from __future__ import annotations

import pytest

from tests.e2e.test_transformers_models import _same_bits_in_every_batch
from tests.e2e.tiny_transformers import qwen3_0_6b

pytestmark = pytest.mark.gpu

#: cuBLAS keeps one kernel for small batches of short prompts; these reach the sizes where it switches.
BATCHES = {"batch_sizes": (2, 8, 32, 64), "seq": 16}
pytest.importorskip("transformers")


def test_qwen3_0_6b_shapes_bitwise_invariant_on_gpu() -> None:
    result = _same_bits_in_every_batch(qwen3_0_6b(num_hidden_layers=4), **BATCHES, backend="ascend_bi")
    assert all(result.values()), result


def test_stock_torch_compile_differs_on_gpu() -> None:
    result = _same_bits_in_every_batch(qwen3_0_6b(num_hidden_layers=4), **BATCHES)
    assert not all(result.values()), result
