"""canonicalize_rotary: vLLM's neox rotation of halves becomes transformers' rotate-half form, its GPT-J
rotation of interleaved pairs transformers' GPT-J form, with the same bits, one repeated cos/sin for the
query's and the key's rotations; other maths stays."""

from __future__ import annotations

import pytest
import torch

from ascend_compile.passes.canonicalize_rotary import canonicalize_rotary
from ascend_compile.passes.canonicalize_splits import canonicalize_splits
from ascend_compile.tools.zoo import apply_rotary
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten
TOKENS, DIM = 5, 32


def _rotated(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor, neox: bool):
    """vLLM's ``RotaryEmbedding.forward_static``: angles gathered by position, the query and the key rotated."""
    cos, sin = cos_sin.index_select(0, positions).chunk(2, dim=-1)
    return apply_rotary(q, cos, sin, neox), apply_rotary(k, cos, sin, neox)


def _vllm_step(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor):
    return _rotated(q, k, cos_sin, positions, True)


def _gptj_step(q: torch.Tensor, k: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor):
    return _rotated(q, k, cos_sin, positions, False)


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    angles = torch.rand(16, DIM // 2, generator=gen) * 20
    return (torch.randn(TOKENS, 4, DIM, generator=gen).to(dtype), torch.randn(TOKENS, 2, DIM, generator=gen).to(dtype),
            torch.cat((angles.cos(), angles.sin()), -1), torch.tensor([3, 0, 9, 9, 15]))


@pytest.mark.parametrize("step", [_vllm_step, _gptj_step], ids=["neox", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_vllm_rotations_become_transformers_forms_with_the_same_bits(dtype: torch.dtype, step) -> None:
    """Neox halves become ``rotate_half``, GPT-J's interleaved pairs ``rotate_every_two``."""
    inputs = _inputs(dtype)
    gm = after_passes(aten_graph(step, *inputs), canonicalize_splits, canonicalize_rotary)
    assert gm.count == 2
    names = targets(gm)
    assert aten.sub.Tensor not in names and names.count(aten.neg.default) == 2
    repeated = [n for n in gm.graph.nodes if n.target is aten.cat.default and n.args[0][0] is n.args[0][1]]
    if step is _gptj_step:  # each angle twice in a row: a stack of one unsqueeze with itself, merged
        repeated = [next(iter(n.users)) for n in repeated]
    assert len(repeated) == 2  # cos and sin repeated once each, read by both rotations
    assert all(len(n.users) == 2 for n in repeated)
    assert all(torch.equal(a, b) for a, b in zip(gm(*inputs), step(*inputs), strict=True))


def test_other_rotations_stay() -> None:
    """A rotation by a wrong sign is not one, nor interleaved pieces stacked in the other order."""
    def wrong_sign(q, k, cos_sin, positions):
        cos, sin = cos_sin.index_select(0, positions).chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        q1, q2 = q.chunk(2, dim=-1)
        return torch.cat((q1 * cos + q2 * sin, q2 * cos + q1 * sin), dim=-1), k

    def swapped_pairs(q, k, cos_sin, positions):
        cos, sin = cos_sin.index_select(0, positions).chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        q1, q2 = q[..., ::2], q[..., 1::2]
        return torch.stack((q2 * cos + q1 * sin, q1 * cos - q2 * sin), dim=-1).flatten(-2), k

    inputs = _inputs(torch.bfloat16)
    for fn in (wrong_sign, swapped_pairs):
        gm = after_passes(aten_graph(fn, *inputs), canonicalize_splits, canonicalize_rotary)
        assert gm.count == 0 and aten.neg.default not in targets(gm)
