"""The fuzz harness's subjects: a zoo model's decode step or prefill, fed batches of chosen rows.

An invariance claim is about rows: the row a request occupies must get the same bits whatever the
other rows hold.  So a subject builds a batch from a list of ``Row``\\ s -- sequence ``seq`` of a
fixed pool, as it is or transformed (zeroed, scaled to the dtype's extremes, NaN or Inf entries) --
and a row's inputs are the same in every batch: the same token and the same cached keys and values
(decode), the same embeddings (prefill), wherever the row sits.

* decode: the zoo's steps (``tools/zoo.py``): transformers' static cache, the hand-written decoder's
  caches grown by ``torch.cat``, vLLM's paged cache.  A row's float inputs are its cache rows.
* prefill: the zoo's transformers models over ``inputs_embeds`` (float rows, so that a companion can
  hold NaN), every position's logits.

A subject also gives a row's float64 reference: the same module, weights upcast, run eagerly in
float64 on the row's inputs upcast (bit for bit the inputs the tested dtype saw).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ascend_compile.tools import zoo

#: Row kinds.  ``sequence``: the pool's sequence as it is; the others transform its float inputs.
FINITE_KINDS: tuple[str, ...] = ("sequence", "zero", "huge", "tiny")
NONFINITE_KINDS: tuple[str, ...] = ("nan", "inf")
KINDS: tuple[str, ...] = FINITE_KINDS + NONFINITE_KINDS
#: Models with a prefill subject (transformers' forward over ``inputs_embeds``).
PREFILL_MODELS: tuple[str, ...] = ("qwen3", "llama", "gemma3", "phi3")
STEPS: tuple[str, ...] = ("decode", "prefill")


@dataclass(frozen=True)
class Row:
    """One row of a batch: pool sequence ``seq``, transformed by ``kind``."""

    kind: str
    seq: int

    @property
    def finite(self) -> bool:
        return self.kind in FINITE_KINDS


@dataclass(frozen=True)
class Sizes:
    """A subject's sizes: the zoo config, cached tokens per decoded sequence, pool sequences, prefill length."""

    cfg: zoo.ZooConfig
    context: int
    pool: int
    max_length: int


#: Small enough for Triton's interpreter: the zoo's tiny decoder at one layer (at its widths every fusion fires;
#: at smaller ones some do not), a short context.
CPU_SIZES = Sizes(dataclasses.replace(zoo.TINY, layers=1, vocab=64, max_context=16), context=7, pool=6, max_length=5)
#: On a GPU: the zoo's tiny decoder (two layers, Qwen3's head layout at small widths).
GPU_SIZES = Sizes(zoo.TINY, context=21, pool=16, max_length=12)


def transform(rows: torch.Tensor, kind: str) -> torch.Tensor:
    """``rows`` (one row's values, any shape) as ``kind`` makes them; a new tensor."""
    out = rows.clone()
    if kind == "sequence":
        return out
    flat = out.view(-1)
    if kind == "zero":
        return out.zero_()
    if kind in ("huge", "tiny"):
        info = torch.finfo(out.dtype)
        scale = out.abs().amax().clamp_min(1e-30)
        # huge: the largest entry at an eighth of the dtype's range; tiny: the dtype's subnormals.
        target = info.max / 8 if kind == "huge" else info.tiny * 2 ** -4
        return (out.double() / scale.double() * target).to(out.dtype)
    if kind == "nan":
        flat[::3] = float("nan")
        return out
    if kind == "inf":
        flat[::5] = float("inf")
        flat[1::5] = float("-inf")
        return out
    raise ValueError(f"unknown row kind {kind!r}; accepted: {', '.join(KINDS)}")


#: A batch's per-sequence tensors: the token tensor (or None) and the float tensors with how many
#: entries along dim 0 one sequence owns.
Leaves = tuple[torch.Tensor | None, list[tuple[torch.Tensor, int]]]


def _decode_leaves(name: str, inputs: tuple[Any, ...], cfg: zoo.ZooConfig) -> Leaves:
    """Where a zoo decode step's inputs hold each sequence's token and cache rows."""
    if name == "plain":
        tokens, _, keys, values = inputs
        return tokens, [(t, 1) for t in (*keys, *values)]
    if name.startswith("vllm"):
        blocks = -(-cfg.max_context // cfg.block_size)
        return inputs[0], [(t, blocks) for pair in inputs[2] for t in pair]
    cache = inputs[1]
    return inputs[0], [(t, 1) for layer in cache.layers for t in (layer.keys, layer.values)]


def _fill(target: Leaves, pool: Leaves, rows: list[Row]) -> None:
    """Row ``j`` of ``target`` from the pool's sequence ``rows[j].seq``, transformed by its kind."""
    (tokens, leaves), (pool_tokens, pool_leaves) = target, pool
    for j, row in enumerate(rows):
        if tokens is not None:
            tokens[j] = pool_tokens[row.seq]
        for (t, n), (p, m) in zip(leaves, pool_leaves, strict=True):
            assert n == m
            t[j * n:(j + 1) * n] = transform(p[row.seq * n:(row.seq + 1) * n], row.kind)


class Subject:
    """A step (what is compiled), its batches of chosen rows, and a row's float64 reference."""

    #: decode or prefill
    step_kind: str

    def __init__(self, name: str, dtype: torch.dtype, device: str, sizes: Sizes) -> None:
        self.name, self.dtype, self.device, self.sizes = name, dtype, device, sizes

    step: Callable[..., torch.Tensor]

    def inputs(self, rows: list[Row], length: int) -> tuple[Any, ...]:
        raise NotImplementedError

    def reference(self, row: Row, length: int) -> torch.Tensor:
        """The row's output from the float64 module on its inputs upcast (finite rows only)."""
        raise NotImplementedError


def _float64_twin(module: torch.nn.Module, twin: torch.nn.Module) -> torch.nn.Module:
    """``twin`` (the same architecture in float64) holding ``module``'s weights exactly, upcast."""
    twin.load_state_dict(module.state_dict(), strict=False)
    return twin


class DecodeSubject(Subject):
    """A zoo model's decode step: row ``j``'s token and caches come from the pool's sequence."""

    step_kind = "decode"

    def __init__(self, name: str, dtype: torch.dtype, device: str, sizes: Sizes) -> None:
        super().__init__(name, dtype, device, sizes)
        self.model = zoo.build(name, cfg=sizes.cfg, context=sizes.context, device=device, dtype=dtype)
        self.step = self.model.step
        self._pool = self.model.inputs(sizes.pool)  # read only: never passed to the step
        self._buffers: dict[int, tuple[Any, ...]] = {}
        self._twin: zoo.ZooModel | None = None

    def _leaves(self, inputs: tuple[Any, ...]) -> Leaves:
        return _decode_leaves(self.name, inputs, self.sizes.cfg)

    def _prepared(self, model: zoo.ZooModel, buffers: dict[int, tuple[Any, ...]], rows: list[Row]) -> tuple[Any, ...]:
        """``model``'s inputs for ``rows``, in buffers kept per batch size (a static cache keeps its
        address, as a server's does), refilled: the step writes into its caches."""
        if len(rows) not in buffers:
            buffers[len(rows)] = model.inputs(len(rows))
        inputs = buffers[len(rows)]
        _fill(self._leaves(inputs), self._leaves(self._pool), rows)
        for layer in getattr(inputs[1], "layers", ()):  # a static cache: it writes where the mask says
            layer.cumulative_length.fill_(self.sizes.context)
            if hasattr(layer, "cumulative_length_int"):  # a sliding-window layer counts in Python too
                layer.cumulative_length_int = self.sizes.context
        return inputs

    def inputs(self, rows: list[Row], length: int) -> tuple[Any, ...]:
        return self._prepared(self.model, self._buffers, rows)

    def reference(self, row: Row, length: int) -> torch.Tensor:
        if self._twin is None:
            self._twin = zoo.build(self.name, cfg=self.sizes.cfg, context=self.sizes.context, device=self.device,
                                   dtype=torch.float64)
            _float64_twin(self.model.module, self._twin.module)
        with torch.no_grad():
            return self._twin.step(*self._prepared(self._twin, {}, [row]))[0]


class PrefillSubject(Subject):
    """A zoo transformers model's forward over ``inputs_embeds``: every position's logits."""

    step_kind = "prefill"

    def __init__(self, name: str, dtype: torch.dtype, device: str, sizes: Sizes) -> None:
        if name not in PREFILL_MODELS:
            raise ValueError(f"no prefill subject for {name!r}; accepted: {', '.join(PREFILL_MODELS)}")
        super().__init__(name, dtype, device, sizes)
        self.module = zoo.build(name, cfg=sizes.cfg, context=sizes.context, device=device, dtype=dtype).module
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, sizes.cfg.vocab, (sizes.pool, sizes.max_length), generator=gen).to(device)
        with torch.no_grad():
            self._pool = self.module.get_input_embeddings()(ids)  # (pool, max length, hidden)
        self._twin: torch.nn.Module | None = None

    def step(self, embeds: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.module(inputs_embeds=embeds, use_cache=False).logits

    def inputs(self, rows: list[Row], length: int) -> tuple[Any, ...]:
        embeds = torch.empty((len(rows), length, self._pool.shape[-1]), dtype=self.dtype, device=self.device)
        for j, row in enumerate(rows):
            embeds[j] = transform(self._pool[row.seq, :length], row.kind)
        return (embeds,)

    def reference(self, row: Row, length: int) -> torch.Tensor:
        if self._twin is None:
            twin = zoo.build(self.name, cfg=self.sizes.cfg, context=self.sizes.context, device=self.device,
                             dtype=torch.float64).module
            self._twin = _float64_twin(self.module, twin)
        (embeds,) = self.inputs([row], length)
        with torch.no_grad():
            return self._twin(inputs_embeds=embeds.double(), use_cache=False).logits[0]


def subject(name: str, step: str, dtype: torch.dtype, device: str, sizes: Sizes) -> Subject:
    """The ``step`` subject of zoo model ``name``."""
    if name not in zoo.ZOO:
        raise ValueError(f"unknown zoo model {name!r}; accepted: {', '.join(zoo.ZOO)}")
    if step == "decode":
        return DecodeSubject(name, dtype, device, sizes)
    if step == "prefill":
        return PrefillSubject(name, dtype, device, sizes)
    raise ValueError(f"unknown step {step!r}; accepted: {', '.join(STEPS)}")
