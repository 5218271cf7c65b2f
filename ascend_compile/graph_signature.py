"""What the bucket runner must know about a graph, read off Dynamo's FX graph once, at compile time.

Which symbol is the batch (the one the inputs' leading dims share), which inputs carry it and in
which dims, which inputs the graph writes into, what shapes its outputs have in terms of the
symbols, and whether padding a batch is safe at all.  Kept apart from the runner so that every
rule here is tested on the CPU, where no device graph exists.
"""

from __future__ import annotations

import collections
import functools
import logging
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx

logger = logging.getLogger(__name__)

#: Dynamo-graph ops that give a view of their first argument (writes through them reach it).
_VIEW_METHODS = frozenset({"view", "reshape", "transpose", "permute", "select", "narrow", "unsqueeze", "squeeze",
                           "expand", "flatten", "unflatten", "as_strided", "t", "contiguous", "__getitem__",
                           "view_as", "split", "chunk", "unbind", "movedim", "diagonal", "detach"})


@dataclass(frozen=True)
class InputSpec:
    position: int
    #: The user-facing name Dynamo gave the input's source, e.g. ``input_ids`` or
    #: ``past_key_values.layers[0].keys``.
    name: str
    #: "static" (parameter or buffer: never copied), "tensor", "batch_size" (the batch symbol's
    #: own int input), "size" (another size symbol's int input) or "other".
    kind: str
    #: Dims of a tensor input whose extent is the batch.
    batch_dims: tuple[int, ...] = ()
    integer: bool = False
    mutated: bool = False
    pad_value: float = 0.0
    #: A static input that is not a parameter (a buffer or a tensor marked with a fixed address,
    #: e.g. a static KV cache): graphs read it in place, so a call must pass the same tensor.
    fixed_address: bool = False


@dataclass(frozen=True)
class GraphSignature:
    inputs: tuple[InputSpec, ...]
    batch_symbol: sympy.Symbol | None
    #: Per output: its shape as sympy expressions (None for non-tensor outputs).
    output_shapes: tuple[tuple[sympy.Expr, ...] | None, ...]
    #: Why a batch must not be padded (graphs then run only at exactly a capture size), or None.
    exact_only: str | None
    #: Why the graph cannot be captured at all, or None.
    uncapturable: str | None
    #: The placeholders' fake values (symbolic shapes), by position.
    fakes: tuple[Any, ...] = ()

    @functools.cached_property
    def _symbol_sources(self) -> tuple[tuple[sympy.Symbol, int, int | None], ...]:
        """Where each size symbol's value is read in a call: (symbol, input position, dim), the
        dim None for a size input; one place per symbol."""
        sources: dict[sympy.Symbol, tuple[int, int | None]] = {}
        for spec in self.inputs:
            fake = self.fakes[spec.position]
            if spec.kind in ("batch_size", "size"):
                sources.setdefault(_expr(fake), (spec.position, None))
            for dim, expr in enumerate(_expr_shape(fake) or ()):
                if isinstance(expr, sympy.Symbol):
                    sources.setdefault(expr, (spec.position, dim))
        return tuple((symbol, position, dim) for symbol, (position, dim) in sources.items())

    @functools.cached_property
    def other_symbols(self) -> tuple[sympy.Symbol, ...]:
        """The size symbols besides the batch: their values key a set of captured graphs."""
        return tuple(s for s, _, _ in self._symbol_sources if s != self.batch_symbol)

    @functools.cached_property
    def copied(self) -> tuple[InputSpec, ...]:
        """Inputs copied into static buffers on every call (tensors that are not parameters or buffers)."""
        return tuple(s for s in self.inputs if s.kind == "tensor")

    @functools.cached_property
    def written_copies(self) -> tuple[InputSpec, ...]:
        """Copied inputs the graph writes into: copied back to the caller's tensors after every call."""
        return tuple(s for s in self.copied if s.mutated)

    @functools.cached_property
    def padded_indices(self) -> tuple[InputSpec, ...]:
        """Copied integer inputs with a batch dim: their pad rows get the pad value on every short call."""
        return tuple(s for s in self.copied if s.batch_dims and s.integer)

    def bindings(self, args: Sequence[Any]) -> dict[sympy.Symbol, int]:
        """Every size symbol's value in a call."""
        return {symbol: int(args[position]) if dim is None else int(args[position].shape[dim])
                for symbol, position, dim in self._symbol_sources}

    def batch_of(self, bindings: dict[sympy.Symbol, int]) -> int | None:
        """The batch extent of a call (None when the graph has no batch symbol)."""
        return None if self.batch_symbol is None else bindings[self.batch_symbol]

    @functools.cached_property
    def _shape_env(self) -> Any:
        """Dynamo's shape environment (its guards grow while the graph compiles: read them late)."""
        return next((d.node.shape_env for f in self.fakes if isinstance(f, torch.Tensor)
                     for d in f.shape if isinstance(d, torch.SymInt)), None)

    def broken_guard(self, bindings: dict[sympy.Symbol, int], bucket: int) -> str | None:
        """A guard of Dynamo's that ties the batch to another extent and fails when the batch is
        ``bucket`` and the other extents are a call's (e.g. ``s1 <= s0`` for indices gathered from
        a batch): the graph was compiled assuming it, so that bucket must not run this call."""
        if self._shape_env is None or self.batch_symbol is None:
            return None
        values = {**bindings, self.batch_symbol: bucket}
        for guard in self._shape_env.guards:
            symbols = guard.expr.free_symbols
            if self.batch_symbol in symbols and len(symbols) > 1 and symbols <= values.keys():
                if not bool(guard.expr.xreplace(values)):
                    return str(guard.expr)
        return None


def _expr(value: Any) -> sympy.Expr:
    return value.node.expr if isinstance(value, torch.SymInt) else sympy.Integer(int(value))


def _expr_shape(value: Any) -> tuple[sympy.Expr, ...] | None:
    return tuple(_expr(d) for d in value.shape) if isinstance(value, torch.Tensor) else None


def _source_name(node: torch.fx.Node) -> str:
    """``L['input_ids']`` -> ``input_ids``; ``L['cache'].layers[0].keys`` -> ``cache.layers[0].keys``."""
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    name = source.name if isinstance(getattr(source, "name", None), str) else (source.name() if source else node.name)
    for prefix in ("L['", "G['"):
        if name.startswith(prefix):
            head, _, rest = name[len(prefix):].partition("']")
            return head + rest
    return name


def _mutating(node: torch.fx.Node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    if node.target is operator.setitem:
        return True
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._schema.is_mutable
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.startswith("_")


def _root(node: torch.fx.Node) -> torch.fx.Node:
    """The node a chain of views starts from."""
    while node.op in ("call_method", "call_function") and node.args and isinstance(node.args[0], torch.fx.Node):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name not in _VIEW_METHODS and node.target is not operator.getitem:
            break
        node = node.args[0]
    return node


def mutated_placeholders(gm: torch.fx.GraphModule) -> frozenset[str]:
    """Names of the placeholders the graph writes into (in-place ops on them or their views)."""
    roots = {_root(n.args[0]) for n in gm.graph.nodes
             if _mutating(n) and n.args and isinstance(n.args[0], torch.fx.Node)}
    return frozenset(r.name for r in roots if r.op == "placeholder")


def _batch_symbol(fakes: Sequence[Any], static: frozenset[int]) -> sympy.Symbol | None:
    """The symbol most non-static tensor inputs have as their leading dim."""
    counts: collections.Counter[sympy.Symbol] = collections.Counter()
    for i, fake in enumerate(fakes):
        shape = _expr_shape(fake)
        if i not in static and shape and isinstance(shape[0], sympy.Symbol):
            counts[shape[0]] += 1
    return counts.most_common(1)[0][0] if counts else None


def read_signature(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], static_positions: frozenset[int],
                   pad_values: Mapping[str, float]) -> GraphSignature:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fakes = tuple(n.meta.get("example_value", n.meta.get("val")) for n in placeholders)
    batch = _batch_symbol(fakes, static_positions)
    mutated = mutated_placeholders(gm)
    inputs, tangled = [], []
    for i, (node, fake) in enumerate(zip(placeholders, fakes, strict=True)):
        name = _source_name(node)
        shape = _expr_shape(fake)
        if i in static_positions:
            kind = "static"
        elif isinstance(fake, torch.Tensor):
            kind = "tensor"
        elif isinstance(fake, torch.SymInt):
            kind = "batch_size" if _expr(fake) == batch else "size"
        else:
            kind = "other"
        dims = tuple(d for d, e in enumerate(shape or ()) if e == batch) if batch is not None else ()
        if batch is not None and shape and any(batch in e.free_symbols and e != batch for e in shape):
            tangled.append(name)
        integer = isinstance(fake, torch.Tensor) and not (fake.dtype.is_floating_point or fake.dtype.is_complex)
        fixed = kind == "static" and not isinstance(example_inputs[i], torch.nn.Parameter)
        inputs.append(InputSpec(i, name, kind, dims if kind in ("tensor", "static") else (), integer,
                                node.name in mutated, float(pad_values.get(name, 0.0)), fixed))
    unknown = sorted(set(pad_values) - {s.name for s in inputs})
    if unknown:
        raise ValueError(f"ascend_bi: pad_values names inputs this graph does not have: {unknown}; "
                         f"its inputs: {', '.join(s.name for s in inputs if s.kind != 'static')}")
    outputs = tuple(_expr_shape(getattr(a, "meta", {}).get("example_value")) for a in _outputs(gm))
    return GraphSignature(tuple(inputs), batch, outputs, _exact_only(inputs, pad_values, tangled),
                          _uncapturable(inputs, outputs, fakes), fakes)


def _outputs(gm: torch.fx.GraphModule) -> list[Any]:
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    values = output.args[0]
    return list(values) if isinstance(values, (tuple, list)) else [values]


def _exact_only(inputs: list[InputSpec], pad_values: Mapping[str, float], tangled: list[str]) -> str | None:
    if tangled:
        return f"inputs {tangled} mix the batch with other extents in one dim (padding would not be at the end)"
    fixed = [s.name for s in inputs if s.kind == "static" and s.batch_dims]
    if fixed:
        return f"inputs {fixed} have a batch dim and a fixed address (e.g. a static KV cache): they cannot be padded"
    unbatched_writes = [s.name for s in inputs if s.mutated and not s.batch_dims]
    unpadded_indices = [s.name for s in inputs if s.integer and s.batch_dims and s.name not in pad_values]
    if unbatched_writes and unpadded_indices:
        return (f"the graph writes into {unbatched_writes}, which have no batch dim, possibly through indices in "
                f"{unpadded_indices}: padded rows would write there too. Give pad values for those inputs "
                f"(option pad_values, e.g. {{{unpadded_indices[0]!r}: -1}}) to allow padding")
    return None


def _uncapturable(inputs: list[InputSpec], outputs: tuple[Any, ...], fakes: Sequence[Any]) -> str | None:
    if any(s.kind == "other" for s in inputs):
        return "an input is neither a tensor nor a size (e.g. a Python float the graph reads)"
    if any(shape is None for shape in outputs):
        return "an output is not a tensor"
    known = {e for f in fakes for e in (_expr_shape(f) or ()) if isinstance(e, sympy.Symbol)}
    known |= {_expr(f) for f in fakes if isinstance(f, torch.SymInt)}
    unknown = {s for shape in outputs for e in shape for s in e.free_symbols} - known
    if unknown:
        return f"output extents depend on data ({sorted(map(str, unknown))})"
    return None
