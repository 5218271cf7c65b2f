"""The benchmark zoo: its hand-written and vLLM-shaped decoders compute transformers' Qwen3, with vLLM's own
layer maths; under ascend_bi they reach the fused launches the transformers model does, with bits that do
not depend on the batch (and stock torch.compile's do)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pathlib

import pytest
import torch

from ascend_compile.tools import bench_zoo, zoo
from ascend_compile.tools.bench_zoo import count_launches, markdown, merge_runs, structure

transformers = pytest.importorskip("transformers")

CFG = dataclasses.replace(zoo.TINY, layers=1)
CONTEXT = 6


def _qwen3() -> torch.nn.Module:
    config = zoo.transformers_config("Qwen3", CFG)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(config).eval()


def _plain_weights(qwen: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Qwen3's parameters under the hand-written decoder's names."""
    names = {"model.embed_tokens": "embed", "model.norm": "norm", "self_attn.q_proj": "q", "self_attn.k_proj": "k",
             "self_attn.v_proj": "v", "self_attn.o_proj": "o", "self_attn.q_norm": "q_norm",
             "self_attn.k_norm": "k_norm", "input_layernorm": "input_norm", "post_attention_layernorm": "mlp_norm",
             "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
    out = {}
    for name, p in qwen.named_parameters():
        for theirs, ours in names.items():
            name = name.replace(theirs, ours)
        out[name.replace("model.layers", "layers")] = p
    return out


def _decode(qwen: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' logits for a token after a prompt, and the prompt's cached keys and values."""
    ids = torch.randint(0, CFG.vocab, (2, CONTEXT + 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = qwen(input_ids=ids[:, :CONTEXT], use_cache=True)
        layer = out.past_key_values.layers[0]
        keys, values = layer.keys.clone(), layer.values.clone()
        logits = qwen(input_ids=ids[:, CONTEXT:], past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
    return ids[:, CONTEXT:], logits, keys, values


def test_plain_decoder_computes_transformers_qwen3() -> None:
    qwen = _qwen3()
    token, want, keys, values = _decode(qwen)
    plain = zoo.PlainDecoder(CFG).eval()
    plain.load_state_dict(_plain_weights(qwen), strict=False)
    with torch.no_grad():
        got, new_keys, _ = plain(token, torch.tensor([CONTEXT]), [keys], [values])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert new_keys[0].shape[2] == CONTEXT + 1


def test_vllm_decoder_computes_the_plain_one() -> None:
    """Merged projections, residual-returning norms, the cos/sin cache and the paged cache give the plain
    decoder's logits, and the step writes its key at its slot."""
    plain = zoo.build("plain", cfg=CFG, context=CONTEXT, device="cpu", dtype=torch.float32)
    vllm = zoo.build("vllm", cfg=CFG, context=CONTEXT, device="cpu", dtype=torch.float32)
    decoder, plain_decoder = vllm.module, plain.module
    layer, p = decoder.layers[0], plain_decoder.layers[0]
    with torch.no_grad():
        decoder.embed_tokens.weight.copy_(plain_decoder.embed.weight)
        decoder.norm.weight.copy_(plain_decoder.norm.weight)
        layer.qkv_proj.weight.copy_(torch.cat([p.q.weight, p.k.weight, p.v.weight]))
        layer.gate_up_proj.weight.copy_(torch.cat([p.gate.weight, p.up.weight]))
        for ours, theirs in (("o_proj", "o"), ("down_proj", "down"), ("q_norm", "q_norm"), ("k_norm", "k_norm"),
                             ("input_layernorm", "input_norm"), ("post_attention_layernorm", "mlp_norm")):
            getattr(layer, ours).weight.copy_(getattr(p, theirs).weight)
    batch = 2
    plain_inputs, vllm_inputs = plain.inputs(batch), vllm.inputs(batch)
    (key_cache, value_cache), tables = vllm_inputs[2][0], vllm_inputs[4]

    def cached(cache: torch.Tensor) -> torch.Tensor:
        """Each sequence's cached rows, (batch, kv heads, context, dim), read through its block table."""
        blocks = cache.view(-1, CFG.block_size, CFG.kv_heads, CFG.head_dim)[tables]
        return blocks.flatten(1, 2)[:, :CONTEXT].transpose(1, 2).contiguous()

    plain_inputs = (*plain_inputs[:2], [cached(key_cache)], [cached(value_cache)])
    with torch.no_grad():
        want = plain.step(*plain_inputs)
        got = vllm.step(*vllm_inputs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert key_cache.view(-1, CFG.kv_heads, CFG.head_dim)[vllm_inputs[3]].abs().sum() > 0  # the new keys' slots


def test_vllm_layer_maths_are_vllms() -> None:
    """The zoo's RMSNorm and rotary are vLLM's own ``forward_native`` maths, bit for bit."""
    try:
        from vllm.ir.ops.layernorm import fused_add_rms_norm, rms_norm
        from vllm.model_executor.layers.rotary_embedding.common import ApplyRotaryEmb
    except Exception as error:  # noqa: BLE001  (no vLLM, or one that fails to import: nothing to compare)
        pytest.skip(f"vllm is not importable: {error}")
    gen = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(5, 64, generator=gen).bfloat16() for _ in range(2))
    norm = zoo.VllmRMSNorm(64, 1e-6).bfloat16()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=gen))
        assert torch.equal(norm(x), rms_norm.impls["native"].impl_fn(x, norm.weight, 1e-6))
        ours, theirs = norm(x, residual), fused_add_rms_norm.impls["native"].impl_fn(x, residual, norm.weight, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    q = torch.randn(5, 4, 32, generator=gen).bfloat16()
    cos, sin = zoo.rope_angles(CFG, torch.arange(5))
    for neox in (True, False):
        assert torch.equal(zoo.apply_rotary(q, cos, sin, neox), ApplyRotaryEmb.forward_static(q, cos, sin, neox))


def test_a_merged_run_keeps_the_models_it_did_not_measure() -> None:
    """``--merge``: a second call's models replace the first's, the others stay, in the zoo's order;
    a run of another card is refused."""
    kept = json.loads((pathlib.Path(__file__).parents[1] / "docs" / "bench" / "zoo_h100.json").read_text())
    run = copy.deepcopy(kept) | {"points": [p | {"ms": 2 * p["ms"]} for p in kept["points"] if p["model"] == "plain"],
                                 "invariant": {"plain": kept["invariant"]["plain"]},
                                 "bytes_read": {"plain": kept["bytes_read"]["plain"]}}
    run["info"]["date"] = "2027-01-01"
    merged = merge_runs(kept, run)
    assert list(merged["invariant"]) == list(kept["invariant"]) == list(dict.fromkeys(p["model"] for p in
                                                                                       merged["points"]))
    doubled = {(p["model"], p["mode"], p["bucket"]): p["ms"] for p in merged["points"]}
    for p in kept["points"]:
        assert doubled[p["model"], p["mode"], p["bucket"]] == p["ms"] * (2 if p["model"] == "plain" else 1)
    assert merged["info"]["date"].endswith(" and 2027-01-01") and "| plain | ratio |" in markdown(merged)
    other = copy.deepcopy(run)
    other["info"]["card"] = "NVIDIA H200"
    with pytest.raises(SystemExit, match="not a GPU run with this run's card, config"):
        merge_runs(kept, other)
    parser = argparse.ArgumentParser()
    bench_zoo.add_arguments(parser)
    with pytest.raises(SystemExit, match="merges GPU runs"):  # a structure run is never merged, nor ignored
        bench_zoo.run(parser.parse_args(["--structure", "--merge", "--json", "unused.json"]))


def test_launches_are_counted_in_the_call_function_only() -> None:
    code = ("def triton_red_fused_0(): pass\ncpp_fused_add_0 = async_compile.cpp('...')\n"
            "def call(args):\n    buf0 = torch.ops.ascend_bi.mm.default(x, w)\n    triton_red_fused_0.run(buf0)\n"
            "    cpp_fused_add_0(buf0)\n    extern_kernels.mm(a, b, out=c)\n    del buf0\n"
            "    buf1 = reinterpret_tensor(buf0, (2,), (1,), 0)\n    return (buf1, )\n")
    assert count_launches([code]) == 4


@pytest.fixture(scope="module")
def qwen3_structure() -> dict[str, object]:
    return structure("qwen3", stock_launches=False, stock_bits=False)  # the reference: ascend_bi's side only


@pytest.mark.slow  # three compiled decoders each; the fusions' bits are tested pass by pass in tests/passes
@pytest.mark.parametrize("name", ["plain", "vllm", "vllm-gptj"])
def test_models_written_differently_reach_qwen3s_launches(name: str, qwen3_structure: dict[str, object]) -> None:
    """The hand-written and vLLM-shaped decoders (neox or GPT-J rotation) fuse like transformers' Qwen3 (their
    query/key norms and rotations in one launch; the hand-written one's caches grown by ``cat`` in its attention
    launch, the vLLM-shaped ones' paged caches written in the rotation's), launch per layer what it does, and keep
    sequence 0's bits the same at every batch size."""
    reference, other = qwen3_structure, structure(name, stock_launches=False)
    assert reference["invariant"]["ascend_bi"] and other["invariant"]["ascend_bi"], (reference, other)
    assert not other["invariant"]["torch.compile"], other  # the negative control: stock bits move with the batch
    assert other["fusions"].get("fuse_norm_rope") == zoo.TINY.layers, other
    assert other["fusions"].get("fuse_rope_attention", 0) == (zoo.TINY.layers if name == "plain" else 0), other
    assert other["launches_per_layer"]["ascend_bi"] <= reference["launches_per_layer"]["ascend_bi"], (reference, other)
    assert not other["uncovered"]


@pytest.mark.slow  # the pattern's bits are in tests/passes/test_fuse_norm_rope.py; this is the real model
def test_gemmas_transposed_norms_gelu_and_sandwich_norms_join_launches(qwen3_structure: dict[str, object]) -> None:
    """transformers' Gemma 3 normalizes the transposed query and key, its weight ``1 + w`` on the fp32 value:
    norms, rotation and cache writes still fold into the rotation's launch and that into attention's; its MLP's
    GELU (tanh form) joins the gate/up launch, and each sublayer's output norm the norm after the residual add
    (the last layer's the final norm): as many launches a layer as Qwen3's."""
    found = structure("gemma3", stock_launches=False, stock_bits=False)
    assert found["fusions"].get("fuse_norm_rope") == found["fusions"].get("fuse_rope_attention") == zoo.TINY.layers
    assert found["fusions"].get("fuse_gated_activation") == zoo.TINY.layers
    assert found["fusions"].get("fuse_sandwich_norms") == 2 * zoo.TINY.layers
    reference = qwen3_structure["launches_per_layer"]["ascend_bi"]
    assert found["invariant"]["ascend_bi"] and found["launches_per_layer"]["ascend_bi"] <= reference, found
    assert not found["uncovered"]
