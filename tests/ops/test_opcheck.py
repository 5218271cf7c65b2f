"""``torch.library.opcheck`` on every ``ascend_bi`` op.

The passes insert these custom ops into graphs that Dynamo, AOTAutograd and Inductor trace on fake
tensors, so each op's registration has to tell the truth: its schema must declare every input it
writes (``test_schema``), its fake impl must give the real impl's shapes, strides and dtypes
(``test_faketensor``), and it must trace and replay through AOTAutograd with dynamic shapes
(``test_aot_dispatch_dynamic``).  The kernel tests call the real impls only; a fake impl that lies
shows up as wrong code or wrong buffers in compiled graphs, far from its cause.

The ops are enumerated from the namespace and each one needs a sample in ``SAMPLES``, so an op added
without one fails ``test_every_registered_op_has_a_sample``.

Shapes are the smallest the plans accept (the kernels run in Triton's interpreter here); ops that
write their inputs get fresh buffers for every call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
from torch.testing._internal.optests import OpCheckError

import ascend_compile.ops  # noqa: F401  (registers the ops)
from ascend_compile.ops.library import NAMESPACE

packed_mm_module = importlib.import_module("ascend_compile.ops.packed_mm")

Sample = tuple[tuple[Any, ...], dict[str, Any]]

#: Batch, query positions, query heads, key/value heads, head dim, cache slots: small, with GQA.
BATCH, LENGTH, HEADS, KV_HEADS, DIM, SLOTS = 2, 2, 4, 2, 16, 8
EPS = [1e-6, 1e-5]
#: The vendor handler address ``packed_mm`` looks its weight up by (any int64 value does).
HANDLER = 0x5EED


class Make:
    """Fresh, seeded sample tensors of one float dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.gen = torch.Generator().manual_seed(0)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen).to(self.dtype)

    def weight(self, *shape: int) -> torch.Tensor:
        """A norm weight near 1."""
        return (torch.rand(shape, generator=self.gen) + 0.5).to(self.dtype)

    def projections(self, length: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v per head, (batch, length, heads, dim), as the rope ops read them."""
        return (self.randn(BATCH, length, HEADS, DIM), self.randn(BATCH, length, KV_HEADS, DIM),
                self.randn(BATCH, length, KV_HEADS, DIM))

    def angles(self, length: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin as (1, 1, length, dim), as transformers' ``apply_rotary_pos_emb`` takes them."""
        half = torch.rand(1, 1, length, DIM // 2, generator=self.gen) * 10
        full = torch.cat((half, half), dim=-1)
        return full.cos().to(self.dtype), full.sin().to(self.dtype)

    def caches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k_cache, v_cache as (batch, kv heads, slots, dim): transformers' static cache."""
        return self.randn(BATCH, KV_HEADS, SLOTS, DIM), self.randn(BATCH, KV_HEADS, SLOTS, DIM)

    def paged_caches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """k_cache, v_cache as (blocks, block size, kv heads, dim): vLLM's paged cache, 3 blocks of 4."""
        return self.randn(3, 4, KV_HEADS, DIM), self.randn(3, 4, KV_HEADS, DIM)


# --- samples, one builder per op --------------------------------------------------------------------


def _mm(m: Make) -> Sample:
    # A transposed weight (the layout rewrite_matmul passes) and a bias.
    return (m.randn(3, 16), m.randn(8, 16).t()), {"bias": m.randn(8), "b_is_weight": True}


def _mm_group(m: Make) -> Sample:
    # All weights but the last GROUP_COLUMNS (128) wide and of one layout: the one-launch path.
    return (m.randn(3, 16), [m.randn(128, 16).t(), m.randn(8, 16).t()]), {}


def _mm_gated(m: Make) -> Sample:
    return (m.randn(3, 16), m.randn(16, 8), m.randn(16, 8), "gelu_tanh"), {}


def _bmm(m: Make) -> Sample:
    return (m.randn(2, 3, 16), m.randn(2, 16, 8)), {}


def _packed_mm(m: Make) -> Sample:
    handler = torch.tensor(HANDLER, dtype=torch.int64)
    packed_mm_module.register_packed_weight(handler, m.randn(8, 16).t())
    return (m.randn(3, 16), handler, m.randn(8), 8), {}


def _sum(m: Make) -> Sample:
    return (m.randn(3, 20), [1], True, None, True), {}


def _var_mean(m: Make) -> Sample:
    return (m.randn(3, 20), [1], 1.0, False), {}


def _logsumexp(m: Make) -> Sample:
    return (m.randn(3, 20), [-1], False), {}


def _softmax(m: Make) -> Sample:
    return (m.randn(3, 20), -1, m.dtype == torch.bfloat16), {}  # log_softmax in the bf16 case


def _layer_norm(m: Make) -> Sample:
    return (m.randn(3, 20), [20], m.weight(20), m.randn(20), 1e-5), {}


def _cumsum(m: Make) -> Sample:
    return (m.randn(3, 20), 1, None), {}


def _rms_norm(m: Make) -> Sample:
    # The epsilon as Dynamo lifts it (a CPU scalar) replaces the float.
    return (m.randn(3, 20), m.weight(20), 0.5), {"eps_tensor": torch.tensor(1e-6, dtype=torch.float64)}


def _add_rms_norm(m: Make) -> Sample:
    return (m.randn(3, 20), m.randn(3, 20), m.weight(20), 1e-6), {}


def _rms_norm_sandwich(m: Make) -> Sample:
    return (m.randn(3, 20), m.randn(3, 20), m.weight(20), 1e-6, None, 3, m.weight(20), 0.5), \
        {"eps_tensor": torch.tensor(1e-6, dtype=torch.float64), "form": 3}


def _rms_norm_pair(m: Make) -> Sample:
    q, k, _ = m.projections()
    return ([q, k], [m.weight(DIM), m.weight(DIM)], EPS, [None, None]), {}


def _rms_norm_rope(m: Make) -> Sample:
    q, k, _ = m.projections()
    return (q, k, [m.weight(DIM), m.weight(DIM)], EPS, [None, None], *m.angles()), {}


def _rms_norm_rope_cache(m: Make) -> Sample:
    q, k, v = m.projections()
    return (q, k, v, [m.weight(DIM), m.weight(DIM)], EPS, [None, None], *m.angles(), *m.caches(),
            torch.tensor([3, 5])), {}


def _rms_norm_rope_append(m: Make) -> Sample:
    q, k, v = m.projections()
    return (q, k, v, [m.weight(DIM), m.weight(DIM)], EPS, [None, None], *m.angles(), *m.caches(),
            torch.tensor(4)), {}


def _rope(m: Make) -> Sample:
    q, k, _ = m.projections()
    return (q, k, *m.angles()), {}


def _rms_norm_rope_paged(m: Make) -> Sample:
    # Flattened tokens, (tokens, 1, heads, dim), each at its slot of the blocks; Gemma's norm form.
    q, k, v = m.projections(length=1)
    return (q, k, v, [m.weight(DIM), m.weight(DIM)], EPS, [None, None], *m.angles(length=1), *m.paged_caches(),
            torch.tensor([9, 2])), {"form": 3}


def _rope_cache(m: Make) -> Sample:
    q, k, v = m.projections()
    return (q, k, v, *m.angles(), *m.caches(), torch.tensor([3, 5])), {}


def _rope_paged(m: Make) -> Sample:
    q, k, v = m.projections(length=1)
    return (q, k, v, *m.angles(length=1), *m.paged_caches(), torch.tensor([11, 0])), {"interleaved": True}


def _rope_append(m: Make) -> Sample:
    q, k, v = m.projections()
    return (q, k, v, *m.angles(), *m.caches(), torch.tensor(4)), {}


def _attention(m: Make) -> Sample:
    # (batch, heads, length, dim) with GQA.  float32: causal, contiguous output.  bfloat16: a boolean
    # mask and the (batch, length, heads, dim) output layout.
    q, k, v = m.randn(BATCH, HEADS, 3, DIM), m.randn(BATCH, KV_HEADS, 5, DIM), m.randn(BATCH, KV_HEADS, 5, DIM)
    if m.dtype == torch.float32:
        return (q, k, v, None, True, None, False), {}
    mask = torch.arange(5)[None, :] <= torch.arange(3)[:, None] + 2
    return (q, k, v, mask.expand(BATCH, 1, 3, 5), False, 0.25, True), {"masked_score": -1e4}


def _paged_attention(m: Make) -> Sample:
    # A paged cache of blocks of 2 keys, each sequence's 3 blocks in its own order.  float32: the lengths seen;
    # bfloat16: a boolean mask and the (batch, length, heads, dim) output layout.
    q = m.randn(BATCH, HEADS, 1, DIM)
    k_cache, v_cache = m.randn(3 * BATCH, 2, KV_HEADS, DIM), m.randn(3 * BATCH, 2, KV_HEADS, DIM)
    tables = torch.arange(3 * BATCH).flip(0).view(BATCH, 3)
    if m.dtype == torch.float32:
        return (q, k_cache, v_cache, tables, torch.tensor([5, 3][:BATCH]), None, False, None, False), {}
    mask = (torch.arange(6) < 4).expand(BATCH, 1, 1, 6)
    return (q, k_cache, v_cache, tables, None, mask, False, 0.25, True), {}


def _decode_mask(start: int) -> torch.Tensor:
    """A decode step's boolean mask over the cache: the slots up to the step's."""
    return (torch.arange(SLOTS) <= start).expand(BATCH, 1, 1, SLOTS)


def _rope_attention(m: Make) -> Sample:
    # One decode position (the one-launch path), with the norms, at slot 3.
    q, k, v = m.projections(length=1)
    return (q, k, v, [m.weight(DIM), m.weight(DIM)], EPS, [None, None], *m.angles(length=1), *m.caches(),
            torch.tensor([3]), _decode_mask(3), False, None, True), {}


def _rope_attention_append(m: Make) -> Sample:
    # One decode position without norms (empty ``weights``), appended at write position 5; the scale
    # as Dynamo lifts it.
    q, k, v = m.projections(length=1)
    return (q, k, v, [], [], [], *m.angles(length=1), *m.caches(), torch.tensor([5]), _decode_mask(5), False,
            None, False), {"scale_tensor": torch.tensor(0.3, dtype=torch.float64)}


def _rope_attention_grown(m: Make) -> Sample:
    # One decode position with the norms over 6 past keys and values grown by it, GPT-J's interleaved
    # rotation; the output laid out heads inner.
    q, k, v = m.projections(length=1)
    return (q, k, v, [m.weight(DIM), m.weight(DIM)], EPS, [None, None], *m.angles(length=1),
            m.randn(BATCH, KV_HEADS, 6, DIM), m.randn(BATCH, KV_HEADS, 6, DIM), None, False, None, True), \
        {"interleaved": True}


class Case(NamedTuple):
    build: Callable[[Make], Sample]
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)


#: Every ``ascend_bi`` op's sample inputs, by op name.
SAMPLES: dict[str, Case] = {
    "mm": Case(_mm),
    "mm_group": Case(_mm_group),
    "mm_gated": Case(_mm_gated),
    "bmm": Case(_bmm),
    "packed_mm": Case(_packed_mm),
    "sum": Case(_sum),
    "var_mean": Case(_var_mean),
    "logsumexp": Case(_logsumexp),
    "softmax": Case(_softmax),
    "layer_norm": Case(_layer_norm),
    "cumsum": Case(_cumsum),
    "rms_norm": Case(_rms_norm),
    "add_rms_norm": Case(_add_rms_norm),
    "rms_norm_sandwich": Case(_rms_norm_sandwich),
    "rms_norm_pair": Case(_rms_norm_pair),
    "rms_norm_rope": Case(_rms_norm_rope),
    "rms_norm_rope_cache": Case(_rms_norm_rope_cache),
    "rms_norm_rope_append": Case(_rms_norm_rope_append),
    "rope": Case(_rope),
    "rope_cache": Case(_rope_cache),
    "rope_append": Case(_rope_append),
    "rms_norm_rope_paged": Case(_rms_norm_rope_paged),
    "rope_paged": Case(_rope_paged),
    "attention": Case(_attention),
    "paged_attention": Case(_paged_attention),
    "rope_attention": Case(_rope_attention),
    "rope_attention_append": Case(_rope_attention_append),
    "rope_attention_grown": Case(_rope_attention_grown),
}


def registered_ops() -> dict[str, torch._ops.OpOverload]:
    """Every overload registered in the namespace, by op name (``name.overload`` past ``default``)."""
    ops = {}
    packets = getattr(torch.ops, NAMESPACE)
    for name in packets:
        packet = getattr(packets, name)
        for overload in packet.overloads():
            ops[name if overload == "default" else f"{name}.{overload}"] = getattr(packet, overload)
    return ops


def test_every_registered_op_has_a_sample() -> None:
    registered = set(registered_ops())
    assert registered, f"no op registered in the {NAMESPACE} namespace"
    assert registered - SAMPLES.keys() == set(), "ops without an opcheck sample: add them to SAMPLES"
    assert SAMPLES.keys() - registered == set(), "samples for ops that are not registered"


def _all_real(sample: Sample) -> bool:
    """opcheck silently skips every check when an input is a fake or meta tensor."""
    tensors = [t for t in torch.utils._pytree.tree_leaves(sample) if isinstance(t, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "cpu" and not t.requires_grad for t in tensors)


@pytest.mark.parametrize(("name", "dtype"), [pytest.param(name, dtype, id=f"{name}-{str(dtype).removeprefix('torch.')}")
                                             for name, case in SAMPLES.items() for dtype in case.dtypes])
def test_opcheck(name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default test_utils.  The ops are inference-only (no autograd formula: backward raises), so the
    samples do not require grad: ``test_autograd_registration`` then has nothing to check and
    ``test_aot_dispatch_dynamic`` checks the forward alone."""
    monkeypatch.setattr(packed_mm_module, "_weights", {})  # packed_mm's recorded weight stays in this test
    op = registered_ops()[name]
    args, kwargs = SAMPLES[name].build(Make(dtype))
    assert _all_real((args, kwargs))
    torch.library.opcheck(op, args, kwargs)


# --- negative controls: the harness catches a lying registration ------------------------------------


@torch.library.custom_op("ascend_bi_opcheck_selftest::undeclared_write", mutates_args=())
def _undeclared_write(x: torch.Tensor) -> torch.Tensor:
    x.add_(1)
    return x + 1


@_undeclared_write.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("ascend_bi_opcheck_selftest::wrong_strides", mutates_args=())
def _wrong_strides(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous().t()


@_wrong_strides.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape)


@pytest.mark.parametrize(("op", "check"), [(_undeclared_write, "test_schema"), (_wrong_strides, "test_faketensor")])
def test_a_lying_registration_fails(op: Any, check: str) -> None:
    with pytest.raises(OpCheckError, match=check):
        torch.library.opcheck(op, (torch.randn(3, 4),), {})
