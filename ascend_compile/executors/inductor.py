"""Executor "inductor": our passes run on Inductor's post-grad graph; Inductor fuses the rest.

The pipeline is installed as Inductor's ``post_grad_custom_post_pass`` (a ``CustomGraphPass``
with a ``uuid`` for Inductor's caches), and Inductor itself is configured so that nothing it
generates reorders a reduction by batch size: no split reductions, no autotuning or
coordinate-descent tuning, no decomposition of memory-bound matmuls into reductions, no online
softmax (its prim hides the softmax's sum from our rewrites), and its own
``deterministic``/``batch_invariant`` switches where the installed torch has them.  It also rounds
bf16/fp16 intermediates wherever eager would (``emulate_precision_casts``): Inductor fuses a
one-token decode graph differently from a prefill graph, and without the casts where it fuses
decides where values are rounded, so decode and prefill would differ in the last bits.

Our ops reach Inductor as fallbacks, registered up front (``allow_fallbacks``) so that lowering a
deep graph does not stall on formatting a log line.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
import torch.fx
from torch._inductor import lowering
from torch._inductor.compile_fx import compile_fx
from torch._inductor.custom_graph_pass import CustomGraphPass

import ascend_compile.passes
from ascend_compile.ops.library import bi_op_of
from ascend_compile.passes.graph_facts import GraphFacts
from ascend_compile.passes.pipeline import run_pipeline
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

_PASSES_DIR = Path(ascend_compile.passes.__file__).resolve().parent


def batch_invariant_inductor_config() -> dict[str, Any]:
    """Inductor settings under which its generated code keeps reduction order fixed."""
    patches: dict[str, Any] = {
        "split_reductions": False,
        "max_autotune": False,
        "max_autotune_gemm": False,
        "coordinate_descent_tuning": False,
        "decompose_mem_bound_mm": False,
        "triton.multi_kernel": 0,
        "triton.cooperative_reductions": False,
        "emulate_precision_casts": True,
        # Every graph must pass through our pipeline (reports, strict mode); a cache hit would skip it.
        "fx_graph_cache": False,
    }
    for optional in ("deterministic", "batch_invariant"):  # deterministic: torch >= 2.12; batch_invariant: 2.13
        if hasattr(inductor_config, optional):
            patches[optional] = True
    # On GPUs Inductor's own post-grad passes turn softmax's amax/sub/exp/sum into its online-softmax
    # prim before our pass runs; the templates need the softmax they can see.
    if hasattr(inductor_config, "online_softmax"):
        patches["online_softmax"] = False
    return patches


class AscendBIPostGradPass(CustomGraphPass):
    """The ascend_bi pipeline as an Inductor post-grad pass."""

    def __init__(self, settings: Settings, facts: GraphFacts) -> None:
        self.settings = settings
        self.facts = facts

    def __call__(self, graph: torch.fx.Graph) -> None:
        run_pipeline(graph.owning_module, self.settings, self.facts)
        allow_fallbacks(graph)

    def uuid(self) -> str:
        digest = hashlib.sha256(repr(self.settings).encode())
        for source in sorted(_PASSES_DIR.glob("*.py")):
            digest.update(source.read_bytes())
        return digest.hexdigest()


def allow_fallbacks(graph: torch.fx.Graph) -> None:
    """Put the ``ascend_bi`` ops of ``graph`` on Inductor's fallback allow list.

    The first time Inductor lowers an op that has no lowering, it logs the op with its arguments,
    and torch 2.11 formats that line even when the log is off.  An IR node's string holds its
    inputs' strings, so for an op deep in a decoder graph, whose nodes reach back along two paths
    (the residual and the hidden states), the string doubles with every layer: a Qwen3-0.6B decode
    graph whose first ``add_rms_norm`` sat after its 28 layers stalled compilation for minutes on
    an H200 (torch 2.11).  An allow-listed op gets the same fallback without the log line; its
    layout constraint comes from its tag (``ops/library.py``), as it would without the list.
    """
    for node in graph.nodes:
        op = bi_op_of(node)
        if op is not None:
            lowering.FALLBACK_ALLOW_LIST.add(op.name().split(".")[0])  # the name Inductor looks up


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any], settings: Settings,
                  facts: GraphFacts) -> Callable[..., Any]:
    patches = batch_invariant_inductor_config() | {"post_grad_custom_post_pass": AscendBIPostGradPass(settings, facts)}
    with functorch_config.patch(enable_autograd_cache=False):
        return compile_fx(gm, example_inputs, config_patches=patches)
