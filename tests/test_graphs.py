"""BucketGraphRunner's device-independent parts on the CPU: bucket planning, padding, slicing,
copy-back of written inputs, output ownership and the padding safety rule.

The CPU has no device graphs, so these tests give the runner a graph API whose "replay" runs the
captured call again on the same static buffers and writes into the same output tensors -- what a
device graph replay does.  Real capture is tested on a GPU (tests/e2e/test_graphs_gpu.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import ascend_compile
import ascend_compile.graphs as graphs
from ascend_compile import devices
from ascend_compile.backend import ascend_bi
from ascend_compile.graphs import BucketGraphRunner, bucket_for, capture_sizes
from ascend_compile.settings import Settings


class _RerunGraph:
    recording: _RerunGraph | None = None

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Any]] = []

    def replay(self) -> None:
        for fn, args, outputs in self.calls:
            for out, new in zip(outputs, fn(*args), strict=True):
                out.copy_(new)


class _RerunApi:
    """The GraphApi calls the runner makes, with replay = run the captured call again."""

    kind = "cpu"

    def new_graph(self) -> _RerunGraph:
        return _RerunGraph()

    @contextlib.contextmanager
    def capture(self, graph: _RerunGraph, pool: object, stream: object) -> Iterator[None]:
        _RerunGraph.recording = graph
        try:
            yield
        finally:
            _RerunGraph.recording = None

    def pool(self) -> None:
        return None

    def side_stream(self) -> None:
        return None

    def on(self, stream: object) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def join(self, stream: object) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def memory_allocated(self) -> int:
        return 0


def _recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        outputs = fn(*args)
        if _RerunGraph.recording is not None:
            _RerunGraph.recording.calls.append((fn, args, outputs))
        return outputs

    return call


@pytest.fixture
def runners(monkeypatch: pytest.MonkeyPatch) -> list[BucketGraphRunner]:
    """Compile with ascend_bi (graphs on, CPU replay double); collects the runners it builds."""
    monkeypatch.setattr(graphs, "graph_api", lambda kind: _RerunApi())
    built: list[BucketGraphRunner] = []
    real = BucketGraphRunner

    def runner(fn: Callable[..., Any], *rest: Any) -> BucketGraphRunner:
        built.append(real(_recorded(fn), *rest))
        return built[-1]

    monkeypatch.setattr(graphs, "BucketGraphRunner", runner)
    return built


def _compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    torch._dynamo.reset()
    options = {"executor": "fx", "graphs": "on", "capture_sizes": [1, 2, 4, 8], **options}
    return torch.compile(fn, dynamic=True, backend=lambda gm, inputs: ascend_bi(gm, inputs, options=options))


class _Step(torch.nn.Module):
    """A decode-like step: a matmul, a softmax, and a write into a batch-dimensioned cache."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(32, 48, generator=torch.Generator().manual_seed(0)),
                                         requires_grad=False)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        cache[:, 0].copy_(y)
        return torch.softmax(y, -1)


class _ScatterStep(_Step):
    """Writes each row into a flat cache (no batch dim) at the row's slot, like a paged KV cache."""

    def forward(self, x: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        cache.index_copy_(0, slots, y)
        return y


class _PaddableScatterStep(_Step):
    """As above, but a slot of -1 (the pad value it is given) writes nowhere."""

    def forward(self, x: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        keep = slots >= 0
        cache.index_copy_(0, torch.where(keep, slots, cache.shape[0] - 1), torch.where(keep[:, None], y, 0.0))
        return y


W = _Step().weight.detach()


def test_default_capture_sizes_and_buckets() -> None:
    assert capture_sizes(Settings()) == (1, 2, 4, 8, 16, 32, 48, 64)
    assert capture_sizes(Settings(max_capture_size=20)) == (1, 2, 4, 8, 16)
    assert capture_sizes(Settings.from_options({"capture_sizes": [8, 3]}, env={})) == (3, 8)
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, None]
    assert bucket_for(5, (1, 2, 4, 8), exact_only=True) is None and bucket_for(4, (1, 4), exact_only=True) == 4


@pytest.mark.parametrize("bad", [[], [0], [2, -1], [1.5], "a,b", [True]])
def test_bad_capture_sizes_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="capture_sizes.*accepted values: positive integers"):
        Settings.from_options({"capture_sizes": bad}, env={})


def test_padded_batches_give_every_row_its_alone_bits(runners: list[BucketGraphRunner]) -> None:
    compiled = _compile(_Step())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 32, generator=gen)
    alone = [compiled(x[i:i + 1], torch.zeros(1, 3, 48))[0] for i in range(8)]
    for batch in (2, 3, 5, 8):  # buckets 2, 4, 8, 8: 3 and 5 run padded
        cache = torch.zeros(batch, 3, 48)
        out = compiled(x[:batch], cache)
        assert out.shape == (batch, 48)
        assert all(torch.equal(out[i], alone[i]) for i in range(batch))
        torch.testing.assert_close(cache[:, 0], x[:batch] @ W)  # written rows copied back
        assert torch.equal(cache[:, 1:], torch.zeros(batch, 2, 48))
    dynamic = [r for r in runners if r.signature.batch_symbol is not None]
    assert len(dynamic) == 1 and sorted(b for b, _ in dynamic[0].graphs) == [2, 4, 8]


class _ReadsCaches(_Step):
    """Reads four caches of its own (as a decoder reads a cache per layer grown by ``cat``) and writes none."""

    def forward(self, x: torch.Tensor, *caches: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x @ self.weight + sum(c.sum(1) for c in caches), -1)


@pytest.mark.slow  # Inductor compiles five inputs' graphs per bucket: over a minute on 2 cores
def test_a_steps_inputs_are_staged_in_one_copy_per_dtype(runners: list[BucketGraphRunner],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Five small float inputs go into the graph's buffers in one foreach copy, and a padded batch's rows
    keep their bits; inputs above ``STAGED_TOGETHER_BYTES`` are copied one by one."""
    compiled = _compile(_ReadsCaches())
    gen = torch.Generator().manual_seed(2)
    x, caches = torch.randn(3, 32, generator=gen), [torch.randn(3, 5, 48, generator=gen) for _ in range(4)]
    alone = compiled(x[:1], *(c[:1] for c in caches))
    compiled(x, *caches)  # captures the buckets
    copies = []
    foreach_copy = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: copies.append(len(dst)) or foreach_copy(dst, src))
    out = compiled(x, *caches)  # bucket 4, one pad row
    assert copies == [5], copies
    assert torch.equal(out[0], alone[0])
    want = torch.softmax(x @ W + sum(c.sum(1) for c in caches), -1)
    torch.testing.assert_close(out, want)
    monkeypatch.setattr(graphs, "STAGED_TOGETHER_BYTES", x[:2].numel() * x.element_size())
    copies.clear()
    out = compiled(x[:2], *(c[:2] for c in caches))  # bucket 2: the caches are larger than the bound
    assert copies == [], "a copy each, and x alone"
    assert torch.equal(out[0], alone[0])
    torch.testing.assert_close(out, want[:2])


def test_stock_graph_in_the_same_runner_changes_bits_when_padded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: the runner around the stock graph (aten ops as traced) -- padded rows
    are not what the row gets alone."""
    monkeypatch.setattr(graphs, "graph_api", lambda kind: _RerunApi())

    def stock(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        static = frozenset(i for i, v in enumerate(inputs) if isinstance(v, torch.nn.Parameter))
        settings = Settings(graphs="on", capture_sizes=(1, 2, 4, 8))
        return graphs.graph_wrapper(gm, inputs, settings, devices.detect(inputs), static)(_recorded(gm.forward))

    torch._dynamo.reset()
    compiled = torch.compile(_Step(), dynamic=True, backend=stock)
    x = torch.randn(8, 32)
    alone = [compiled(x[i:i + 1], torch.zeros(1, 3, 48))[0] for i in range(8)]
    out = compiled(x[:5], torch.zeros(5, 3, 48))
    assert not all(torch.equal(out[i], alone[i]) for i in range(5))


def test_outputs_are_not_overwritten_by_the_next_replay(runners: list[BucketGraphRunner]) -> None:
    compiled = _compile(_Step())
    x = torch.randn(6, 32)
    first = compiled(x[:3], torch.zeros(3, 3, 48))
    kept = first.clone()
    compiled(x[3:], torch.zeros(3, 3, 48))
    assert torch.equal(first, kept)


def test_views_when_asked(runners: list[BucketGraphRunner]) -> None:
    compiled = _compile(_Step(), clone_outputs=False)
    x = torch.randn(6, 32)
    first = compiled(x[:3], torch.zeros(3, 3, 48))
    kept = first.clone()
    compiled(x[3:], torch.zeros(3, 3, 48))
    assert not torch.equal(first, kept), "a view into the static output: the next replay overwrites it"


def test_writes_through_batch_indices_capture_exact_sizes_only(runners: list[BucketGraphRunner]) -> None:
    ascend_compile.clear_reports()
    compiled = _compile(_ScatterStep())
    cache = torch.zeros(16, 48)
    x = torch.randn(5, 32)
    for batch in (2, 3, 5, 4):
        compiled(x[:batch], torch.arange(batch) + 8, cache)
        torch.testing.assert_close(cache[8:8 + batch], x[:batch] @ W)
    assert torch.equal(cache[:8], torch.zeros(8, 48)), "no padded row wrote into slot 0"
    (runner,) = [r for r in runners if r.signature.batch_symbol is not None]
    assert "slots" in runner.signature.exact_only
    assert sorted(b for b, _ in runner.graphs) == [2, 4], "3 and 5 are not capture sizes: uncaptured"
    reported = [r.graphs for r in ascend_compile.reports()]  # what the dump's summary.json says
    assert any(g.startswith("device graphs per bucket [1, 2, 4, 8]") and "exact batch sizes only" in g
               and "cache written in place: copied into the graph's buffer and back on every call" in g
               for g in reported), reported


def test_pad_values_allow_padding_writes(runners: list[BucketGraphRunner]) -> None:
    compiled = _compile(_PaddableScatterStep(), pad_values={"slots": -1})
    cache = torch.zeros(17, 48)
    x = torch.randn(3, 32)
    compiled(x[:2], torch.tensor([3, 4]), cache)
    compiled(x, torch.tensor([5, 6, 7]), cache)  # bucket 4: one padding row, slot -1
    runner = [r for r in runners if r.signature.batch_symbol is not None][-1]
    assert runner.signature.exact_only is None and sorted(b for b, _ in runner.graphs) == [2, 4, 8]
    torch.testing.assert_close(cache[5:8], x @ W)
    assert torch.equal(cache[:3], torch.zeros(3, 48))


def test_unknown_pad_value_names_are_errors(runners: list[BucketGraphRunner]) -> None:
    compiled = _compile(_Step(), pad_values={"not_an_input": 0})
    with pytest.raises(Exception, match="pad_values names inputs this graph does not have"):
        compiled(torch.randn(3, 32), torch.zeros(3, 3, 48))


def test_graphs_stay_off_on_the_cpu_by_default() -> None:
    built: list[object] = []
    torch._dynamo.reset()

    def backend(gm: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        built.append(ascend_bi(gm, inputs, options={"executor": "fx"}))
        return built[-1]

    ascend_compile.clear_reports()
    torch.compile(_Step(), dynamic=True, backend=backend)(torch.randn(3, 32), torch.zeros(3, 3, 48))
    assert built and not any(isinstance(fn, BucketGraphRunner) for fn in built)
    assert [r.graphs for r in ascend_compile.reports()] == ["no device graphs on cpu: the graph runs uncaptured"]


@pytest.mark.slow
def test_transformers_prefill_and_decode_run_padded_with_the_same_bits(runners: list[BucketGraphRunner]) -> None:
    """A real model through the runner: Qwen3 prefill (returns its KV cache) and decode steps
    (read it; the new token is a strided column slice) at batch 5, padded to bucket 8.  (Slow: the
    padded buckets' bits are checked on small graphs above; this is the same on a real model.)"""
    from tests.e2e.test_transformers_models import _same_bits_in_every_batch
    from tests.e2e.tiny_transformers import tiny_model

    torch._dynamo.reset()
    result = _same_bits_in_every_batch(tiny_model("qwen3"), batch_sizes=(2, 5), backend="ascend_bi",
                                       options={"executor": "inductor", "graphs": "on", "capture_sizes": [2, 8]})
    assert all(result.values()), result
    assert any(8 in {b for b, _ in r.graphs} for r in runners), "batch 5 ran padded in bucket 8"


def _logprobs(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Indices gathered from the batch: Dynamo gives ``targets`` its own batch symbol and guards
    that it is at most the logits' batch."""
    return torch.log_softmax(x @ W, -1).gather(-1, targets[:, None])[:, 0]


def test_buckets_that_break_a_guard_are_not_captured(runners: list[BucketGraphRunner]) -> None:
    """Capturing the buckets below a batch of 8 with its 8 target rows would gather past the
    padded logits; those buckets are refused for that shape, and every row keeps its alone bits."""
    compiled = _compile(_logprobs)
    gen = torch.Generator().manual_seed(2)
    x, targets = torch.randn(8, 32, generator=gen), torch.randint(0, 48, (8,), generator=gen)
    alone = [compiled(x[i:i + 1], targets[i:i + 1])[0] for i in range(8)]
    for batch in (8, 3):
        out = compiled(x[:batch], targets[:batch])
        assert all(torch.equal(out[i], alone[i]) for i in range(batch))
    assert {bucket for r in runners for bucket, _ in r._refused} == {2, 4}  # below the 8 gathered rows


def _out_of_memory_at(batch: int, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, raising out of memory when it runs on a batch of ``batch`` rows."""
    def call(*args: Any) -> Any:
        if any(isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch for a in args):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {batch}")
        return fn(*args)

    return call


@pytest.mark.parametrize("setting", ["auto", "on"])
def test_a_bucket_that_does_not_fit_runs_uncaptured(monkeypatch: pytest.MonkeyPatch, runners: list[BucketGraphRunner],
                                                    caplog: pytest.LogCaptureFixture, setting: str) -> None:
    """Capture (largest bucket first) runs out of memory at bucket 8: buckets 2 and 4 are still
    captured and a batch of 5 runs uncaptured, with a warning naming the bucket and the options
    that bound it, every row with its alone bits; under ``graphs="on"`` it is an error."""
    collect = graphs.BucketGraphRunner
    monkeypatch.setattr(graphs, "BucketGraphRunner", lambda fn, *rest: collect(_out_of_memory_at(8, fn), *rest))
    compiled = _compile(_Step(), graphs=setting)
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    alone = [compiled(x[i:i + 1], torch.zeros(1, 3, 48))[0] for i in range(5)]
    if setting == "on":
        with pytest.raises(RuntimeError, match="bucket 8 does not fit in device memory.*max_capture_size"):
            compiled(x[:3], torch.zeros(3, 3, 48))
        return
    with caplog.at_level("WARNING", logger="ascend_compile.graphs"):
        for batch in (3, 5):
            out = compiled(x[:batch], torch.zeros(batch, 3, 48))
            assert all(torch.equal(out[i], alone[i]) for i in range(batch))
    assert caplog.text.count("bucket 8 does not fit in device memory") == 1 and "max_capture_size" in caplog.text
    (dynamic,) = [r for r in runners if r.signature.batch_symbol is not None]
    assert sorted(b for b, _ in dynamic.graphs) == [2, 4] and {b for b, _ in dynamic._refused} == {8}
