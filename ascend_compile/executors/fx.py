"""Executor "fx": the functional aten graph from AOTAutograd, rewritten, runs as is.

For devices without Inductor (Ascend NPUs run aten ops through torch-npu) and for debugging:
what runs is exactly the rewritten graph the dumps show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch.fx
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from ascend_compile.passes.graph_facts import GraphFacts
from ascend_compile.passes.pipeline import run_pipeline
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any], settings: Settings,
                  facts: GraphFacts) -> Callable[..., Any]:
    def forward_compiler(fw: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        run_pipeline(fw, settings, facts)
        return make_boxed_func(fw.forward)

    def backward_compiler(bw: torch.fx.GraphModule, inputs: list[Any]) -> Callable[..., Any]:
        raise RuntimeError("ascend_bi compiles inference graphs only; no backward graph is supported")

    return aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)(gm, example_inputs)
