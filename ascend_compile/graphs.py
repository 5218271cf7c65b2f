"""``BucketGraphRunner``: one device graph per batch-size bucket, padded batches, same bits.

A decode step is launch-bound without graph capture.  The runner captures the compiled graph once
per capture size and runs a batch of n as the next size up, padded: inputs are copied into the
bucket's static buffers (pad rows get the input's pad value), the graph is replayed, outputs are
cut back to n rows, and inputs the graph wrote into get their n real rows back.  The templates'
plans never look at the batch, so padding cannot change a real row's bits.  Small inputs are copied
together, one foreach copy per dtype: a decoder whose caches grow by ``cat`` hands over two inputs a
layer, and at small batches a launch for each was a good part of its step (``STAGED_TOGETHER_BYTES``).

Capture happens on the first call, for every bucket, largest first, into one shared memory pool,
each after a warm-up run on a side stream (Triton compiles, workspaces are allocated).  A bucket
that runs out of device memory there is skipped with a warning (an error under ``graphs="on"``)
and its batches run uncaptured.  A key of the other size symbols' values (e.g. a cache length)
gets its own set of graphs, up to ``MAX_SHAPE_KEYS``; beyond that, and above the largest bucket,
calls run uncaptured (still batch-invariant).  Parameters and buffers are never copied: graphs
read them in place.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from ascend_compile.devices import Device, GraphApi, graph_api
from ascend_compile.graph_signature import GraphSignature, InputSpec, read_signature
from ascend_compile.report import CompileReport
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

#: Shape keys (values of size symbols other than the batch) that get graphs; more run uncaptured.
MAX_SHAPE_KEYS = 4
#: Inputs of at most this many bytes are copied into the graph's buffers together (one foreach copy per
#: dtype), larger ones by a copy kernel each.  A foreach copy saves small copies their launches, but
#: moves 2-byte values four at a time in fixed 64K-element chunks, where a copy kernel moves eight
#: (H100, a hand-written decoder's 16 caches a step: 1-4 MiB each, 41-70 us gained; 8-16 MiB, none;
#: 32 MiB, about 108 us lost; docs/decisions/0024-graph-input-staging.md).
STAGED_TOGETHER_BYTES = 4 << 20


def capture_sizes(settings: Settings) -> tuple[int, ...]:
    """The buckets: the user's ``capture_sizes``, or 1, 2, 4, 8, 16, 32, then every 16."""
    if settings.capture_sizes is not None:
        return settings.capture_sizes
    sizes = [s for s in (1, 2, 4, 8, 16, 32) if s <= settings.max_capture_size]
    sizes += range(48, settings.max_capture_size + 1, 16)
    return tuple(sizes) or (settings.max_capture_size,)


def bucket_for(batch: int, sizes: Sequence[int], exact_only: bool = False) -> int | None:
    """The capture size a batch runs at: the smallest ≥ ``batch`` (only ``batch`` itself when
    padding is not allowed); None when no bucket fits."""
    i = bisect.bisect_left(sizes, batch)
    if i == len(sizes) or (exact_only and sizes[i] != batch):
        return None
    return sizes[i]


def _region(spec: InputSpec, shape: Sequence[int], rows: int) -> tuple[slice, ...]:
    """Index of the first ``rows`` rows along every batch dim of an input."""
    return tuple(slice(0, rows) if d in spec.batch_dims else slice(None) for d in range(len(shape)))


def _real_region(shape: tuple[sympy.Expr, ...], bindings: dict[sympy.Symbol, int]) -> tuple[slice, ...]:
    return tuple(slice(0, int(e.subs(bindings))) for e in shape)


def _buffer_like(arg: torch.Tensor, shape: list[int], spec: InputSpec) -> torch.Tensor:
    """An empty tensor of ``shape`` laid out like ``arg`` (compiled code checks input strides):
    dense inputs keep their dim order; a strided view (e.g. a column slice) keeps its strides,
    which stay valid when only the outermost dims grow."""
    order = sorted(range(arg.dim()), key=lambda d: (-arg.stride(d), d))  # outermost first
    if arg.permute(order).is_contiguous():  # dense, in some dim order
        permuted = torch.empty([shape[d] for d in order], dtype=arg.dtype, device=arg.device)
        return permuted.permute([order.index(d) for d in range(arg.dim())])
    grown = [d for d in range(arg.dim()) if shape[d] != arg.shape[d]]
    if any(d not in order[:len(grown)] for d in grown):
        raise _CannotPad(f"input {spec.name} is a strided view whose batch dim is not its outermost")
    return torch.empty_strided(shape, arg.stride(), dtype=arg.dtype, device=arg.device)


class _CannotPad(Exception):
    """An input's layout cannot be reproduced at another batch size."""


@dataclass
class _Bucket:
    size: int
    graph: Any
    inputs: list[Any]
    outputs: Sequence[torch.Tensor]
    #: data_ptr of each fixed-address input the graph was captured with.
    addresses: dict[int, int]
    #: Per (real rows, inputs), where the inputs' rows lie in the static buffers: ``destinations``.
    staging: dict[tuple[int, tuple[int, ...]], list[tuple[list[int], list[torch.Tensor]]]] = field(
        default_factory=dict)

    def destinations(self, specs: Sequence[InputSpec], rows: int) -> list[tuple[list[int], list[torch.Tensor]]]:
        """Where the ``rows`` real rows of each input of ``specs`` lie in its static buffer, as groups of
        (positions, views) copied together: the inputs of one dtype up to ``STAGED_TOGETHER_BYTES``,
        and each larger one alone; made once per ``rows``."""
        key = (rows, tuple(spec.position for spec in specs))
        if key not in self.staging:
            groups: dict[object, tuple[list[int], list[torch.Tensor]]] = {}
            for spec in specs:
                static = self.inputs[spec.position]
                view = static[_region(spec, static.shape, rows)] if spec.batch_dims else static
                together = view.numel() * view.element_size() <= STAGED_TOGETHER_BYTES
                positions, views = groups.setdefault(static.dtype if together else spec.position, ([], []))
                positions.append(spec.position)
                views.append(view)
            self.staging[key] = list(groups.values())
        return self.staging[key]


def _copy_groups(groups: list[tuple[list[int], list[torch.Tensor]]], args: Sequence[Any], back: bool = False) -> None:
    """Copy the call's inputs into their views (``back``: the views into the inputs): a group of several
    in one foreach copy, a group of one by a copy kernel."""
    for positions, views in groups:
        sources = [args[p] for p in positions]
        targets, values = (sources, views) if back else (views, sources)
        if len(targets) == 1:
            targets[0].copy_(values[0])
        else:
            torch._foreach_copy_(targets, values)


@dataclass
class BucketGraphRunner:
    """Wraps a compiled graph (``fn(*args)``) with per-bucket device-graph capture."""

    fn: Callable[..., Any]
    signature: GraphSignature
    settings: Settings
    api: GraphApi
    sizes: tuple[int, ...]
    graphs: dict[tuple[int, tuple[int, ...]], _Bucket] = field(default_factory=dict)
    _pool: Any = None
    _told: set[str] = field(default_factory=set)
    _regions: dict[tuple[int, ...], list[tuple[slice, ...]]] = field(default_factory=dict)
    #: (bucket, shape key) pairs not captured because a guard fails there.
    _refused: set[tuple[int, tuple[int, ...]]] = field(default_factory=set)

    def __call__(self, *args: Any) -> Any:
        bindings = self.signature.bindings(args)
        batch = self.signature.batch_of(bindings)
        bucket = self._bucket(batch)
        if bucket is None:
            return self.fn(*args)
        key = (bucket, tuple(bindings[s] for s in self.signature.other_symbols))
        if key in self.graphs and not self._same_addresses(self.graphs[key], args):
            self._tell("moved", "ascend_bi: a fixed-address input (%s) is another tensor than at capture: recapturing",
                       ", ".join(s.name for s in self.signature.inputs if s.fixed_address))
            del self.graphs[key]
            self._capture(args, batch, key[1], [bucket])
        if key not in self.graphs and key not in self._refused:
            shape_keys = {k[1] for k in self.graphs}
            if key[1] not in shape_keys and len(shape_keys) >= MAX_SHAPE_KEYS:
                self._tell("shapes", "ascend_bi: input extents other than the batch keep changing (%s); %d shape "
                           "sets are captured, others run uncaptured (a static KV cache keeps them fixed)",
                           dict(zip(map(str, self.signature.other_symbols), key[1], strict=True)), MAX_SHAPE_KEYS)
                return self.fn(*args)
            buckets = [bucket] if self.signature.exact_only else self._buckets_for(batch)
            wanted = [b for b in buckets if (b, key[1]) not in self.graphs]
            kept = self._guarded(wanted, bindings)
            self._refused |= {(b, key[1]) for b in wanted if b not in kept}
            try:
                self._capture(args, batch, key[1], kept)
            except _CannotPad as reason:
                self._tell("layout", "ascend_bi: %s: this shape runs uncaptured", reason)
                return self.fn(*args)
        if key not in self.graphs:
            return self.fn(*args)
        return self._replay(self.graphs[key], args, batch, self._output_regions(bindings))

    def _guarded(self, buckets: list[int], bindings: dict[sympy.Symbol, int]) -> list[int]:
        """The buckets whose batch keeps Dynamo's guards true with this call's other extents."""
        kept = []
        for bucket in buckets:
            broken = self.signature.broken_guard(bindings, bucket) if bucket else None
            if broken is None:
                kept.append(bucket)
            else:
                self._tell("guard", "ascend_bi: buckets where the compiled graph's guard %s fails are not captured "
                           "for these extents (calls that would use them run uncaptured)", broken)
        return kept

    def _output_regions(self, bindings: dict[sympy.Symbol, int]) -> list[tuple[slice, ...]]:
        """Each output's real extents (evaluated once per set of symbol values)."""
        key = tuple(bindings.values())
        if key not in self._regions:
            self._regions[key] = [_real_region(shape, bindings) for shape in self.signature.output_shapes]
        return self._regions[key]

    def _same_addresses(self, bucket: _Bucket, args: Sequence[Any]) -> bool:
        return all(args[i].data_ptr() == ptr for i, ptr in bucket.addresses.items())

    def _tell(self, topic: str, message: str, *values: Any) -> None:
        """Log a reason once per runner."""
        if topic not in self._told:
            self._told.add(topic)
            logger.info(message, *values)

    def _bucket(self, batch: int | None) -> int | None:
        if batch is None:  # no batch symbol: one static shape, captured as it is
            return 0
        bucket = bucket_for(batch, self.sizes, exact_only=self.signature.exact_only is not None)
        if bucket is None:
            if self.signature.exact_only and batch <= self.sizes[-1]:
                self._tell("exact", "ascend_bi: batches run uncaptured unless they are a capture size: %s",
                           self.signature.exact_only)
            else:
                self._tell("above", "ascend_bi: batch %d is above the largest capture size %d: runs uncaptured",
                           batch, self.sizes[-1])
        return bucket

    def _buckets_for(self, batch: int | None) -> list[int]:
        if batch is None:
            return [0]
        # Dynamo compiles batch 1 as its own static graph, so a dynamic graph never sees it.
        return [s for s in self.sizes if s > 1 or batch == 1]

    def _static_inputs(self, args: Sequence[Any], batch: int | None, bucket: int) -> list[Any]:
        """The bucket's input buffers, filled from ``args`` (rows beyond them get pad values)."""
        inputs = []
        for spec, arg in zip(self.signature.inputs, args, strict=True):
            if spec.kind == "batch_size":
                inputs.append(bucket)
            elif spec.kind == "tensor" and spec.batch_dims:
                shape = [bucket if d in spec.batch_dims else n for d, n in enumerate(arg.shape)]
                buffer = _buffer_like(arg, shape, spec)
                buffer.fill_(spec.pad_value)
                rows = min(batch, bucket)
                buffer[_region(spec, shape, rows)] = arg[_region(spec, arg.shape, rows)]
                inputs.append(buffer)
            elif spec.kind == "tensor":  # a private buffer: later calls may pass other tensors
                inputs.append(_buffer_like(arg, list(arg.shape), spec).copy_(arg))
            else:  # parameters and buffers (read in place), sizes
                inputs.append(arg)
        return inputs

    def _capture(self, args: Sequence[Any], batch: int | None, shape_key: tuple[int, ...], buckets: list[int]) -> None:
        api = self.api
        if self._pool is None:
            self._pool = api.pool()
        stream, total, captured = api.side_stream(), time.perf_counter(), 0
        for n, bucket in enumerate(sorted(buckets, reverse=True), 1):
            start, before = time.perf_counter(), api.memory_allocated()
            try:
                self.graphs[(bucket, shape_key)] = self._capture_bucket(args, batch, bucket, stream)
            except torch.OutOfMemoryError as error:
                self._out_of_memory(bucket, shape_key, error)
                continue
            captured += 1
            logger.info("ascend_bi: captured bucket %d (%d/%d) in %.2f s, %.1f MiB of device memory", bucket, n,
                        len(buckets), time.perf_counter() - start, (api.memory_allocated() - before) / 2**20)
        logger.info("ascend_bi: %d graphs captured in %.1f s", captured, time.perf_counter() - total)

    def _capture_bucket(self, args: Sequence[Any], batch: int | None, bucket: int, stream: Any) -> _Bucket:
        api = self.api
        inputs = self._static_inputs(args, batch, bucket)
        # The warm-up runs the graph (so does capture on the CPU's stand-in): inputs it writes in place (a static
        # KV cache, its write position) are put back, so that the call's replay starts from what the caller passed.
        written = [inputs[s.position] for s in self.signature.inputs if s.fixed_address and s.mutated]
        kept = [t.clone() for t in written]
        api.synchronize()  # the copies are taken before the warm-up's stream writes
        try:
            with api.on(stream):
                self.fn(*inputs)  # warm-up: kernels compiled, workspaces allocated outside the graph
            api.join(stream)
            api.synchronize()
            graph = api.new_graph()
            with api.capture(graph, self._pool, stream):
                outputs = self.fn(*inputs)
        finally:  # also when a bucket runs out of memory: its batches then run uncaptured on these inputs
            api.synchronize()
            for tensor, before in zip(written, kept, strict=True):
                tensor.copy_(before)
        addresses = {s.position: args[s.position].data_ptr() for s in self.signature.inputs if s.fixed_address}
        return _Bucket(bucket, graph, inputs, outputs, addresses)

    def _out_of_memory(self, bucket: int, shape_key: tuple[int, ...], error: torch.OutOfMemoryError) -> None:
        """A bucket whose warm-up or capture ran out of device memory: an error under
        ``graphs="on"``; otherwise its batches run uncaptured and smaller buckets are still tried."""
        advice = "bound the buckets with max_capture_size or capture_sizes"
        if self.settings.graphs == "on":
            raise RuntimeError(f"ascend_bi: graphs='on' but bucket {bucket} does not fit in device memory while it is "
                               f"captured; {advice}") from error
        self._refused.add((bucket, shape_key))
        self.api.synchronize()
        logger.warning("ascend_bi: bucket %d does not fit in device memory while it is captured (%s); batches that "
                       "would use it run uncaptured; %s", bucket, str(error).splitlines()[0], advice)

    def _replay(self, bucket: _Bucket, args: Sequence[Any], batch: int | None,
                regions: list[tuple[slice, ...]]) -> Any:
        rows = batch if batch is not None else 0
        _copy_groups(bucket.destinations(self.signature.copied, rows), args)
        if rows < bucket.size:  # stale indices in pad rows must not be written through
            for spec in self.signature.padded_indices:
                static = bucket.inputs[spec.position]
                static[tuple(slice(rows, None) if d == spec.batch_dims[0] else slice(None)
                             for d in range(static.dim()))] = spec.pad_value
        bucket.graph.replay()
        _copy_groups(bucket.destinations(self.signature.written_copies, rows), args, back=True)
        outputs = [out[region] for out, region in zip(bucket.outputs, regions, strict=True)]
        if self.settings.clone_outputs:
            outputs = [o.clone() for o in outputs]
        return type(bucket.outputs)(outputs) if isinstance(bucket.outputs, (list, tuple)) else outputs[0]


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _unchanged(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def graph_wrapper(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], settings: Settings, device: Device,
                  static_positions: frozenset[int], report: CompileReport | None = None) -> Wrap:
    """How to wrap the compiled ``gm``: in a ``BucketGraphRunner`` where graphs are on and possible.

    Called before the executor compiles ``gm`` (which may rewrite it), so that the graph's inputs,
    writes and outputs are read as Dynamo traced them.  The decision goes to the log and to
    ``report.graphs`` (the dump's ``summary.json``).
    """
    def decided(how: str, wrap: Wrap = _unchanged) -> Wrap:
        logger.info("ascend_bi: %s", how)
        if report is not None:
            report.graphs = how
        return wrap

    if settings.graphs == "off":
        return decided("graphs off: the graph runs uncaptured")
    api = graph_api(device.kind)
    if api is None:
        return decided(f"no device graphs on {device.kind}: the graph runs uncaptured")
    signature = read_signature(gm, example_inputs, static_positions, dict(settings.pad_values))
    if signature.uncapturable:
        if settings.graphs == "on":
            raise ValueError(f"ascend_bi: graphs='on' but this graph cannot be captured: {signature.uncapturable}")
        return decided(f"the graph runs uncaptured: {signature.uncapturable}")
    sizes = capture_sizes(settings)
    exact = f"; exact batch sizes only: {signature.exact_only}" if signature.exact_only else ""
    written = [s.name for s in signature.written_copies]
    copies = (f"; {', '.join(written)} written in place: copied into the graph's buffer and back on every call "
              "(a tensor marked with torch._dynamo.mark_static_address is read in place; with a batch dim, it limits "
              "graphs to exact capture sizes)") if written else ""
    return decided(f"device graphs per bucket {list(sizes)} (batch symbol {signature.batch_symbol}){exact}{copies}",
                   lambda fn: BucketGraphRunner(fn, signature, settings, api, sizes))
