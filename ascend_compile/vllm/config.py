"""Whether a vLLM config asks for ascend_bi, and the options it gives it.

vLLM loads the general plugin in every process, before any config exists, so the plugin decides
per config: ascend_bi is asked for when the compilation config names it as the backend (modes 1
and 2), when ``additional_config`` has an ``ascend_bi`` key, or when the environment variable
``ASCEND_BI`` is true (the switch for mode 3, where vLLM does not let a backend be named).

vLLM hands a mode 1/2 ``backend`` no options, and a mode 3 compiler only Inductor's, so the
options live in vLLM's free-form ``additional_config`` (the place platform plugins such as
vllm-ascend read theirs from).  They are validated like ``torch.compile`` options: an unknown key
fails the engine start with the accepted names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ascend_compile.settings import FALSE_WORDS, TRUE_WORDS

#: The key of ``additional_config`` that holds ascend_bi's options.
CONFIG_KEY = "ascend_bi"
#: The environment switch (mode 3 on GPUs/NPUs; eager coverage without compiling).
ENV = "ASCEND_BI"
#: The names a mode 1/2 ``backend`` may give ascend_bi by: torch's registry name and the qualname.
BACKEND_NAMES = ("ascend_bi", "ascend_compile.backend.ascend_bi")
_OFF_WORDS = ("", *FALSE_WORDS)  # unset is off


def env_requested(env: Mapping[str, str] = os.environ) -> bool:
    """True when ``ASCEND_BI`` is true; a value that is neither true nor false is an error."""
    raw = env.get(ENV, "").strip().lower()
    if raw not in TRUE_WORDS + _OFF_WORDS:
        raise ValueError(f"ascend_bi: environment variable {ENV}={env[ENV]!r} is not valid; "
                         f"accepted values: {', '.join(v for v in TRUE_WORDS + _OFF_WORDS if v)}")
    return raw in TRUE_WORDS


def names_ascend_bi(backend: Any) -> bool:
    """Whether a compilation config's ``backend`` (a name or a callable) is ascend_bi."""
    if isinstance(backend, str):
        return backend in BACKEND_NAMES
    return getattr(backend, "__module__", None) == "ascend_compile.backend" and \
        getattr(backend, "__name__", None) == "ascend_bi"


def requested_by(vllm_config: Any, env: Mapping[str, str] = os.environ) -> str | None:
    """What in ``vllm_config`` (or the environment) asks for ascend_bi, or None when nothing does."""
    if names_ascend_bi(getattr(getattr(vllm_config, "compilation_config", None), "backend", None)):
        return "compilation_config"
    additional = getattr(vllm_config, "additional_config", None)
    if isinstance(additional, Mapping) and CONFIG_KEY in additional:
        return "additional_config"
    if env_requested(env):
        return f"{ENV}=1"
    return None


def options_from(vllm_config: Any) -> dict[str, Any]:
    """ascend_bi's options for a ``VllmConfig``: vLLM's graph settings, then the user's own on top.

    vLLM captures CUDA/ACL graphs itself, so ascend_bi's graph runner is off (``graphs="off"``);
    the capture sizes are vLLM's ``cudagraph_capture_sizes``.
    """
    options: dict[str, Any] = {"graphs": "off"}
    sizes = getattr(getattr(vllm_config, "compilation_config", None), "cudagraph_capture_sizes", None)
    if sizes:
        options["capture_sizes"] = tuple(sizes)
    additional = getattr(vllm_config, "additional_config", None)
    if not isinstance(additional, Mapping) or CONFIG_KEY not in additional:
        return options
    user = additional[CONFIG_KEY]
    if not isinstance(user, Mapping):
        raise ValueError(f"ascend_bi: additional_config[{CONFIG_KEY!r}] = {user!r} is not valid; "
                         "accepted values: a dict of ascend_bi options")
    return options | dict(user)
