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
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
    #: Folder for graph dumps: every pass writes its graph before and after as ``.py`` plus a JSON
    #: summary per graph. Env: ``ASCEND_BI_DUMP_DIR``.
    dump_dir: str | None = None
    #: Passes to skip, by name (see ``ascend_compile.passes.PIPELINE``); for debugging only.
    disable_passes: tuple[str, ...] = ()

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
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"ascend_bi: {source} = {value!r} is not valid; accepted values: True, False")
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
    raise AssertionError(f"settings field {name} has no parser")
