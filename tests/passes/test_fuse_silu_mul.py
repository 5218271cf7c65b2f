"""fuse_silu_mul: a gated MLP's activation joins its gate/up launch with eager's bits; a SiLU or
a product used elsewhere, or factors of different groups, stay as they are."""

from __future__ import annotations

import torch

from ascend_compile.passes.fuse_sibling_matmuls import fuse_sibling_matmuls
from ascend_compile.passes.fuse_silu_mul import fuse_silu_mul
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.settings import Settings
from tests.passes.graphs import after_passes, aten_graph, targets

SETTINGS = Settings()
aten = torch.ops.aten
bi = torch.ops.ascend_bi
F = torch.nn.functional


def _fused(fn, *inputs, decompose: tuple[object, ...] = ()) -> torch.fx.GraphModule:
    return after_passes(aten_graph(fn, *inputs, decompose=decompose), rewrite_matmul, fuse_sibling_matmuls,
                        fuse_silu_mul)


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
        assert targets(gm).count(bi.mm_silu_mul.default) == 1
        assert not {aten.silu.default, aten.exp.default, bi.mm_group.default} & set(targets(gm))
        separate = aten_graph(fn, *inputs, decompose=decompose)
        rewrite_matmul(separate, SETTINGS)
        separate.recompile()
        if dtype == torch.bfloat16:  # the roundings are eager's
            assert torch.equal(gm(*inputs), separate(*inputs))
        else:  # fp32 keeps exp's last place, where the interpreter's numpy and torch's CPU exp differ
            torch.testing.assert_close(gm(*inputs), separate(*inputs))


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
    assert gm.count == 1 and fuse_silu_mul(gm, SETTINGS) == 0
