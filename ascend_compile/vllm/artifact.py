"""The compiled model graph in the form vLLM's AOT compile saves and loads (modes 1 and 2).

vLLM (torch >= 2.10) compiles the model ahead of time and keeps the result in its compile cache,
so that the next engine start with the same model and options skips Dynamo.  torch asks the
backend for a ``SerializableCallable``: ``AscendBIArtifact`` is that.  What it saves is the graph
Dynamo captured (vLLM's own ``VllmSerializableFunction`` pickles graphs the same way), which
inputs were parameters and buffers, the options and ascend_bi's cache key (``cache_key.py``).
Loading runs the ascend_bi pipeline on that graph again, so every graph still passes through the
passes (report, dumps, strict mode) and Inductor's on-disk code cache, which vLLM keeps next to
the artifact, supplies the compiled kernels: a second start skips Dynamo's trace and the C++
compile, not the passes.  Inductor's own compiled graph is not saved: the inductor executor turns
AOTAutograd's and Inductor's graph caches off, so that no graph ever skips the pipeline, and the
bundled AOTAutograd entry a saveable Inductor graph needs is built only with them on.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx
from torch._dynamo.aot_compile_types import SerializableCallable
from torch._guards import TracingContext, tracing
from torch._subclasses import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from ascend_compile.backend import ascend_bi
from ascend_compile.vllm.cache_key import cache_key
from ascend_compile.vllm.config import options_from

logger = logging.getLogger(__name__)

#: Bumped when the saved state changes shape; an artifact of another format is compiled afresh.
FORMAT = 1
#: Node metadata that holds module objects (not picklable) and that the pipeline does not read.
_UNPICKLED_META = ("source_fn_stack", "nn_module_stack")
_STATIC = "_dynamo_static_input_type"


def compile_for_vllm(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
                     options: Mapping[str, Any]) -> AscendBIArtifact:
    """vLLM's mode 1/2 backend: ascend_bi's compiled graph, saveable by vLLM's AOT compile."""
    graph = _dump_graph(gm)  # first: Inductor's pre-grad passes change ``gm`` in place
    parameters = frozenset(i for i, x in enumerate(example_inputs) if isinstance(x, torch.nn.Parameter))
    compiled = ascend_bi(gm, example_inputs, options=dict(options))
    return AscendBIArtifact(graph=graph, parameters=parameters, options=dict(options), key=cache_key(options),
                            compiled=compiled)


class AscendBIArtifact(SerializableCallable):
    """A compiled graph and what it takes to compile it again in another process."""

    def __init__(self, graph: bytes, parameters: frozenset[int], options: dict[str, Any], key: str,
                 compiled: Callable[..., Any] | None = None) -> None:
        self.graph = graph
        self.parameters = parameters
        self.options = options
        self.key = key
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:  # loaded outside vLLM (vLLM calls finalize_loading first)
            self.compiled = self._compile(self.options)
        return self.compiled(*args, **kwargs)

    @classmethod
    def serialize_compile_artifacts(cls, fn: AscendBIArtifact) -> bytes:
        return pickle.dumps({"format": FORMAT, "graph": fn.graph, "parameters": sorted(fn.parameters),
                             "options": fn.options, "key": fn.key})

    @classmethod
    def deserialize_compile_artifacts(cls, data: bytes) -> AscendBIArtifact:
        state = pickle.loads(data)
        if state.get("format") != FORMAT:
            raise RuntimeError(f"ascend_bi: cached artifact format {state.get('format')} is not {FORMAT}")
        return cls(graph=state["graph"], parameters=frozenset(state["parameters"]), options=state["options"],
                   key=state["key"])

    def finalize_loading(self, vllm_config: Any) -> None:
        """vLLM's hook after loading: compile with the options of the config the engine runs."""
        if self.compiled is not None:
            return
        options = options_from(vllm_config)
        if cache_key(options) != self.key:  # vLLM's cache path holds the key: only a stale file gets here
            raise RuntimeError("ascend_bi: the cached graph was saved by other ascend_bi code or options")
        self.compiled = self._compile(options)
        logger.info("ascend_bi: compiled the graph loaded from vLLM's compile cache")

    def _compile(self, options: Mapping[str, Any]) -> Callable[..., Any]:
        fake_mode = FakeTensorMode(shape_env=ShapeEnv())
        gm = _load_graph(self.graph, fake_mode)
        inputs = [_example_input(node, i in self.parameters)
                  for i, node in enumerate(gm.graph.find_nodes(op="placeholder"))]
        with tracing(TracingContext(fake_mode)), torch.no_grad():
            return ascend_bi(gm, inputs, options=dict(options))


def _dump_graph(gm: torch.fx.GraphModule) -> bytes:
    from vllm.compilation.caching import VllmSerializableFunction

    removed = [(node, {k: node.meta.pop(k) for k in _UNPICKLED_META if k in node.meta}) for node in gm.graph.nodes]
    try:
        return VllmSerializableFunction.serialize_graph_module(gm)
    finally:
        for node, meta in removed:
            node.meta.update(meta)


def _load_graph(data: bytes, fake_mode: FakeTensorMode) -> torch.fx.GraphModule:
    from vllm.compilation.caching import VllmSerializableFunction

    gm = VllmSerializableFunction.deserialize_graph_module(data, fake_mode)
    gm.recompile()
    for node in gm.graph.find_nodes(op="placeholder"):
        if not hasattr(node, "_dynamo_source"):  # AOTAutograd reads it from a Dynamo graph; lost in pickling
            node._dynamo_source = None
    return gm


def _example_input(node: torch.fx.Node, parameter: bool) -> Any:
    """A placeholder's fake value, a parameter or buffer again as Dynamo handed it to the backend."""
    value = node.meta["example_value"]
    if not isinstance(value, torch.Tensor):
        return value  # a SymInt: the batch size
    if parameter:
        value = torch.nn.Parameter(value, requires_grad=False)
    static = node.meta.get("tensor_dict", {}).get(_STATIC)
    if static:
        setattr(value, _STATIC, static)
    return value
