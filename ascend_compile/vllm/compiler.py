"""``CompilerInterface`` adaptor: vLLM's piecewise mode 3 (``VLLM_COMPILE``) compiles each piece with ascend_bi.

In mode 3 vLLM splits the model graph at attention and hands each piece to the compiler that
``make_compiler`` returns; the plugin makes that this one for a config that asks for ascend_bi
(a platform plugin could instead name this class as its compile backend).  vLLM captures its own
CUDA/ACL graphs around the pieces, so ascend_bi runs no graph runner of its own.  Compiled pieces are not cached on disk
(``compile`` returns no handle): every engine start compiles through the pipeline, so its report
and strict mode always apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch.fx
from vllm.compilation.compiler_interface import CompilerInterface

from ascend_compile.backend import ascend_bi
from ascend_compile.settings import Settings
from ascend_compile.vllm.cache_key import cache_key
from ascend_compile.vllm.config import options_from

logger = logging.getLogger(__name__)


class AscendBICompiler(CompilerInterface):
    """Compiles each piece of vLLM's split graph with the ascend_bi backend."""

    name = "ascend_bi"

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def compute_hash(self, vllm_config: Any) -> str:
        self.options = options_from(vllm_config)
        Settings.from_options(self.options)  # a bad option fails here, at engine start
        return cache_key(self.options)[:10]  # code, settings and versions, as in mode 2

    def compile(self, graph: torch.fx.GraphModule, example_inputs: list[Any], compiler_config: dict[str, Any],
                compile_range: Any, key: str | None = None) -> tuple[Callable[..., Any] | None, Any | None]:
        logger.info("ascend_bi: compiling a vLLM piece for token range %s", compile_range)
        return ascend_bi(graph, example_inputs, options=self.options), None
