"""The kernel invariance and accuracy tests again, with the NPU's plans and schedules forced on the
CPU (``devices.simulate_npu``): NPU chunk sizes, UB-sized tiles, one program per core looping
over its work items, keys and transposed weights loaded along their unit stride.  Kernels still
run in Triton's interpreter; nothing here has run on an NPU.

The whole kernel suite also passes with ``ASCEND_BI_SIMULATE_NPU=1 pytest tests/kernels``; this file
keeps the CI share small: cumsum at 4097 is left out (its NPU plan is the interpreter's: 64 x 16 tiles).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from ascend_compile import devices
from ascend_compile.kernels.attention import bi_attention
from ascend_compile.kernels.matmul import bi_matmul
from ascend_compile.kernels.plans import matmul_plan, matmul_schedule, row_plan
from tests.helpers import rel_error
from tests.kernels import test_attention, test_matmul, test_reductions, test_rope


@pytest.fixture(autouse=True)
def npu_plans() -> Iterator[None]:
    with devices.simulate_npu():
        yield


def test_npu_plans_are_in_force() -> None:
    """Guards the rest of the file: CPU tensors get NPU plans and 1-D core-count grids."""
    device = devices.of_tensor(torch.ones(1))
    assert device.plan_kind == "npu" and device.triton_interpreted
    assert matmul_plan(1000, 70, torch.bfloat16, device).block_k == 256  # 128 in the CPU plan
    assert matmul_schedule(matmul_plan(1000, 70, torch.float32, device), 5, 70, 1, 4, device).programs > 0
    assert row_plan(4097, torch.float32, device).block == 1024  # 4096 in the CPU plan


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,n", [(64, 96), (1000, 130)])
def test_matmul_row_invariant_and_accurate(k: int, n: int, dtype: torch.dtype) -> None:
    test_matmul.test_row_is_bitwise_equal_alone_and_in_batches(k, n, dtype)


def test_matmul_bmm_and_strided_operands() -> None:
    test_matmul.test_bmm_rows_are_invariant_and_accurate()
    test_matmul.test_reads_transposed_and_strided_operands_without_copies()
    test_matmul.test_bias_broadcasts_from_a_row_and_a_full_matrix()


#: The interpreter walks cumsum slowly: its fp16 rows (bf16's 16-bit path, another rounding) run in the slow suite.
ROW_CASES = [(name, dtype, n) if not (name == "cumsum" and dtype == torch.float16) else
             pytest.param(name, dtype, n, marks=pytest.mark.slow)
             for name in test_reductions.OPS for dtype in (torch.float32, torch.bfloat16, torch.float16)
             for n in (1000, 4097) if not (name == "cumsum" and n == 4097)]


@pytest.mark.parametrize("name,dtype,n", ROW_CASES)
def test_row_family_invariant_and_accurate(name: str, dtype: torch.dtype, n: int) -> None:
    test_reductions.test_row_is_bitwise_equal_alone_and_in_batches(name, dtype, n)


@pytest.mark.parametrize("name", ["var", "softmax", "logsumexp"])
def test_long_rows_invariant(name: str) -> None:
    test_reductions.test_long_rows_stay_invariant(name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_sequence_invariant_and_accurate(dtype: torch.dtype) -> None:
    test_attention.test_sequence_bitwise_equal_alone_and_in_batches(dtype)


def test_attention_decode_equals_prefill() -> None:
    test_attention.test_decode_step_equals_prefill_row()


def test_norm_rope_and_cache_writes() -> None:
    """Query/key norms with the rotation, and the cache writes: the separate ops' bits."""
    test_rope.test_equals_the_separate_ops_and_float64(torch.bfloat16)
    test_rope.test_cache_writes_land_at_the_step_slots(torch.bfloat16)


def test_more_work_than_programs() -> None:
    """Rows, tiles and query blocks outnumber the simulated cores (48 vector, 24 AI), so programs
    loop; each item still equals its computation alone."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(49, 300, generator=gen)  # row 48: the second row of the first program
    w = torch.randn(1000, 300, generator=gen)
    out = bi_matmul(x, w.t())  # 2 x 32 = 64 output tiles of 32 x 32
    assert torch.equal(out[48], bi_matmul(x[48:49], w.t())[0])
    assert rel_error(out, x.double() @ w.double().t()) < 1e-5
    bi = torch.ops.ascend_bi
    for op in (lambda t: bi.sum(t, [-1], False, None, False), lambda t: bi.softmax(t, -1, False),
               lambda t: bi.layer_norm(t, [t.shape[-1]], None, None, 1e-5)[0], lambda t: bi.cumsum(t, -1, None)):
        rows = op(x)
        assert torch.equal(rows[48], op(x[48:49])[0])
    q, k, v = (torch.randn(2, 4, 80, 32, generator=gen) for _ in range(3))  # 2 x 4 x 5 = 40 query blocks
    out = bi_attention(q, k, v, is_causal=True)
    assert torch.equal(out[1, 3, 79], bi_attention(q[1:, 3:, 79:], k[1:, 3:], v[1:, 3:])[0, 0, 0])
    assert rel_error(out, test_attention._reference(q, k, v, is_causal=True)) < 1e-5
