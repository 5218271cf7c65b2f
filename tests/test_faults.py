"""Faults, each with one clear outcome: a static or paged cache written past its end, a bucket that runs out of memory
mid-capture, a batch above the largest bucket, non-contiguous and channels-last inputs, inputs on the wrong device
or of the wrong dtype, and a recompile after ``torch._dynamo.reset()``.

Device graphs run in ``BucketGraphRunner`` with ``tests/test_graphs.py``'s replaying stand-in (the CPU has none).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import ascend_compile.graphs as graphs
import ascend_compile.ops  # noqa: F401  (registers the ops)
from ascend_compile.graphs import BucketGraphRunner
from ascend_compile.ops import cache_bounds
from ascend_compile.tools import zoo
from ascend_compile.tools.fuzz import same_bits
from ascend_compile.tools.fuzz_models import CPU_SIZES, Row, subject
from tests.test_graphs import _RerunGraph, runners  # noqa: F401  (the fixture: the runner over a replaying stand-in)

bi = torch.ops.ascend_bi
#: Batch, positions, query heads, key/value heads, head dim, cache slots.
B, L, H, KV, D, S = 2, 2, 4, 2, 32, 8
#: What the memory around a cache holds; a write out of bounds changes it.
GUARD_VALUE = -7.0


def _guarded(shape: tuple[int, ...], dtype: torch.dtype, guard: int = S * D) -> tuple[torch.Tensor, torch.Tensor]:
    """A zeroed tensor of ``shape`` inside a buffer whose ``guard`` elements on either side hold ``GUARD_VALUE``:
    (the tensor, the buffer)."""
    n = torch.Size(shape).numel()
    buffer = torch.full((n + 2 * guard,), GUARD_VALUE, dtype=dtype)
    view = buffer[guard:guard + n].view(shape)
    view.zero_()
    return view, buffer


def _guards_intact(buffer: torch.Tensor, guard: int = S * D) -> bool:
    return bool((buffer[:guard] == GUARD_VALUE).all() and (buffer[-guard:] == GUARD_VALUE).all())


def _cache_op(name: str, length: int, dtype: torch.dtype = torch.float32) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The op ``name`` as ``op(k_cache, v_cache, slots)`` and its other inputs, ``length`` positions."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(dtype)

    q, k, v = rand(B, length, H, D), rand(B, length, KV, D), rand(B, length, KV, D)
    cos, sin = rand(1, 1, length, D), rand(1, 1, length, D)
    norms = ([rand(D), rand(D)], [1e-6, 1e-6], [None, None])
    ops: dict[str, Callable[..., Any]] = {
        "rms_norm_rope_cache": lambda kc, vc, i: bi.rms_norm_rope_cache(q, k, v, *norms, cos, sin, kc, vc, i),
        "rms_norm_rope_append": lambda kc, vc, i: bi.rms_norm_rope_append(q, k, v, *norms, cos, sin, kc, vc, i),
        "rope_cache": lambda kc, vc, i: bi.rope_cache(q, k, v, cos, sin, kc, vc, i),
        "rope_append": lambda kc, vc, i: bi.rope_append(q, k, v, cos, sin, kc, vc, i),
        "rope_attention": lambda kc, vc, i: bi.rope_attention(q, k, v, *norms, cos, sin, kc, vc, i, None, False,
                                                              None, False),
        "rope_attention_append": lambda kc, vc, i: bi.rope_attention_append(q, k, v, [], [], [], cos, sin, kc, vc, i,
                                                                            None, False, None, False),
    }
    return ops[name], (q, k, v)


CACHE_OPS = ["rms_norm_rope_cache", "rms_norm_rope_append", "rope_cache", "rope_append", "rope_attention",
             "rope_attention_append"]


def _slots(name: str, first: int, length: int) -> torch.Tensor:
    """The op's slot argument: the write position (append) or one slot per position."""
    return torch.tensor([first]) if name.endswith("append") else torch.arange(first, first + length)


@pytest.mark.parametrize("name", CACHE_OPS)
def test_cache_writes_past_the_end_raise_and_write_nothing(name: str) -> None:
    """Every cache-writing op: the last slots are written (and nothing around the cache); one slot further, or a
    negative slot, is an IndexError naming the cache and its length, and neither the cache, the memory around it
    nor the write position changes."""
    length = 1 if name.startswith("rope_attention") else L
    op, _ = _cache_op(name, length)
    (k_cache, k_buffer), (v_cache, v_buffer) = (_guarded((B, KV, S, D), torch.float32) for _ in range(2))
    op(k_cache, v_cache, _slots(name, S - length, length))
    assert k_cache[:, :, S - length:].abs().sum() > 0 and v_cache[:, :, S - length:].abs().sum() > 0
    assert _guards_intact(k_buffer) and _guards_intact(v_buffer)
    before = k_buffer.clone(), v_buffer.clone()
    past = [_slots(name, S - length + 1, length)] + ([] if name.endswith("append") else [torch.tensor([-1] * length)])
    for slots in past:
        kept = slots.clone()
        with pytest.raises(IndexError, match=rf"ascend_bi::{name}: .*k_cache and v_cache \({B}, {KV}, {S}, {D}\) "
                                             rf"hold {S} slots"):
            op(k_cache, v_cache, slots)
        assert torch.equal(slots, kept), "the write position did not advance"
    assert torch.equal(k_buffer, before[0]) and torch.equal(v_buffer, before[1])


@pytest.mark.parametrize("slot", [4 * 4, -1])
def test_paged_writes_outside_the_blocks_raise_and_write_nothing(slot: int) -> None:
    """vLLM's paged cache (4 blocks of 4 slots): slot 15 is written, 16 or -1 is an IndexError naming the
    blocks (as eager ``index_copy_`` through the merged view raises), and nothing around the cache changes."""
    q, k, v = _cache_op("rope_cache", 1)[1]
    cos, sin = torch.ones(B, 1, 1, D), torch.zeros(B, 1, 1, D)
    (k_cache, k_buffer), (v_cache, v_buffer) = (_guarded((4, 4, KV, D), torch.float32) for _ in range(2))
    bi.rope_paged(q, k, v, cos, sin, k_cache, v_cache, torch.tensor([15, 2]))
    assert torch.equal(k_cache[3, 3], k[0, 0]) and torch.equal(v_cache[0, 2], v[1, 0])
    before = k_cache.clone(), v_cache.clone()
    with pytest.raises(IndexError, match=r"ascend_bi::rope_paged: 2 position\(s\) .*\(4, 4, 2, 32\) hold 16 slots "
                                         r"\(blocks x block size\)"):
        bi.rope_paged(q, k, v, cos, sin, k_cache, v_cache, torch.tensor([slot, 2]))
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])
    assert _guards_intact(k_buffer) and _guards_intact(v_buffer)


def test_the_kernels_never_write_past_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the slots cannot be read on the host (GPUs, NPUs, a captured graph) the kernels mask their stores:
    without ``check_slots`` a write that runs one slot past the end raises nothing, fills the slots inside the
    cache and leaves the guard regions around it untouched (before the masks, it wrote into them)."""
    monkeypatch.setattr(cache_bounds, "check_slots", lambda *args, **kwargs: None)
    op, _ = _cache_op("rope_append", L)
    (k_cache, k_buffer), (v_cache, v_buffer) = (_guarded((B, KV, S, D), torch.float32) for _ in range(2))
    op(k_cache, v_cache, torch.tensor([S - L + 1]))
    assert _guards_intact(k_buffer) and _guards_intact(v_buffer)
    assert k_cache[:, :, S - L + 1:].abs().sum() > 0 and v_cache[:, :, S - L + 1:].abs().sum() > 0


@pytest.mark.parametrize(("cache_dtype", "match"), [(torch.bfloat16, "must have the dtypes of the key"),
                                                    (None, "must be on one device")])
def test_a_cache_of_another_dtype_or_device_is_an_error(cache_dtype: torch.dtype | None, match: str) -> None:
    """A cache-writing op given caches of another dtype (eager's index_copy_ raises; the kernel would convert
    silently) or on another device (the kernel would write through a foreign pointer) raises, naming both."""
    op, (q, k, v) = _cache_op("rope_append", L)
    if cache_dtype is not None:
        k_cache, v_cache = (torch.zeros(B, KV, S, D, dtype=cache_dtype) for _ in range(2))
        with pytest.raises(ValueError, match=match):
            op(k_cache, v_cache, torch.tensor([0]))
        assert not k_cache.any(), "nothing written"
    else:  # one device here: a meta cache stands for another device (the op itself would dispatch to its fake)
        k_cache, v_cache = (torch.zeros(B, KV, S, D, device="meta") for _ in range(2))
        with pytest.raises(ValueError, match=match + r".*k_cache on meta"):
            cache_bounds.check_cache("rope_append", q, k, v, k_cache, v_cache, torch.tensor([0]), append=True)


# --- a model's static cache -------------------------------------------------------------------------------------

#: One layer: its cache writes run in the fused rotation-and-attention launch at slots (transformers' first layer,
#: whose position the mask reads; later layers append, which ``test_cache_writes_past_the_end...`` covers).
STATIC_CFG = CPU_SIZES.cfg


def _static_cache_step(**options: Any) -> tuple[zoo.ZooModel, Callable[..., torch.Tensor]]:
    model = zoo.build("qwen3", cfg=STATIC_CFG, context=CPU_SIZES.context, device="cpu", dtype=torch.bfloat16)
    compiled = torch.compile(model.step, dynamic=True, backend="ascend_bi", options={"executor": "inductor", **options})
    return model, compiled


def _guard_caches(cache: Any) -> list[torch.Tensor]:
    """Move every layer's keys and values into guarded buffers; returns the buffers."""
    buffers = []
    for layer in cache.layers:
        for attr in ("keys", "values"):
            tensor = getattr(layer, attr)
            view, buffer = _guarded(tuple(tensor.shape), tensor.dtype)
            view.copy_(tensor)
            setattr(layer, attr, view)
            buffers.append(buffer)
    return buffers


def _at(cache: Any, position: int) -> torch.Tensor:
    for layer in cache.layers:
        layer.cumulative_length.fill_(position)
    return torch.tensor([position])


def _static_step_bits(model: zoo.ZooModel, compiled: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Three sequences' logits of a step after the context, then the same step past the cache's end: an IndexError."""
    ids, cache, _ = model.inputs(3)
    with torch.no_grad():
        out = compiled(ids, cache, _at(cache, CPU_SIZES.context))
        with pytest.raises(IndexError, match=f"hold {STATIC_CFG.max_context} slots"):
            compiled(ids, cache, _at(cache, STATIC_CFG.max_context))
    return out


@pytest.mark.slow  # a compiled model end to end; the kernels' own check is test_cache_writes_past_the_end_...
def test_a_full_static_cache_is_an_index_error_and_nothing_is_written() -> None:
    """transformers' Qwen3 in bf16 under Inductor, whose cache writes run in the fused rotation-and-attention
    launches: a step at the cache's last slot writes it; a step past it raises as eager does (naming the cache and
    its length) and writes nothing into the caches or around them (without the check it wrote past the cache, and
    once crashed the process).  Then ``torch._dynamo.reset()`` and a recompile: the same bits as before."""
    model, compiled = _static_cache_step()
    ids, cache, _ = model.inputs(2)
    buffers = _guard_caches(cache)
    with torch.no_grad():
        compiled(ids, cache, _at(cache, STATIC_CFG.max_context - 1))
    assert all(_guards_intact(b) for b in buffers)
    assert all(layer.keys[:, :, -1].abs().sum() > 0 for layer in cache.layers), "the last slot was written"
    before = [b.clone() for b in buffers]
    shape = (2, STATIC_CFG.kv_heads, STATIC_CFG.max_context, STATIC_CFG.head_dim)
    with torch.no_grad(), pytest.raises(IndexError, match=rf"k_cache and v_cache \({', '.join(map(str, shape))}\) "
                                                          rf"hold {STATIC_CFG.max_context} slots"):
        compiled(ids, cache, _at(cache, STATIC_CFG.max_context))
    assert all(torch.equal(b, kept) for b, kept in zip(buffers, before, strict=True))
    with torch.no_grad(), pytest.raises(IndexError, match="out of bounds"):
        model.step(ids, cache, _at(cache, STATIC_CFG.max_context))  # eager: the same fault, the same error type

    first = _static_step_bits(model, compiled)
    torch._dynamo.reset()
    assert same_bits(_static_step_bits(model, _static_cache_step()[1]), first)


# --- device graphs per bucket -----------------------------------------------------------------------------------


def _out_of_memory_in_capture_at(bucket: int, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, running out of memory while it is captured (its warm-up done) at ``bucket`` rows."""
    def call(*args: Any) -> Any:
        if _RerunGraph.recording is not None and any(isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == bucket
                                                     for a in args):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate while capturing a batch of {bucket}")
        return fn(*args)

    return call


@pytest.fixture
def plain() -> Iterator[Callable[..., tuple[Any, ...]]]:
    """The hand-written decoder's inputs for rows of sequences (``inputs(n)``: sequences 0..n-1)."""
    subj = subject("plain", "decode", torch.float32, "cpu", CPU_SIZES)
    yield lambda n, layout=lambda t: t: _laid_out(subj.inputs([Row("sequence", i) for i in range(n)], 1), layout)
    torch._dynamo.reset()


def _laid_out(inputs: tuple[Any, ...], layout: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Any, ...]:
    tokens, position, keys, values = inputs
    return tokens, position, [layout(k) for k in keys], [layout(v) for v in values]


def _plain_step(**options: Any) -> Callable[..., torch.Tensor]:
    torch._dynamo.reset()
    model = subject("plain", "decode", torch.float32, "cpu", CPU_SIZES)
    options = {"executor": "fx", "graphs": "auto", "capture_sizes": [1, 2, 4, 8], **options}
    return torch.compile(model.step, dynamic=True, backend="ascend_bi", options=options)


def _dynamic(runners: list[BucketGraphRunner]) -> BucketGraphRunner:  # noqa: F811
    (runner,) = [r for r in runners if r.signature.batch_symbol is not None]
    return runner


def test_a_recompile_with_another_plan_changes_the_bits(monkeypatch: pytest.MonkeyPatch,
                                                        plain: Callable[..., tuple[Any, ...]]) -> None:
    """Negative control for the recompile above (in fp32, where a summation order shows): after
    ``torch._dynamo.reset()``, a recompile whose matmul plan differs (what a plan drawn from anything but the shapes
    would do) changes the bits, so comparing a recompile's bits can see it; with the same plans they are equal."""
    import ascend_compile.kernels.matmul as matmul

    with torch.no_grad():
        first = _plain_step(graphs="off")(*plain(3))
        assert same_bits(_plain_step(graphs="off")(*plain(3)), first)
        planned = matmul.matmul_plan

        def other_plan(k: int, n: int, dtype: torch.dtype, device: Any) -> Any:
            return dataclasses.replace(planned(k, n, dtype, device), block_k=16, chunk_blocks=1, num_chunks=-(-k // 16))

        monkeypatch.setattr(matmul, "matmul_plan", other_plan)
        assert not same_bits(_plain_step(graphs="off")(*plain(3)), first)


def test_capturing_a_bucket_leaves_a_static_cache_as_the_caller_passed_it(
        runners: list[BucketGraphRunner]) -> None:  # noqa: F811
    """The call that captures a bucket runs the graph to warm it up (and, on the CPU's stand-in, to capture it)
    before its replay: a static cache and its write position, read and written in place, are put back first, so
    that the call gives eager's logits and advances the cache by one step (before, the first call at each bucket
    wrote one slot late and returned other logits)."""
    subj = subject("llama", "decode", torch.float32, "cpu", CPU_SIZES)
    compiled = torch.compile(subj.step, dynamic=True, backend="ascend_bi",
                             options={"executor": "fx", "graphs": "on", "capture_sizes": [1, 2, 4]})
    rows = [Row("sequence", 0), Row("sequence", 1)]
    with torch.no_grad():
        want = subj.step(*subj.inputs(rows, 1)).clone()
        ids, cache, position = subj.inputs(rows, 1)
        got = compiled(ids, cache, position)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert [int(layer.cumulative_length) for layer in cache.layers] == [CPU_SIZES.context + 1]
    assert any(r.graphs for r in runners), "the call captured its graph"


@pytest.mark.slow  # compiles and captures four buckets: half a minute on 2 cores
def test_running_out_of_memory_mid_capture_leaves_the_other_buckets(
        monkeypatch: pytest.MonkeyPatch, runners: list[BucketGraphRunner],  # noqa: F811
        plain: Callable[..., tuple[Any, ...]], caplog: pytest.LogCaptureFixture) -> None:
    """Bucket 4 runs out of memory while it is captured (after its warm-up, bucket 8 captured before it): the
    capture is left, bucket 2 is still captured, a warning names bucket 4, batches of 3 and 4 run uncaptured and
    every row keeps its batch-1 bits."""
    collect = graphs.BucketGraphRunner
    monkeypatch.setattr(graphs, "BucketGraphRunner",
                        lambda fn, *rest: collect(_out_of_memory_in_capture_at(4, fn), *rest))
    compiled = _plain_step()
    with torch.no_grad():
        alone = [compiled(*plain(n))[0] for n in (1,)]
        with caplog.at_level(logging.WARNING, logger="ascend_compile.graphs"):
            outs = {n: compiled(*plain(n)) for n in (3, 4, 6, 2)}
    assert _RerunGraph.recording is None, "the failed capture was left"
    assert "bucket 4 does not fit in device memory" in caplog.text
    runner = _dynamic(runners)
    assert sorted(b for b, _ in runner.graphs) == [2, 8] and {b for b, _ in runner._refused} == {4}
    assert all(same_bits(out[0], alone[0]) for out in outs.values())


@pytest.mark.slow  # the default fuzz run always checks a batch above the largest bucket (tests/test_fuzz.py)
def test_a_batch_above_the_largest_bucket_runs_uncaptured(runners: list[BucketGraphRunner],  # noqa: F811
                                                         plain: Callable[..., tuple[Any, ...]],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Buckets 1, 2, 4: a batch of 6 runs uncaptured (a log line says so) with every row's batch-1 bits, and the
    buckets below still replay."""
    compiled = _plain_step(capture_sizes=[1, 2, 4])
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="ascend_compile.graphs"):
        alone = [compiled(*plain(1))[0]]
        big = compiled(*plain(6))
        small = compiled(*plain(3))
    assert "batch 6 is above the largest capture size 4: runs uncaptured" in caplog.text
    assert big.shape[0] == 6 and same_bits(big[0], alone[0]) and same_bits(small[0], alone[0])
    assert sorted(b for b, _ in _dynamic(runners).graphs) == [2, 4]


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """Every other element of a wider tensor: no dense layout at all."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def _batch_inner(t: torch.Tensor) -> torch.Tensor:
    """Dense, with the batch dim innermost."""
    return t.transpose(0, -1).contiguous().transpose(0, -1)


@pytest.mark.parametrize("layout", [_channels_last, pytest.param(_strided, marks=pytest.mark.slow),
                                    pytest.param(_batch_inner, marks=pytest.mark.slow)])
def test_non_contiguous_and_channels_last_inputs_keep_the_bits(runners: list[BucketGraphRunner],  # noqa: F811
                                                               plain: Callable[..., tuple[Any, ...]],
                                                               layout: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Caches laid out channels-last, as a strided view or batch-innermost, under Inductor with graphs per bucket:
    the bits of contiguous inputs, in a padded bucket, an exact one and above the largest (the runner's buffers
    keep the inputs' layout; with contiguous ones Inductor's stride checks fail)."""
    compiled = _plain_step(executor="inductor", capture_sizes=[1, 2, 4])
    with torch.no_grad():
        want = {n: compiled(*plain(n)) for n in (1, 6)}
        got = {n: compiled(*plain(n, layout)) for n in (1, 3, 4, 6)}
    assert all(same_bits(got[n][0], want[1][0]) for n in got) and same_bits(got[6], want[6])
    assert {2, 4} <= {b for r in runners for b, _ in r.graphs}


def test_inputs_of_the_wrong_dtype_or_device_are_clear_errors(plain: Callable[..., tuple[Any, ...]]) -> None:
    """A compiled fp32 model given float64 caches, or caches on another device, fails as eager fails, naming the
    reason and the model's line."""
    compiled = _plain_step(graphs="off")
    tokens, position, keys, values = plain(3)
    with torch.no_grad():
        compiled(tokens, position, keys, values)
        for bad, reason in ((torch.float64, "same dtype"), ("meta", "not on the expected device")):
            with pytest.raises(RuntimeError, match=rf"(?s){reason}.*zoo.py"):
                compiled(tokens, position, [k.to(bad) for k in keys], [v.to(bad) for v in values])
