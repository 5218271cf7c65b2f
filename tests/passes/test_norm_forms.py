"""One RMSNorm written the ways real sources write it: each fuses into one launch, in its own rounding
form, with the bits of the unfused templates; maths that is not an RMSNorm does not fuse.

The sources are the real ones where they are importable (transformers' Llama and Gemma 3 norms,
torch's ``_fused_rms_norm`` decomposition -- what ``F.rms_norm`` becomes under torch.compile --, vLLM's IR
ops),
else the zoo's copies of vLLM's (``tools/zoo.py``, checked against vLLM in ``tests/test_zoo.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch._decomp.decompositions import _fused_rms_norm

from ascend_compile.kernels.rms_norm import NormForm
from ascend_compile.passes.canonicalize_squares import canonicalize_squares
from ascend_compile.passes.fuse_rms_norm import fuse_rms_norm
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.tools.zoo import PlainRMSNorm, VllmRMSNorm
from tests.passes.graphs import after_passes, aten_graph, targets

transformers = pytest.importorskip("transformers")
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

bi = torch.ops.ascend_bi
N, EPS = 64, 1e-6


def _module(cls: type[torch.nn.Module]) -> Callable[..., object]:
    """The norm module's forward as a function of its inputs and its weight (a graph input, as Dynamo lifts it)."""
    norm = cls(N, eps=EPS) if cls is not VllmRMSNorm else cls(N, EPS)
    return lambda *args: torch.func.functional_call(norm, {"weight": args[-1]}, args[:-1])


def _residual_then(norm: Callable[..., object]) -> Callable[..., object]:
    """transformers' decoder layer: the residual added in the activations' dtype, then the norm."""
    def fn(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> tuple[object, torch.Tensor]:
        h = residual + x
        return norm(h, weight), h

    return fn


def _fp32_residual_stream(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> tuple[object, object]:
    """vLLM's ``fused_add_rms_norm`` as Inductor leaves it on torch 2.11, whose joint-graph pass drops the sum's
    round trip through bf16: the residual stream stays fp32 (here the first layer's, an upcast residual)."""
    h = x.float() + residual.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * weight, h


#: name -> (function of (x[, residual], weight), activations it takes, the form it must fuse in, whether a
#: residual add fuses).
SOURCES: dict[str, tuple[Callable[..., object], int, NormForm, bool]] = {
    "transformers Llama": (_module(LlamaRMSNorm), 1, NormForm.LLAMA, False),
    "transformers Llama after a residual add": (_residual_then(_module(LlamaRMSNorm)), 2, NormForm.LLAMA, True),
    "transformers Gemma 3 (1 + w)": (_module(Gemma3RMSNorm), 1, NormForm.WEIGHT_FP32 | NormForm.WEIGHT_PLUS_ONE,
                                     False),
    "transformers Gemma 3 after a residual add": (_residual_then(_module(Gemma3RMSNorm)), 2,
                                                  NormForm.WEIGHT_FP32 | NormForm.WEIGHT_PLUS_ONE, True),
    "hand-written x * x": (_module(PlainRMSNorm), 1, NormForm.LLAMA, False),
    "F.rms_norm (CPU)": (lambda x, w: F.rms_norm(x, (N,), w, EPS), 1, NormForm.WEIGHT_FP32, False),
    "torch _fused_rms_norm": (lambda x, w: _fused_rms_norm(x, [N], w, EPS)[0], 1, NormForm.WEIGHT_FP32, False),
    "vLLM rms_norm": (_module(VllmRMSNorm), 1, NormForm.LLAMA, False),
    "vLLM fused_add_rms_norm": (_module(VllmRMSNorm), 2, NormForm.FP32_SUM, True),
    "vLLM fused_add_rms_norm, fp32 residual stream": (_fp32_residual_stream, 2,
                                                      NormForm.FP32_SUM | NormForm.FP32_RESIDUAL, True),
}


def _inputs(arity: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (*((torch.randn(5, N, generator=gen) * 3).to(dtype) for _ in range(arity)),
            torch.randn(N, generator=gen).to(dtype))


def _graphs(fn: Callable[..., object], inputs: tuple[torch.Tensor, ...]) -> tuple[torch.fx.GraphModule, ...]:
    """(unfused, fused) graphs of ``fn``, traced twice: torch's ``rms_norm`` composite decomposes below the
    first trace's functionalization (an in-place ``add_``), the second makes it functional as AOTAutograd does."""
    def traced() -> torch.fx.GraphModule:
        return aten_graph(aten_graph(fn, *inputs), *inputs)

    unfused = after_passes(traced(), canonicalize_squares, rewrite_reductions)
    fused = after_passes(traced(), canonicalize_squares, rewrite_reductions, fuse_rms_norm)
    return unfused, fused


def _forms(gm: torch.fx.GraphModule) -> list[int]:
    return [n.args[-1] for n in gm.graph.nodes if n.target in (bi.rms_norm.default, bi.add_rms_norm.default)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("source", list(SOURCES))
def test_every_source_fuses_in_its_form_with_the_unfused_bits(source: str, dtype: torch.dtype) -> None:
    fn, arity, form, adds_residual = SOURCES[source]
    inputs = _inputs(arity, dtype)
    unfused, fused = _graphs(fn, inputs)
    assert fused.count == 1, source
    names = targets(fused)
    assert names.count(bi.add_rms_norm.default if adds_residual else bi.rms_norm.default) == 1
    assert bi.sum.default not in names
    (got_form,) = map(NormForm, _forms(fused))
    if dtype == torch.float32:  # fp32 has nothing to round: the forms differ only by Gemma's 1 + w
        assert got_form & NormForm.WEIGHT_PLUS_ONE == form & NormForm.WEIGHT_PLUS_ONE
    else:
        assert got_form == form
    for got, want in zip(torch.utils._pytree.tree_leaves(fused(*inputs)),
                         torch.utils._pytree.tree_leaves(unfused(*inputs)), strict=True):
        assert torch.equal(got, want), source
    reference = fn(*(t.double() for t in inputs))
    for got, ref in zip(torch.utils._pytree.tree_leaves(fused(*inputs)), torch.utils._pytree.tree_leaves(reference),
                        strict=True):
        torch.testing.assert_close(got.double(), ref.double(), rtol=2e-2, atol=2e-2)


def test_the_forms_round_differently() -> None:
    """The negative control of the matrix: in bf16 the forms give other bits for the same inputs, so a
    norm fused in the wrong form would be caught by the bit comparison above."""
    x, r, w = _inputs(2, torch.bfloat16)
    assert not torch.equal(SOURCES["transformers Llama"][0](x, w), SOURCES["torch _fused_rms_norm"][0](x, w))
    vllm_out, _ = SOURCES["vLLM fused_add_rms_norm"][0](x, r, w)
    assert not torch.equal(vllm_out, SOURCES["vLLM rms_norm"][0](r + x, w))


def test_not_an_rms_norm_does_not_fuse() -> None:
    def centred(x: torch.Tensor) -> torch.Tensor:  # a variance, not a mean of squares
        x32 = x.float()
        return (x32 * torch.rsqrt((x32 - x32.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)

    def weight_of_other_width(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # broadcasts over rows, not columns
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS) * (1.0 + w.float())).to(x.dtype)

    x = torch.randn(5, N).bfloat16()
    assert _graphs(centred, (x,))[1].count == 0
    assert _graphs(weight_of_other_width, (x, torch.randn(5, 1).bfloat16()))[1].count == 0
