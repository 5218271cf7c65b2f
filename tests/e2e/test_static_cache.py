"""Decode with transformers' static cache under the Inductor executor: each layer's query/key norms
(when it has them), rotation and cache writes run as one launch that writes the caches in place and, past the first
layer (whose write position the mask also reads), advances their write position (``fuse_norm_rope``),
with the bits of the unfused graph; sequence 0's logits and cache rows are the same alone and in a
batch."""

from __future__ import annotations

import logging

import pytest
import torch

import ascend_compile
from tests.e2e.tiny_transformers import VOCAB, tiny_model

transformers = pytest.importorskip("transformers")
PROMPT, STEPS, LAYERS = 4, 2, 2


def _decode(model: torch.nn.Module, batch: int, **options: object) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Sequence 0's last logits after a prompt and each decode step, and its cache rows at the end
    (after checking that every layer's write position went past the prompt and the steps)."""
    torch._dynamo.reset()

    def step(ids: torch.Tensor, cache: object, position: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, past_key_values=cache, cache_position=position, use_cache=True).logits[:, -1]

    compiled = torch.compile(step, backend="ascend_bi", options={"executor": "inductor", **options})
    cache = transformers.StaticCache(config=model.config, max_cache_len=PROMPT + STEPS + 2)
    ids = torch.stack([torch.randint(0, VOCAB, (PROMPT + STEPS,), generator=torch.Generator().manual_seed(i))
                       for i in range(batch)])
    with torch.no_grad():
        logits = [compiled(ids[:, :PROMPT], cache, torch.arange(PROMPT))[0]]
        for t in range(PROMPT, PROMPT + STEPS):
            logits.append(compiled(ids[:, t:t + 1], cache, torch.tensor([t]))[0])
    assert [int(layer.cumulative_length) for layer in cache.layers] == [PROMPT + STEPS] * LAYERS
    return logits, [t[0].clone() for layer in cache.layers for t in (layer.keys, layer.values)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


#: Llama's rotation (``fuse_rope``) shares the cache-writing launch with Qwen3's; its layers' bits are also
#: checked in tests/passes/test_fuse_rope.py, so the whole model runs in the slow suite.
@pytest.mark.parametrize(("name", "fusion"), [("qwen3", "fuse_norm_rope"),
                                              pytest.param("llama", "fuse_rope", marks=pytest.mark.slow)])
def test_static_cache_writes_fused_in_place_with_the_same_bits(caplog: pytest.LogCaptureFixture, name: str,
                                                               fusion: str) -> None:
    """Qwen3 (query/key norms) and Llama (none): each layer's rotations and cache writes in one launch."""
    model = tiny_model(name, attn_implementation="sdpa", dtype=torch.bfloat16, layers=LAYERS)
    ascend_compile.clear_reports()
    with caplog.at_level(logging.DEBUG, logger=f"ascend_compile.passes.{fusion}"):
        alone = _decode(model, 1)
    reports = ascend_compile.reports()
    assert reports and all(r.rewrites[fusion] == LAYERS for r in reports)
    # The decode step's graph (the last compiled) runs each layer's rotation in its attention launch.
    assert reports[-1].rewrites["fuse_rope_attention"] == LAYERS
    assert f"{LAYERS - 1} of them advancing the cache's write position" in caplog.text
    in_batch = _decode(model, 3)
    unfused = _decode(model, 1, disable_passes=[fusion])
    assert _same(*(r[0] for r in (alone, in_batch))) and _same(*(r[1] for r in (alone, in_batch)))
    assert _same(alone[0], unfused[0]) and _same(alone[1], unfused[1])
    # The caches hold the prompt and both steps (nothing written to a copy), and nothing past them.
    assert all(rows[:, :PROMPT + STEPS].abs().sum() > 0 and not rows[:, PROMPT + STEPS:].any() for rows in alone[1])
