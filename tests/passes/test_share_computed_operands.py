"""share_computed_operands: the rotary angles and the mask a decode step computes once and every
layer's attention reads are computed once by Inductor, one buffer for all layers, with the same
bits; without the pass, Inductor copies them per layer (the negative control)."""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import ascend_compile
from tests.e2e.tiny_transformers import VOCAB, tiny_model

transformers = pytest.importorskip("transformers")
PASS = "share_computed_operands"
LAYERS, PROMPT = 3, 4
#: Where ``ascend_bi::rope_attention``'s cos, sin and mask operands sit in its argument list.
_OPERANDS = {"cos": 6, "sin": 7, "mask": 11}
#: The layers' rope-attention calls in Inductor's code.
_CALL = r"ascend_bi\.rope_attention(?:_append)?\.default\("


def _arguments(call: str) -> list[str]:
    """The top-level arguments of a call's argument text (up to its closing parenthesis)."""
    args, depth, current = [], 0, ""
    for char in call:
        if char in "([":
            depth += 1
        elif char in ")]":
            if depth == 0:
                break
            depth -= 1
        if char == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += char
    return [*args, current.strip()]


def _buffers_read(code: str) -> dict[str, set[str]]:
    """Per operand, the buffers the layers' rope-attention calls read it from."""
    calls = [_arguments(code[m.end():]) for m in re.finditer(_CALL, code)]
    assert len(calls) == LAYERS
    return {name: {re.match(r"(?:reinterpret_tensor\()?(\w+)", call[i]).group(1) for call in calls}
            for name, i in _OPERANDS.items()}


def _decode_step(**options: object) -> tuple[torch.Tensor, str, ascend_compile.CompileReport]:
    """Sequence 0's logits of one decode step after a prompt, the step graph's code and report."""
    torch._dynamo.reset()
    model = tiny_model("qwen3", attn_implementation="sdpa", dtype=torch.bfloat16, layers=LAYERS)

    def step(ids: torch.Tensor, cache: object, position: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, past_key_values=cache, cache_position=position, use_cache=True).logits[:, -1]

    compiled = torch.compile(step, backend="ascend_bi", options={"executor": "inductor", **options})
    cache = transformers.StaticCache(config=model.config, max_cache_len=PROMPT + 2)
    ids = torch.randint(0, VOCAB, (2, PROMPT + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        compiled(ids[:, :PROMPT], cache, torch.arange(PROMPT))
        ascend_compile.clear_reports()
        logits, codes = run_and_get_code(compiled, ids[:, PROMPT:], cache, torch.tensor([PROMPT]))
    return logits[0], "\n".join(codes), ascend_compile.reports()[-1]


@pytest.mark.slow  # two Inductor compiles of a decode step: over half a minute on 2 cores
def test_every_layer_reads_one_buffer_of_the_angles_and_the_mask() -> None:
    shared, code, report = _decode_step()
    alone, unshared_code, _ = _decode_step(disable_passes=[PASS])
    assert report.rewrites[PASS] >= len(_OPERANDS)
    assert all(len(buffers) == 1 for buffers in _buffers_read(code).values()), _buffers_read(code)
    assert len(_buffers_read(unshared_code)["cos"]) == LAYERS  # a copy per layer without the pass
    assert torch.equal(shared, alone)


def test_fx_executor_is_left_alone() -> None:
    assert _decode_step(executor="fx")[2].rewrites[PASS] == 0
