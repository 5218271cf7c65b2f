"""ascend_bi's part of vLLM's compile-cache key: what decides the compiled graph besides vLLM's config.

vLLM keys its AOT compile cache by its own config, its environment and the traced model sources;
none of that sees ascend_bi's code or the ``ASCEND_BI_*`` variables.  Like vLLM's Inductor passes
(their ``uuid()``), ascend_bi adds a hash of what decides its plans and rewrites: the source of
its runtime packages (passes, kernels and their plans, ops, executors, the backend, this glue),
the resolved settings (options and ``ASCEND_BI_*`` variables), and the versions of torch, Triton
and Python and the CPU's vector ISA (Inductor's generated CPU code depends on it).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import pkgutil
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

import ascend_compile
from ascend_compile.settings import Settings

logger = logging.getLogger(__name__)

#: Packages that are no part of what a compiled graph computes (the CLI and benchmarks).
NOT_RUNTIME = frozenset({"ascend_compile.tools"})
#: The runtime packages (``passes`` may live outside the package folder: pyproject's package-dir).
RUNTIME = ("ascend_compile", "ascend_compile.ops", "ascend_compile.kernels", "ascend_compile.executors",
           "ascend_compile.passes", "ascend_compile.vllm")


def _runtime_sources() -> Iterator[tuple[str, Path]]:
    """``(package/relative path, file)`` for every Python file of the runtime packages."""
    names = set(RUNTIME) | {f"ascend_compile.{m.name}" for m in pkgutil.iter_modules(ascend_compile.__path__)
                            if m.ispkg}
    excluded = {Path(loc).resolve() for name in NOT_RUNTIME for loc in _locations(name)}
    seen: set[Path] = set()
    for name in sorted(names - NOT_RUNTIME):
        for location in _locations(name):
            root = Path(location).resolve()
            # The top package's own modules only: its sub-packages are listed by name (and may live elsewhere).
            for path in sorted(root.glob("*.py") if name == "ascend_compile" else root.rglob("*.py")):
                path = path.resolve()
                if path in seen or any(path.is_relative_to(ex) for ex in excluded):
                    continue
                seen.add(path)
                yield f"{name}/{path.relative_to(root).as_posix()}", path


def _locations(package: str) -> list[str]:
    spec = importlib.util.find_spec(package)
    return list(spec.submodule_search_locations or []) if spec is not None else []


@functools.cache
def source_hash() -> str:
    """SHA-256 over the runtime packages' file names and contents (read once per process)."""
    digest = hashlib.sha256()
    count = 0
    for name, path in _runtime_sources():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        count += 1
    logger.debug("ascend_bi: source hash over %d files", count)
    return digest.hexdigest()


def cache_factors(options: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ) -> list[str]:
    """The factors, in order: code, settings, ``ASCEND_BI_*`` variables, versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    variables = sorted((k, v) for k, v in env.items() if k.startswith("ASCEND_BI_"))
    return [
        f"ascend_compile {ascend_compile.__version__} {source_hash()}",
        repr(Settings.from_options(options, env)),
        repr(variables),
        f"torch {torch.__version__} triton {triton_version} python {platform.python_version()} "
        f"cpu {torch.backends.cpu.get_cpu_capability()}",
    ]


def cache_key(options: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ) -> str:
    """One hash of ``cache_factors``: vLLM's AOT cache key takes it, and the artifact carries it."""
    return hashlib.sha256(repr(cache_factors(options, env)).encode()).hexdigest()
