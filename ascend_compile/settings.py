"""One frozen settings object per compiled graph, built from ``options=`` and the environment.

``torch.compile(model, backend="ascend_bi", options={...})`` hands its options here; environment
variables (``ASCEND_BI_<FIELD>``) supply defaults that options override.  Every field is
documented below; an unknown key or a bad value raises ``ValueError`` naming the key and the
accepted values, so a typo never silently leaves a model non-invariant.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

logger = logging.getLogger(__name__)

EXECUTORS = ("auto", "inductor", "fx")
GRAPHS = ("auto", "on", "off")
#: Words a boolean option (or environment variable) accepts, in any case.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Options of the ``ascend_bi`` backend."""

    #: How the rewritten graph runs. "inductor": our passes run on Inductor's post-grad graph and
    #: Inductor fuses the rest with a batch-invariant-safe config. "fx": the functional aten graph,
    #: rewritten, runs as is (devices without Inductor, e.g. NPUs). "auto": by device.
    executor: str = "auto"
    #: An order-sensitive reduction left in the graph is an error naming the node and its source
    #: line (True), or a warning plus an entry in the compile report (False).
    strict: bool = False
    #: Folder for graph dumps: every pass writes its graph before and after as ``.py``; each graph
    #: also gets ``summary.json`` (report and plan per template) and ``graph.html``. Env: ``ASCEND_BI_DUMP_DIR``.
    dump_dir: str | None = None
    #: Passes to skip, by name (see ``ascend_compile.passes.PIPELINE``); for debugging only.
    disable_passes: tuple[str, ...] = ()
    #: Device-graph capture per batch-size bucket (CUDA graphs, Ascend NPU graphs). "auto": on for
    #: GPUs and NPUs, off on the CPU and under vLLM (vLLM captures itself); when a graph cannot be
    #: captured, it says why once and runs uncaptured. "on": the same, but a graph that cannot be
    #: captured is an error. "off": never.
    graphs: str = "auto"
    #: Batch sizes to capture; a batch runs padded up to the next one (larger batches run
    #: uncaptured). Default: 1, 2, 4, 8, 16, 32, then every 16 up to ``max_capture_size``.
    capture_sizes: tuple[int, ...] | None = None
    #: Largest default capture size (ignored when ``capture_sizes`` is given).
    max_capture_size: int = 64
    #: Values padding rows get, by input name (e.g. ``{"slot_mapping": -1}``); other inputs are
    #: padded with zeros. Graphs that write through a batch index into a buffer without a batch
    #: dimension are captured at exact sizes only, unless every integer batch input has one.
    pad_values: tuple[tuple[str, float], ...] = ()
    #: Return clones of graph outputs (True), or views into the graph's static outputs that the
    #: next replay of the same bucket overwrites (False: faster; use each result before the next call).
    clone_outputs: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None) -> Settings:
        """Environment first, then ``options`` on top; every value validated."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"ASCEND_BI_{f.name.upper()}")
            if raw:
                values[f.name] = _parse(f.name, raw, source=f"environment variable ASCEND_BI_{f.name.upper()}")
        for key, value in (options or {}).items():
            if key not in _FIELD_NAMES:
                raise ValueError(
                    f"ascend_bi: unknown option {key!r}; accepted options: {', '.join(sorted(_FIELD_NAMES))}"
                )
            values[key] = _parse(key, value, source=f"option {key!r}")
        settings = cls(**values)
        logger.debug("ascend_bi settings: %s", settings)
        return settings


_FIELD_NAMES = frozenset(f.name for f in fields(Settings))


def _parse(name: str, value: Any, *, source: str) -> Any:
    if name == "executor":
        if value not in EXECUTORS:
            raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: {', '.join(EXECUTORS)}")
        return value
    if name == "strict":
        return _bool(value, source)
    if name == "dump_dir":
        if value is None or (isinstance(value, (str, os.PathLike)) and str(value)):
            return None if value is None else str(value)
        raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: a folder path or None")
    if name == "disable_passes":
        from ascend_compile.passes import PASS_NAMES

        names = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        optional = [n for n in PASS_NAMES if n != "verify_batch_invariance"]
        unknown = [n for n in names if n not in optional]
        if unknown:
            raise ValueError(
                f"ascend_bi: {source} names passes that cannot be disabled or do not exist: {unknown}; "
                f"accepted values: {', '.join(optional)}"
            )
        return names
    if name == "graphs":
        if value not in GRAPHS:
            raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: {', '.join(GRAPHS)}")
        return value
    if name == "capture_sizes":
        return None if value is None else _positive_ints(value, source)
    if name == "max_capture_size":
        return _positive_ints(value if isinstance(value, str) else (value,), source)[0]
    if name == "pad_values":
        return _pad_values(value, source)
    if name == "clone_outputs":
        return _bool(value, source)
    raise AssertionError(f"settings field {name} has no parser")


def _bool(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: True, False")


def _positive_ints(value: Any, source: str) -> tuple[int, ...]:
    """A non-empty collection of positive integers (or "1,2,4" from the environment), sorted."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        sizes = tuple(int(v) if isinstance(v, str) else v for v in items)
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: positive integers "
                         "(a non-empty list, e.g. [1, 2, 4, 8])")
    return tuple(sorted(set(sizes)))


def _pad_values(value: Any, source: str) -> tuple[tuple[str, float], ...]:
    """``{"input name": number}`` (or "name=value,..." from the environment)."""
    if isinstance(value, str):
        try:
            value = dict(item.split("=", 1) for item in value.split(",") if item)
            value = {k.strip(): float(v) for k, v in value.items()}
        except ValueError:
            value = None
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        value = dict(value)
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()):
        raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: a mapping from input "
                         "name to a number, e.g. {'slot_mapping': -1}")
    return tuple(sorted(value.items()))
