"""What vLLM's AOT compile cache holds: the artifacts saved under a ``VLLM_CACHE_ROOT``."""

from __future__ import annotations

import io
from pathlib import Path

from ascend_compile.vllm.artifact import AscendBIArtifact


def saved_models(cache_root: Path) -> list[Path]:
    """The compiled-model files vLLM saved (one per cache key and rank)."""
    return sorted((cache_root / "torch_compile_cache" / "torch_aot_compile").glob("*/rank_*/model"))


def saved_artifact(path: Path) -> AscendBIArtifact:
    """The ascend_bi artifact inside a saved compiled model (an error if another backend saved it)."""
    from torch._dynamo.aot_compile import AOTCompileUnpickler

    state = AOTCompileUnpickler({}, io.BytesIO(path.read_bytes())).load()
    deserialize, payload = state["compiled_fn"]
    owner = getattr(deserialize, "__self__", None)
    if owner is not AscendBIArtifact:
        raise AssertionError(f"{path} was saved by {owner}, not ascend_bi")
    return AscendBIArtifact.deserialize_compile_artifacts(payload)
