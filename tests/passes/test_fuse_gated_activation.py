"""fuse_gated_activation: a gated MLP's activation (SiLU, GELU's tanh form) joins its gate/up launch
with the unfused ops' bits; an activation or a product used elsewhere, factors of different groups,
and a GELU that rounds otherwise stay as they are."""

from __future__ import annotations

import math

import torch

from ascend_compile.passes.canonicalize_splits import canonicalize_splits
from ascend_compile.passes.canonicalize_squares import canonicalize_squares
from ascend_compile.passes.fuse_gated_activation import fuse_gated_activation
from ascend_compile.passes.fuse_sibling_matmuls import fuse_sibling_matmuls
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.split_merged_projections import split_merged_projections
from ascend_compile.settings import Settings
from tests.passes.graphs import after_passes, aten_graph, targets

SETTINGS = Settings()
aten = torch.ops.aten
bi = torch.ops.ascend_bi
F = torch.nn.functional


def _fused(fn, *inputs, decompose: tuple[object, ...] = ()) -> torch.fx.GraphModule:
    return after_passes(aten_graph(fn, *inputs, decompose=decompose), canonicalize_squares, rewrite_matmul,
                        fuse_sibling_matmuls, fuse_gated_activation)


def _inputs(*shapes: tuple[int, ...], dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    return tuple(torch.randn(shape, generator=gen).to(dtype) for shape in shapes)


def test_gated_mlp_fuses_with_eagers_roundings() -> None:
    def mlp(x, w_gate, w_up, w_down):  # transformers' order: act_fn(gate_proj(x)) * up_proj(x)
        return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)

    def mlp_up_first(x, w_gate, w_up, w_down):
        return F.linear(F.linear(x, w_up) * F.silu(F.linear(x, w_gate)), w_down)

    shapes = ((2, 3, 64), (128, 64), (128, 64), (64, 128))
    # aten.silu as traced, and written out as Inductor's graphs have it (fp32 division between
    # converts in bf16, no converts in fp32).
    written_out = (aten.silu.default,)
    for fn, dtype, decompose in ((mlp, torch.bfloat16, ()), (mlp_up_first, torch.bfloat16, ()),
                                 (mlp, torch.bfloat16, written_out), (mlp_up_first, torch.float32, written_out)):
        inputs = _inputs(*shapes, dtype=dtype)
        gm = _fused(fn, *inputs, decompose=decompose)
        assert gm.count == 1
        assert targets(gm).count(bi.mm_gated.default) == 1
        assert not {aten.silu.default, aten.exp.default, bi.mm_group.default} & set(targets(gm))
        separate = aten_graph(fn, *inputs, decompose=decompose)
        rewrite_matmul(separate, SETTINGS)
        separate.recompile()
        if dtype == torch.bfloat16:  # the roundings are eager's
            assert torch.equal(gm(*inputs), separate(*inputs))
        else:  # fp32 keeps exp's last place, where the interpreter's numpy and torch's CPU exp differ
            torch.testing.assert_close(gm(*inputs), separate(*inputs))


def _gelu_mlp(x, w_gate, w_up, w_down):  # Gemma's MLP: gelu_pytorch_tanh(gate_proj(x)) * up_proj(x)
    return F.linear(F.gelu(F.linear(x, w_gate), approximate="tanh") * F.linear(x, w_up), w_down)


def _new_gelu_mlp(x, w_gate, w_up, w_down):  # GPT-2 / nanoGPT's NewGELU written out: pow(x, 3), other roundings
    g = F.linear(x, w_gate)
    act = 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * torch.pow(g, 3.0))))
    return F.linear(act * F.linear(x, w_up), w_down)


def test_gelu_tanh_gate_fuses_with_the_decompositions_bits() -> None:
    """GELU's tanh form as torch decomposes it (Inductor's graphs), bf16 and fp32: one ``mm_gated``, the
    bits of the unfused graph.  ``aten.gelu`` as one op (eager's kernel), the exact (erf) GELU and a GELU
    written out with ``pow(x, 3)`` round otherwise and stay (negative control: their graphs keep it)."""
    shapes = ((2, 3, 64), (128, 64), (128, 64), (64, 128))
    for dtype in (torch.bfloat16, torch.float32):
        decompose = (aten.gelu.default,)
        inputs = _inputs(*shapes, dtype=dtype)
        gm = _fused(_gelu_mlp, *inputs, decompose=decompose)
        assert gm.count == 1 and targets(gm).count(bi.mm_gated.default) == 1, dtype
        assert not {aten.gelu.default, aten.tanh.default, bi.mm_group.default} & set(targets(gm))
        assert next(n for n in gm.graph.nodes if n.target is bi.mm_gated.default).args[3] == "gelu_tanh"
        separate = after_passes(aten_graph(_gelu_mlp, *inputs, decompose=decompose), canonicalize_squares,
                                rewrite_matmul)
        assert torch.equal(gm(*inputs), separate(*inputs)), dtype

    def exact_gelu(x, w_gate, w_up, w_down):
        return F.linear(F.gelu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)

    inputs = _inputs(*shapes)
    for fn, decompose, kept in ((_gelu_mlp, (), aten.gelu.default), (_new_gelu_mlp, (), aten.tanh.default),
                                (exact_gelu, (aten.gelu.default,), aten.erf.default)):
        gm = _fused(fn, *inputs, decompose=decompose)
        assert gm.count == 0 and kept in targets(gm) and bi.mm_group.default in targets(gm), fn.__name__


def test_vllms_gelu_and_mul_on_a_merged_gate_up_fuses() -> None:
    """vLLM's ``GeluAndMul(approximate="tanh")`` (Gemma) halves ``gate_up_proj(x)``: once the merged product is
    cut in two, the halves' GELU and product join their launch, with the merged unfused graph's bits."""
    def gelu_and_mul(x, w_gate_up):
        gate_up = F.linear(x, w_gate_up)
        return F.gelu(gate_up[..., :128], approximate="tanh") * gate_up[..., 128:]

    inputs, decompose = _inputs((5, 64), (256, 64)), (aten.gelu.default,)
    gm = after_passes(aten_graph(gelu_and_mul, *inputs, decompose=decompose), canonicalize_squares,
                      canonicalize_splits, split_merged_projections)  # (the pipeline drops the merged product here)
    gm = after_passes(gm, rewrite_matmul, fuse_sibling_matmuls, fuse_gated_activation)
    assert gm.count == 1 and targets(gm).count(bi.mm_gated.default) == 1
    merged = after_passes(aten_graph(gelu_and_mul, *inputs, decompose=decompose), canonicalize_squares,
                          rewrite_matmul)
    assert torch.equal(gm(*inputs), merged(*inputs))


def test_shared_silu_and_other_groups_stay() -> None:
    def shared(x, w_gate, w_up):
        activation = F.silu(F.linear(x, w_gate))
        return activation * F.linear(x, w_up), activation

    def crossed(x, y, w1, w2, w3, w4):  # gate of x's group times up of y's group
        return F.silu(F.linear(x, w1)) * F.linear(y, w3), F.linear(x, w2), F.linear(y, w4)

    gm = _fused(shared, *_inputs((3, 64), (128, 64), (128, 64)))
    assert gm.count == 0 and aten.silu.default in targets(gm)
    gm = _fused(crossed, *_inputs((3, 64), (3, 64), (128, 64), (128, 64), (128, 64), (128, 64)))
    assert gm.count == 0 and targets(gm).count(bi.mm_group.default) == 2


def test_idempotent() -> None:
    def mlp(x, w_gate, w_up):
        return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)

    gm = _fused(mlp, *_inputs((3, 64), (128, 64), (128, 64)))
    assert gm.count == 1 and fuse_gated_activation(gm, SETTINGS) == 0
