"""``vllm serve`` end to end: the OpenAI-compatible server, driven over HTTP, under concurrent load.

The server is started by a fixture (a port chosen at run time, ready when /health answers, its log
kept and shown on failure) with ``--compilation-config '{"mode": 2, "backend": "ascend_bi"}'`` and
ascend_bi options in ``--additional-config``, and no ``ASCEND_BI`` switch.  The same requests
(mixed prompt lengths, greedy and seeded sampling, with logprobs, the needle twice) go in waves of
1, 4 and 16 concurrent clients: every answer, the needle's first, is bitwise equal in every wave,
and with stock Inductor the same harness finds the needle differing (the negative control).  Bad
input: an unknown ascend_bi option fails the start with the one-line error; a request vLLM rejects
gets its 400 and the server keeps answering with the same bits.  Also 64 requests a wave, a second
start that loads the compiled graph from vLLM's compile cache, and one that must not.

A server's start and waves take minutes on a 2-core machine, so every test here is ``slow`` (CI runs
them); the default run keeps the offline engine's invariance test and its control
(``test_vllm_batch_invariance.py``), on the same engine and options.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import VLLM_CPU_AVX2, VLLM_CPU_AVX2_CONTROL
from tests.vllm.load import Request, Wave, differing, mixed_requests, needle_positions, run_wave, run_waves
from tests.vllm.server import MODEL_NAME, Server, launch, wait_exit, wait_ready
from tests.vllm.tiny_qwen3 import write_tiny_qwen3

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")
pytest.importorskip("vllm.entrypoints.openai.api_server")

ASCEND_BI = {"mode": 2, "backend": "ascend_bi"}
#: Requests per wave: 16 fills the concurrency-16 wave (max_num_seqs); the 64-request test sends 64.
REQUESTS, SLOW_REQUESTS = 16, 64
AOT_LOADED = "Directly load AOT compilation"
AOT_SAVED = "saved AOT compiled function"

#: How often the stock control runs the harness before it gives up finding a difference: a fast stock
#: server sometimes answers a wave's requests one after the other (its steps take milliseconds), and
#: then the needle never shares a decode step with another request.
CONTROL_ATTEMPTS = 5

Waves = tuple[list[Request], dict[int, Wave]]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs, dumps and the vLLM cache root (``work / "cache"``) this module's servers share: compiled
    models are keyed by their config, and the model's architecture is inspected once, not per start."""
    return tmp_path_factory.mktemp("serve")


def _bi_options(work: Path) -> dict[str, object]:
    return {"ascend_bi": {"dump_dir": str(work / "dumps")}}


@pytest.fixture(scope="module")
def bi_server(model: Path, work: Path) -> Iterator[Server]:
    server = launch(model, work / "bi_server.log", cache_root=work / "cache", compilation=ASCEND_BI,
                    additional=_bi_options(work))
    try:
        yield wait_ready(server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bi_waves(bi_server: Server) -> Waves:
    requests = mixed_requests(REQUESTS)
    return requests, run_waves(bi_server.url, MODEL_NAME, requests)


@pytest.fixture(scope="module")
def stock_server(model: Path, work: Path) -> Iterator[Server]:
    """vllm-cpu as it comes: mode 3 turned into mode 2 with Inductor."""
    server = launch(model, work / "stock_server.log", cache_root=work / "cache")
    try:
        yield wait_ready(server)
    finally:
        server.stop()


def _assert_invariant(requests: list[Request], waves: dict[int, Wave]) -> None:
    needles = needle_positions(requests)
    assert not any(differing(waves, needles).values()), f"the needle differs between waves: {differing(waves, needles)}"
    assert not any(differing(waves).values()), f"requests differ between waves: {differing(waves)}"
    running = {c: wave.most_running for c, wave in waves.items()}
    assert running[4] >= 2 and running[16] >= 8, f"the waves did not run requests together: {running}"


def _stock_needle_differs(server: Server, count: int) -> None:
    requests = mixed_requests(count)
    for attempt in range(1, CONTROL_ATTEMPTS + 1):
        found = differing(run_waves(server.url, MODEL_NAME, requests), needle_positions(requests))
        if any(found.values()):
            print(f"stock differs at attempt {attempt}: {found}")
            return
    pytest.fail(f"stock vllm-cpu gave the needle the same bits in every wave, {CONTROL_ATTEMPTS} times")


def test_served_answers_bitwise_equal_at_concurrency_1_4_16(bi_waves: Waves) -> None:
    _assert_invariant(*bi_waves)


@pytest.mark.skipif(VLLM_CPU_AVX2, reason=VLLM_CPU_AVX2_CONTROL)
def test_stock_inductor_server_needle_differs(stock_server: Server) -> None:
    """The negative control: the same harness against stock vllm-cpu finds the needle differing."""
    _stock_needle_differs(stock_server, REQUESTS)


def test_served_graph_is_fully_rewritten(bi_server: Server, work: Path) -> None:
    """The options came through --additional-config (dumps), and nothing order-sensitive was left stock."""
    summaries = [json.loads(p.read_text()) for p in (work / "dumps").glob("*/summary.json")]
    assert summaries, "the server compiled no graph with ascend_bi"
    assert all(s["rewrites"]["rewrite_vllm_ops"] > 0 and s["batch_invariant"] for s in summaries), summaries


def test_rejected_requests_get_400_and_answers_keep_their_bits(bi_server: Server, bi_waves: Waves) -> None:
    requests, waves = bi_waves
    client = openai.OpenAI(base_url=bi_server.url, api_key="none", max_retries=0, timeout=120)
    bad = {"prompt longer than max_model_len": {"prompt": " ".join(["w5"] * 200)},
           "negative temperature": {"prompt": "w1 w2", "temperature": -1.0},
           "top_p above 1": {"prompt": "w1 w2", "top_p": 1.5},
           "negative max_tokens": {"prompt": "w1 w2", "max_tokens": -3}}
    for case, fields in bad.items():
        with pytest.raises(openai.BadRequestError) as error:
            client.completions.create(model=MODEL_NAME, **({"max_tokens": 2} | fields))
        assert error.value.status_code == 400, case
    needles = needle_positions(requests)
    again = run_wave(bi_server.url, MODEL_NAME, [requests[i] for i in needles], concurrency=len(needles))
    assert again.answers == [waves[1].answers[i] for i in needles]


def test_unknown_option_fails_the_start_with_one_line(model: Path, work: Path) -> None:
    server = launch(model, work / "bad_option.log", cache_root=work / "cache", compilation=ASCEND_BI,
                    additional={"ascend_bi": {"no_such_option": True}})
    assert wait_exit(server) != 0
    assert "ValueError: ascend_bi: unknown option 'no_such_option'; accepted options:" in server.log_text(), \
        server.log_tail()


def test_64_requests_bitwise_equal_at_concurrency_1_4_16(bi_server: Server) -> None:
    requests = mixed_requests(SLOW_REQUESTS)
    _assert_invariant(requests, run_waves(bi_server.url, MODEL_NAME, requests))


@pytest.mark.skipif(VLLM_CPU_AVX2, reason=VLLM_CPU_AVX2_CONTROL)
def test_64_requests_stock_inductor_needle_differs(stock_server: Server) -> None:
    _stock_needle_differs(stock_server, SLOW_REQUESTS)


def _second_start(model: Path, work: Path, name: str, env: dict[str, str] | None = None) -> Server:
    return launch(model, work / f"{name}.log", cache_root=work / "cache", compilation=ASCEND_BI,
                  additional=_bi_options(work), env=env)


def test_second_start_loads_the_compiled_graph(model: Path, work: Path, bi_server: Server, bi_waves: Waves) -> None:
    """Same model and options: vLLM loads the saved artifact instead of tracing and compiling, and the
    loaded graph gives the first server's bits."""
    requests, waves = bi_waves
    server = wait_ready(_second_start(model, work, "second_start"))
    try:
        log = server.log_text()
        assert AOT_SAVED in bi_server.log_text() and AOT_LOADED in log and AOT_SAVED not in log, server.log_tail()
        assert run_wave(server.url, MODEL_NAME, requests, concurrency=16).answers == waves[1].answers
        print(f"ready after {bi_server.ready_after_s:.1f} s (compiled) and {server.ready_after_s:.1f} s (loaded)")
    finally:
        server.stop()


def test_changed_ascend_bi_setting_compiles_again(model: Path, work: Path, bi_server: Server) -> None:
    """An ``ASCEND_BI_*`` variable vLLM's own key does not see still changes the key: no stale graph loads."""
    server = wait_ready(_second_start(model, work, "changed_setting", env={"ASCEND_BI_STRICT": "1"}))
    try:
        log = server.log_text()
        assert AOT_SAVED in log and AOT_LOADED not in log, server.log_tail()
    finally:
        server.stop()
