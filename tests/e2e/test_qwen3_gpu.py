"""Qwen3 at the Qwen3-0.6B shapes (4 of its 28 layers, to keep compile time short), bf16, on a
GPU: prefill logits, log-probs and the next decode step are bitwise equal alone and in batches,
and decode steps equal the prefill (SDPA and eager attention)."""

from __future__ import annotations

import pytest

from tests.e2e.test_transformers_models import _decode_matches_prefill, _same_bits_in_every_batch
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


#: Decode steps with 290..299 keys against a prefill of 300: past the first 256-key split.
STEPS = {"length": 300, "t0": 290}


@pytest.mark.parametrize(("attn_implementation", "executor"), [("sdpa", "inductor"), ("eager", "inductor"),
                                                                ("sdpa", "fx")])
def test_qwen3_0_6b_shapes_decode_equals_prefill_on_gpu(attn_implementation: str, executor: str) -> None:
    """Inductor fuses the one-token decode graph differently from the prefill graph; the executor
    keeps eager's bf16 rounding points (``emulate_precision_casts``), so fusion cannot change bits."""
    model = qwen3_0_6b(num_hidden_layers=4, attn_implementation=attn_implementation)
    assert _decode_matches_prefill(model, **STEPS, backend="ascend_bi", options={"executor": executor})


def test_stock_decode_differs_from_prefill_on_gpu() -> None:
    assert not _decode_matches_prefill(qwen3_0_6b(num_hidden_layers=4, attn_implementation="sdpa"), **STEPS)
