"""fuse_norm_rope: a Qwen3 layer's query/key norms, rotation and static-cache writes become one
template launch with the same bits; the writes go in under ``auto_functionalized`` for Inductor
only; rotations whose inputs are used elsewhere stay as they are."""

from __future__ import annotations

import dataclasses
import functools
import operator

import pytest
import torch
from torch._higher_order_ops.auto_functionalize import auto_functionalized
from torch._inductor import lowering

from ascend_compile import devices
from ascend_compile.devices import Device, NpuFacts
from ascend_compile.executors.inductor import allow_fallbacks
from ascend_compile.kernels.rms_norm import NormForm
from ascend_compile.passes.canonicalize_input_writes import canonicalize_input_writes
from ascend_compile.passes.canonicalize_rotary import canonicalize_rotary
from ascend_compile.passes.canonicalize_splits import canonicalize_splits
from ascend_compile.passes.fuse_norm_rope import fuse_norm_rope
from ascend_compile.passes.fuse_rms_norm import fuse_rms_norm
from ascend_compile.passes.fuse_sibling_matmuls import fuse_sibling_matmuls
from ascend_compile.passes.fuse_sibling_norms import fuse_sibling_norms
from ascend_compile.passes.graph_facts import attach, facts_of
from ascend_compile.passes.op_plans import op_plans
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.tools import zoo
from tests.passes.graphs import after_passes, aten_graph, targets

aten = torch.ops.aten
bi = torch.ops.ascend_bi
F = torch.nn.functional
BEFORE = (rewrite_matmul, rewrite_reductions, fuse_rms_norm, fuse_sibling_matmuls, fuse_sibling_norms)
HEAD = 32


def _rms(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    h32 = h.to(torch.float32)
    return weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(h.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    return torch.cat((-x[..., HEAD // 2:], x[..., :HEAD // 2]), dim=-1)


def _prologue(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    """Qwen3Attention up to attention: projections per head, norms, transpose, rotation."""
    batch, length = x.shape[:2]
    q, k, v = (F.linear(x, w).view(batch, length, -1, HEAD) for w in (wq, wk, wv))
    q, k = _rms(q, q_norm).transpose(1, 2), _rms(k, k_norm).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v.transpose(1, 2)


def _with_cache(x, wq, wk, wv, q_norm, k_norm, cos, sin, k_cache, v_cache, index):
    """The same with transformers' static cache update (``StaticLayer.update``)."""
    q, k, v = _prologue(x, wq, wk, wv, q_norm, k_norm, cos, sin)
    k_cache.index_copy_(2, index, k)
    v_cache.index_copy_(2, index, v)
    return q * 1, k_cache * 1, v_cache * 1  # attention reads the updated caches


def _appending(x, wq, wk, wv, q_norm, k_norm, cos, sin, k_cache, v_cache, position):
    """``StaticLayer.update`` as transformers writes it: the slots from the cache's write position on,
    which then advances by the step's length."""
    q, k, v = _prologue(x, wq, wk, wv, q_norm, k_norm, cos, sin)
    index = torch.arange(k.shape[2]) + position
    position.add_(k.shape[2])
    k_cache.index_copy_(2, index, k)
    v_cache.index_copy_(2, index, v)
    return q * 1, k_cache * 1, v_cache * 1


def _inputs(cache: bool = False, position: bool = False) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 64, generator=gen).bfloat16()
    weights = [torch.randn(n, 64, generator=gen).bfloat16() for n in (4 * HEAD, 2 * HEAD, 2 * HEAD)]
    norms = [torch.rand(HEAD, generator=gen).bfloat16() + 0.5 for _ in range(2)]
    angles = torch.rand(1, 2, HEAD // 2, generator=gen) * 20
    angles = torch.cat((angles, angles), dim=-1)
    inputs = (x, *weights, *norms, angles.cos().bfloat16(), angles.sin().bfloat16())
    if cache:
        index = torch.tensor(3) if position else torch.tensor([3, 4])
        inputs += (torch.zeros(3, 2, 6, HEAD).bfloat16(), torch.zeros(3, 2, 6, HEAD).bfloat16(), index)
    return inputs


def test_norms_and_rotation_share_the_norm_launch_with_the_same_bits() -> None:
    inputs = _inputs()
    gm = after_passes(aten_graph(_prologue, *inputs), *BEFORE, fuse_norm_rope)
    assert gm.count == 1
    names = targets(gm)
    assert bi.rms_norm_rope.default in names and bi.rms_norm_pair.default not in names
    assert aten.cat.default not in names and aten.neg.default not in names
    separate = after_passes(aten_graph(_prologue, *inputs), *BEFORE)
    assert bi.rms_norm_pair.default in targets(separate)
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))


def _gemma_rms(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """transformers' ``Gemma3RMSNorm``: the fp32 value times ``1 + w``, rounded once."""
    h32 = h.float()
    return (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + weight.float())).type_as(h)


def _gemma(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    """Gemma3Attention up to attention: projections per head, transposed, then normalized and rotated."""
    batch, length = x.shape[:2]
    q, k = (F.linear(x, w).view(batch, length, -1, HEAD).transpose(1, 2) for w in (wq, wk))
    q, k = _gemma_rms(q, q_norm), _gemma_rms(k, k_norm)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def test_gemmas_norms_after_the_transpose_rotate_in_the_launch_in_their_rounding() -> None:
    """Gemma normalizes the transposed projections, its weight ``1 + w`` on the fp32 value: the launch reads the
    projections per head and rounds as Gemma does (the pair's form).  Negative control: the Llama rounding gives
    other bits."""
    inputs = _inputs()
    gm = after_passes(aten_graph(_gemma, *inputs), *BEFORE, fuse_norm_rope)
    (node,) = [n for n in gm.graph.nodes if n.target is bi.rms_norm_rope.default]
    assert gm.count == 1 and node.kwargs["form"] == NormForm.WEIGHT_FP32 | NormForm.WEIGHT_PLUS_ONE
    separate = after_passes(aten_graph(_gemma, *inputs), *BEFORE)
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))
    assert all(torch.equal(f, e) for f, e in zip(gm(*inputs), _gemma(*inputs), strict=True))
    node.kwargs = {**node.kwargs, "form": 0}
    gm.recompile()
    assert not torch.equal(gm(*inputs)[0], _gemma(*inputs)[0])


def _rotated_by(x, wq, wk, q_norm, k_norm, cos, sin):
    """A hand-written layer's rotation by angles that broadcast against (batch, heads, length, dim)."""
    batch, length = x.shape[:2]
    q, k = (F.linear(x, w).view(batch, length, -1, HEAD) for w in (wq, wk))
    q, k = _rms(q, q_norm).transpose(1, 2), _rms(k, k_norm).transpose(1, 2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _angles_per_position(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    """Angles (length, dim), the same for every sequence."""
    return _rotated_by(x, wq, wk, q_norm, k_norm, cos[0], sin[0])


def _one_angle(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    """Angles (1, dim) broadcast over a length of 2: not (length, dim), so not the kernel's."""
    return _rotated_by(x, wq, wk, q_norm, k_norm, cos[0, :1], sin[0, :1])


@pytest.mark.parametrize(("layer", "fused"), [(_angles_per_position, 1), (_one_angle, 0)],
                         ids=["angles (length, dim)", "one angle for every position"])
def test_angles_without_batch_and_head_dims(layer, fused: int) -> None:
    inputs = _inputs()
    gm = after_passes(aten_graph(layer, *inputs), *BEFORE, fuse_norm_rope)
    assert gm.count == fused and (bi.rms_norm_rope.default in targets(gm)) == bool(fused)
    separate = after_passes(aten_graph(layer, *inputs), *BEFORE)
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))


def _vllm_rotated(x, wq, wk, wv, q_norm, k_norm, cos, sin, neox):
    """vLLM's layer: a step's tokens flattened, (tokens, heads, dim) per head, the neox rotation of halves (or
    GPT-J's of interleaved pairs) by each token's half-width angles."""
    tokens = x.shape[0] * x.shape[1]
    h = x.reshape(tokens, -1)
    q = _rms(F.linear(h, wq).view(tokens, -1, HEAD), q_norm)
    k = _rms(F.linear(h, wk).view(tokens, -1, HEAD), k_norm)
    half_cos, half_sin = cos.reshape(tokens, HEAD)[:, None, :HEAD // 2], sin.reshape(tokens, HEAD)[:, None, :HEAD // 2]
    return zoo.apply_rotary(q, half_cos[:, 0], half_sin[:, 0], neox), zoo.apply_rotary(k, half_cos[:, 0],
                                                                                        half_sin[:, 0], neox)


def _vllm_flat(x, wq, wk, wv, q_norm, k_norm, cos, sin):
    return _vllm_rotated(x, wq, wk, wv, q_norm, k_norm, cos, sin, True)


def test_flattened_tokens_rotate_in_the_norm_launch() -> None:
    inputs = _inputs()
    inputs = (*inputs[:6], inputs[6].expand(3, 2, HEAD).contiguous(), inputs[7].expand(3, 2, HEAD).contiguous())
    def canonical() -> torch.fx.GraphModule:  # dead code removed after them, as the pipeline does
        return after_passes(aten_graph(_vllm_flat, *inputs), canonicalize_splits, canonicalize_rotary)

    gm = after_passes(canonical(), *BEFORE, fuse_norm_rope)
    assert gm.count == 1 and bi.rms_norm_rope.default in targets(gm)
    separate = after_passes(canonical(), *BEFORE)
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), separate(*inputs), strict=True))
    assert all(torch.equal(f, s) for f, s in zip(gm(*inputs), _vllm_flat(*inputs), strict=True))


def _vllm_paged(x, wq, wk, wv, q_norm, k_norm, cos, sin, key_cache, value_cache, slot_mapping, neox=True):
    """vLLM's layer up to attention with its paged cache: each token's rotated key and its value written at
    its slot through the cache's merged view."""
    tokens = x.shape[0] * x.shape[1]
    v = F.linear(x.reshape(tokens, -1), wv).view(tokens, -1, HEAD)  # projected with the query and key
    q, k = _vllm_rotated(x, wq, wk, wv, q_norm, k_norm, cos, sin, neox)
    key_cache.view(-1, *key_cache.shape[2:]).index_copy_(0, slot_mapping, k)
    value_cache.view(-1, *value_cache.shape[2:]).index_copy_(0, slot_mapping, v)
    return q.reshape(tokens, -1) * 1


def _paged_inputs(slots: list[int]) -> tuple[torch.Tensor, ...]:
    inputs = _inputs()
    gen = torch.Generator().manual_seed(4)
    caches = [torch.randn(4, 4, 2, HEAD, generator=gen).bfloat16() for _ in range(2)]
    return (*inputs[:6], inputs[6].expand(3, 2, HEAD).contiguous(), inputs[7].expand(3, 2, HEAD).contiguous(),
            *caches, torch.tensor(slots))


@pytest.mark.parametrize(("executor", "neox"), [("inductor", True), ("fx", True), ("inductor", False)],
                         ids=["inductor", "fx", "inductor-gptj"])
def test_paged_cache_writes_join_the_launch(executor: str, neox: bool) -> None:
    """Under Inductor the slot writes of vLLM's paged cache join the launch (as the caches themselves once
    ``canonicalize_input_writes`` has seen them); other executors keep the writes.  The same bits: the query,
    every cache block; with GPT-J's interleaved rotation too."""
    slots = [0, 5, 15, 9, 2, 12]
    layer = functools.partial(_vllm_paged, neox=neox)

    def graph() -> torch.fx.GraphModule:
        traced = aten_graph(layer, *_paged_inputs(slots), executor=executor,
                            decompose=(aten.index_copy_.default, aten.index_copy.default))
        return after_passes(traced, canonicalize_splits, canonicalize_rotary, canonicalize_input_writes)

    fused, separate = after_passes(graph(), *BEFORE, fuse_norm_rope), after_passes(graph(), *BEFORE)
    paged = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert fused.count == 1 and len(paged) == (executor == "inductor")
    assert (aten.index_put.default in targets(fused)) == (executor == "fx")
    if paged:
        assert paged[0].args[0] is bi.rms_norm_rope_paged.default
        assert paged[0].kwargs.get("interleaved", False) == (not neox)
    got, want, eager = (_paged_inputs(slots) for _ in range(3))
    outs = [fused(*got), separate(*want), layer(*eager)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert all(torch.equal(g, w) and torch.equal(g, e) for g, w, e in zip(got[8:10], want[8:10], eager[8:10],
                                                                           strict=True))
    # Negative control: other slots write other cache rows.
    moved = _paged_inputs([1, 5, 15, 9, 2, 12])
    fused(*moved)
    assert not torch.equal(moved[8], got[8])


def _cache_graphs(executor: str, layer=_with_cache) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    inputs = _inputs(cache=True, position=layer is not _with_cache)
    traced = [aten_graph(layer, *inputs, decompose=(aten.index_copy_.default, aten.index_copy.default),
                         executor=executor) for _ in range(2)]
    return after_passes(traced[0], *BEFORE, fuse_norm_rope), after_passes(traced[1], *BEFORE)


def _run(gm: torch.fx.GraphModule, position: bool = False) -> list[torch.Tensor]:
    inputs = _inputs(cache=True, position=position)
    return [*gm(*inputs), *inputs[-3:]]  # outputs, then the caches and the index as the graph left them


def test_cache_writes_join_the_launch_under_auto_functionalized_for_inductor() -> None:
    fused, separate = _cache_graphs("inductor")
    assert fused.count == 1
    (node,) = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert node.args[0] is bi.rms_norm_rope_cache.default
    assert node.kwargs["k_cache"].op == node.kwargs["v_cache"].op == "placeholder"
    assert aten.index_put.default not in targets(fused) and aten.index_put.default in targets(separate)
    # Each cache is still written back to its input, now from the op's new value of it.
    copies = [n for n in fused.graph.nodes if n.target is aten.copy_.default]
    assert {(c.args[0], c.args[1].target, c.args[1].args[1]) for c in copies} == {
        (node.kwargs["k_cache"], operator.getitem, 1), (node.kwargs["v_cache"], operator.getitem, 2)}
    assert all(torch.equal(f, s) for f, s in zip(_run(fused), _run(separate), strict=True))


def test_the_write_position_is_read_and_advanced_in_the_launch() -> None:
    """With transformers' write position, the slots and the position's increment join the launch:
    no arange, no add, and the position is written back from the op's new value of it."""
    fused, separate = _cache_graphs("inductor", _appending)
    assert fused.count == 1
    (node,) = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert node.args[0] is bi.rms_norm_rope_append.default and node.kwargs["cache_length"].op == "placeholder"
    slots = {aten.arange.default, torch.ops.prims.iota.default, aten.add.Tensor}
    assert not slots & set(targets(fused)) and slots <= set(targets(separate)) | {torch.ops.prims.iota.default}
    copies = {c.args[0]: c.args[1] for c in fused.graph.nodes if c.target is aten.copy_.default}
    assert copies[node.kwargs["cache_length"]].args == (node, 3)
    got, want = _run(fused, position=True), _run(separate, position=True)
    assert all(torch.equal(f, s) for f, s in zip(got, want, strict=True)) and got[-1].item() == 5


def test_a_write_position_read_after_the_writes_keeps_its_slots() -> None:
    """Negative control: a position something reads after the cache writes is not advanced early;
    the slots stay an input of the launch."""
    def read_after(*args):
        outs = _appending(*args)
        return (*outs, args[-1] * 1)

    fused, separate = _cache_graphs("inductor", read_after)
    assert fused.count == 1 and aten.add.Tensor in targets(fused)
    (node,) = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert node.args[0] is bi.rms_norm_rope_cache.default
    got, want = _run(fused, position=True), _run(separate, position=True)
    assert all(torch.equal(f, s) for f, s in zip(got, want, strict=True)) and got[3].item() == 5


def test_npus_keep_the_slots_as_an_input() -> None:
    """No arrival counters on NPUs: the position is advanced by Inductor there, the slots passed in."""
    gm = after_passes(aten_graph(_appending, *_inputs(cache=True, position=True),
                                 decompose=(aten.index_copy_.default, aten.index_copy.default), executor="inductor"),
                      *BEFORE)  # the pairs as a GPU's or the CPU's plans group them
    npu = Device(kind="npu", index=0, compute_units=24, triton_interpreted=False,
                 npu=NpuFacts(ai_cores=24, vector_cores=48, ub_bytes=192 * 1024))
    attach(gm, dataclasses.replace(facts_of(gm), device=npu))
    fused = after_passes(gm, fuse_norm_rope)
    (node,) = [n for n in fused.graph.nodes if n.target is auto_functionalized]
    assert node.args[0] is bi.rms_norm_rope_cache.default and aten.add.Tensor in targets(fused)


@pytest.mark.parametrize(("layer", "op"), [(_with_cache, "rms_norm_rope_cache"),
                                          (_appending, "rms_norm_rope_append")])
def test_the_wrapped_op_gets_its_plan_and_its_fallback(monkeypatch: pytest.MonkeyPatch, layer, op: str) -> None:
    """The dumps show the op under ``auto_functionalized`` with its row plan, and Inductor's fallback
    allow list gets it like any other op (``executors/inductor.py``)."""
    fused, _ = _cache_graphs("inductor", layer)
    (plan,) = [p for p in op_plans(fused, devices.detect(_inputs())) if op in p["op"]]
    assert plan["family"] == "row" and plan["extents"] == {"n": str(HEAD)}
    monkeypatch.setattr(lowering, "FALLBACK_ALLOW_LIST", set())
    allow_fallbacks(fused.graph)
    assert f"ascend_bi::{op}" in lowering.FALLBACK_ALLOW_LIST


def test_other_executors_get_the_rotation_without_the_writes() -> None:
    """The fx executor would run ``auto_functionalized`` on copies of the caches."""
    fused, separate = _cache_graphs("fx")
    assert fused.count == 1 and bi.rms_norm_rope.default in targets(fused)
    assert auto_functionalized not in targets(fused) and aten.index_put.default in targets(fused)
    assert all(torch.equal(f, s) for f, s in zip(_run(fused), _run(separate), strict=True))


def test_a_normalized_output_used_elsewhere_keeps_the_ops() -> None:
    def unrotated_also(x, wq, wk, wv, q_norm, k_norm, cos, sin):
        batch, length = x.shape[:2]
        q = _rms(F.linear(x, wq).view(batch, length, -1, HEAD), q_norm).transpose(1, 2)
        k = _rms(F.linear(x, wk).view(batch, length, -1, HEAD), k_norm).transpose(1, 2)
        return q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1), k, k * cos.unsqueeze(1)

    inputs = _inputs()
    gm = after_passes(aten_graph(unrotated_also, *inputs), *BEFORE, fuse_norm_rope)
    assert gm.count == 0 and bi.rms_norm_pair.default in targets(gm)
