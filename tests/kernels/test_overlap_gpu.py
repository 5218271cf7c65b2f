"""Overlapped launches on a GPU: a decode layer's template kernels, captured in a CUDA graph, give
the bits of one-kernel-at-a-time launches on every replay (each kernel waits for its inputs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ascend_compile import devices
from ascend_compile.kernels.attention import bi_attention
from ascend_compile.kernels.matmul import bi_matmul, bi_matmul_gated, bi_matmul_group
from ascend_compile.kernels.rms_norm import bi_rms_norm, bi_rms_norm_pair

pytestmark = pytest.mark.gpu

BATCH, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, KEYS, WRITTEN = 8, 1024, 16, 8, 128, 3072, 520, 513


def _weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator("cuda").manual_seed(0)
    shapes = {"q": (HEADS * HEAD_DIM, HIDDEN), "k": (KV_HEADS * HEAD_DIM, HIDDEN), "v": (KV_HEADS * HEAD_DIM, HIDDEN),
              "o": (HIDDEN, HEADS * HEAD_DIM), "gate": (INTER, HIDDEN), "up": (INTER, HIDDEN), "down": (HIDDEN, INTER)}
    w = {name: torch.randn(shape, device="cuda", generator=gen).div(shape[1] ** 0.5).to(torch.bfloat16)
         for name, shape in shapes.items()}
    for name in ("ln1", "ln2", "qn", "kn"):
        w[name] = torch.rand(HIDDEN if name.startswith("ln") else HEAD_DIM, device="cuda", generator=gen
                             ).add(0.5).to(torch.bfloat16)
    return w


def _layer(x: torch.Tensor, residual: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
           mask: torch.Tensor, w: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Qwen3's decoder layer as the compiled graph runs it, template kernels only."""
    normed, h = bi_rms_norm(x, residual, w["ln1"], 1e-6)
    q, k, v = bi_matmul_group(normed, [w["q"].t(), w["k"].t(), w["v"].t()])
    q, k = bi_rms_norm_pair([q.view(BATCH, HEADS, HEAD_DIM), k.view(BATCH, KV_HEADS, HEAD_DIM)],
                            [w["qn"], w["kn"]], [1e-6, 1e-6])
    keys, values = cache
    keys[:, :, WRITTEN - 1] = k
    values[:, :, WRITTEN - 1] = v.view(BATCH, KV_HEADS, HEAD_DIM)
    attn = bi_attention(q.view(BATCH, HEADS, 1, HEAD_DIM), keys, values, mask)
    o = bi_matmul(attn.reshape(BATCH, HEADS * HEAD_DIM), w["o"].t())
    normed2, h2 = bi_rms_norm(o, h, w["ln2"], 1e-6)
    down = bi_matmul(bi_matmul_gated(normed2, w["gate"].t(), w["up"].t()), w["down"].t())
    return [h, q, k, attn, o, h2, down]


def _replays(monkeypatch: pytest.MonkeyPatch, overlapped: bool) -> list[list[torch.Tensor]]:
    describe = devices.of_tensor
    monkeypatch.setattr(devices, "of_tensor",
                        lambda t: dataclasses.replace(describe(t), overlapped_launches=overlapped))
    gen = torch.Generator("cuda").manual_seed(1)
    x, residual = (torch.randn(BATCH, HIDDEN, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    cache = tuple(torch.randn(BATCH, KV_HEADS, KEYS, HEAD_DIM, device="cuda", generator=gen).to(torch.bfloat16)
                  for _ in range(2))
    mask = (torch.arange(KEYS, device="cuda") < WRITTEN).expand(BATCH, 1, 1, KEYS).contiguous()
    w = _weights()
    _layer(x, residual, cache, mask, w)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _layer(x, residual, cache, mask, w)
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append([o.clone() for o in outs])
    monkeypatch.setattr(devices, "of_tensor", describe)
    return replays


def test_overlapped_launches_give_the_bits_of_serialized_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    assert devices.of_tensor(torch.empty(1, device="cuda")).overlapped_launches, "launches are not overlapped"
    serialized = _replays(monkeypatch, overlapped=False)
    overlapped = _replays(monkeypatch, overlapped=True)
    for replay in serialized + overlapped:
        for out, expected in zip(replay, serialized[0], strict=True):
            assert torch.equal(out, expected)
    assert torch.isfinite(serialized[0][-1]).all()
