"""One frozen settings object per compiled graph, built from ``options=`` and the environment.

``torch.compile(model, backend="ascend_bi", options={...})`` hands its options here; environment
variables (``ASCEND_BI_<FIELD>``) supply defaults that options override.  One rule reads both:
a field takes its Python value (``True``, ``[1, 2, 4]``, ``{"slot_mapping": -1}``) or the text its
environment variable would hold (``"yes"``, ``"1,2,4"``, ``"slot_mapping=-1"``), through the same
parser, so an option means the same wherever it comes from (vLLM's JSON configs, shell variables,
Python).  Every field is documented below; an unknown key or a bad value raises ``ValueError``
naming the key and the accepted values, so a typo never silently leaves a model non-invariant.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
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
    """One rule for every field: its Python value, or the text its environment variable would hold."""
    return _PARSERS[name](value, source)


def _invalid(source: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: {accepted}")


def _choice(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(value: Any, source: str) -> str:
        if value not in choices:
            raise _invalid(source, value, ", ".join(choices))
        return value

    return parse


def _bool(value: Any, source: str) -> bool:
    """``True``/``False``, ``1``/``0``, or one of the words (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise _invalid(source, value, f"True, False, 1, 0 or one of {', '.join(TRUE_WORDS[2:] + FALSE_WORDS[2:])}")


def _folder(value: Any, source: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return str(value)
    raise _invalid(source, value, "a folder path or None")


def _pass_names(value: Any, source: str) -> tuple[str, ...]:
    from ascend_compile.passes import PASS_NAMES

    names = tuple(n.strip() for n in value.split(",") if n.strip()) if isinstance(value, str) else value
    optional = [n for n in PASS_NAMES if n != "verify_batch_invariance"]
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise _invalid(source, value, f"pass names (a list, or comma-separated): {', '.join(optional)}")
    unknown = [n for n in names if n not in optional]
    if unknown:
        raise ValueError(
            f"ascend_bi: {source} names passes that cannot be disabled or do not exist: {unknown}; "
            f"accepted values: {', '.join(optional)}"
        )
    return tuple(names)


def _positive_ints(value: Any, source: str) -> tuple[int, ...]:
    """One positive integer or a non-empty collection of them ("1,2,4" as text), sorted."""
    items = value.split(",") if isinstance(value, str) else (value,) if isinstance(value, int) else value
    try:
        sizes = tuple(int(v) if isinstance(v, str) else v for v in items)
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise _invalid(source, value, "positive integers (one, or a non-empty list, e.g. [1, 2, 4, 8] or \"1,2,4,8\")")
    return tuple(sorted(set(sizes)))


def _capture_sizes(value: Any, source: str) -> tuple[int, ...] | None:
    return None if value is None else _positive_ints(value, source)


def _positive_int(value: Any, source: str) -> int:
    if isinstance(value, str) and "," in value or isinstance(value, (list, tuple)):
        raise _invalid(source, value, "one positive integer")
    return _positive_ints(value, source)[0]


def _pad_values(value: Any, source: str) -> tuple[tuple[str, float], ...]:
    """``{"input name": number}`` (or "name=value,..." as text)."""
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
        raise _invalid(source, value, "a mapping from input name to a number, e.g. {'slot_mapping': -1} "
                                      "or \"slot_mapping=-1\"")
    return tuple(sorted(value.items()))


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "executor": _choice(EXECUTORS),
    "strict": _bool,
    "dump_dir": _folder,
    "disable_passes": _pass_names,
    "graphs": _choice(GRAPHS),
    "capture_sizes": _capture_sizes,
    "max_capture_size": _positive_int,
    "pad_values": _pad_values,
    "clone_outputs": _bool,
}
assert set(_PARSERS) == _FIELD_NAMES, "every settings field needs a parser"
