"""Where ascend_bi's options come from under vLLM: its graph settings and ``additional_config={"ascend_bi": {...}}``.

vLLM hands a mode 1/2 ``backend`` no options, and a mode 3 compiler only Inductor's, so the
options live in vLLM's free-form ``additional_config`` (the place platform plugins such as
vllm-ascend read theirs from).  They are validated like ``torch.compile`` options: an unknown key
fails the engine start with the accepted names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The key of ``additional_config`` that holds ascend_bi's options.
CONFIG_KEY = "ascend_bi"


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
