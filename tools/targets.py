"""What ``ascend-bi dump`` and ``ascend-bi check`` run: a TARGET named on the command line.

A TARGET is one of

- a built-in model name (``tiny-decoder``), so that the tools work with nothing but this package;
- a Python file, ``path/to/file.py`` or ``path/to/file.py:function`` (default function ``target``);
- an importable ``module:function``, found from the working directory first (as ``python -m``,
  pytest and uvicorn find theirs).

The function takes no arguments and returns ``(model, example_inputs)``: an ``nn.Module`` (or any
callable) and a tuple of inputs whose tensors have the batch on one dim, 0 unless the caller says
otherwise (a single tensor is taken as a one-element tuple).  ``check`` builds its batches from
these inputs: row 0 is the probe and companions are drawn like the other rows.  Anything else is
a ``TargetError`` with one line that says what was expected, so the CLI can print it instead of a
traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_FUNCTION = "target"


class TargetError(ValueError):
    """A TARGET that cannot be loaded; the message is one line meant for the user."""


@dataclass(frozen=True)
class Target:
    name: str
    model: Callable[..., Any]
    example_inputs: tuple[Any, ...]
    #: The dim of every input (and output) tensor that holds the batch.
    batch_dim: int = 0


def _tiny_decoder() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from ascend_compile.tools.models import tiny_decoder

    model = tiny_decoder()
    # One token per sequence: the matmuls run at M = batch size, the decode shapes where stock
    # kernels change their summation order with the batch (as in ``ascend-bi demo``).
    tokens = torch.randint(0, model.cfg.vocab, (2, 1), generator=torch.Generator().manual_seed(0))
    return model, (tokens,)


#: Built-in targets by name: models shipped with the package, random weights, no downloads.
BUILTINS: dict[str, Callable[[], tuple[Any, Any]]] = {"tiny-decoder": _tiny_decoder}


def _from_file(path: str, function: str) -> Callable[[], Any]:
    if not os.path.isfile(path):
        raise TargetError(f"no such file: {path}")
    module_name = f"_ascend_bi_target_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise TargetError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return _function(module, function, path)


def _from_module(module_name: str, function: str) -> Callable[[], Any]:
    if os.getcwd() not in sys.path:  # a console script's sys.path lacks the working directory
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise TargetError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from e
    return _function(module, function, module_name)


def _function(module: object, function: str, where: str) -> Callable[[], Any]:
    fn = getattr(module, function, None)
    if not callable(fn):
        raise TargetError(f"{where} has no function {function!r} returning (model, example_inputs)")
    return fn


def _resolve(spec: str) -> Callable[[], Any]:
    if spec in BUILTINS:
        return BUILTINS[spec]
    path, _, function = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if path.endswith(".py") or os.path.sep in path:
        return _from_file(path, function or DEFAULT_FUNCTION)
    if function:
        return _from_module(path, function)
    raise TargetError(
        f"unknown target {spec!r}; accepted: a built-in model ({', '.join(BUILTINS)}), "
        f"a Python file (file.py or file.py:function, default function {DEFAULT_FUNCTION!r}) or module:function"
    )


def load_target(spec: str, batch_dim: int = 0) -> Target:
    """Load TARGET, whose input tensors have the batch on ``batch_dim``; raises ``TargetError``
    (one line) when it cannot be used."""
    fn = _resolve(spec)
    try:
        result = fn()
    except Exception as e:
        raise TargetError(f"target {spec!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(result, tuple) or len(result) != 2:
        raise TargetError(f"target {spec!r} must return (model, example_inputs), got {type(result).__name__}")
    model, inputs = result
    if not callable(model):
        raise TargetError(f"target {spec!r}: the model is not callable ({type(model).__name__})")
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not isinstance(inputs, (tuple, list)) or not any(isinstance(t, torch.Tensor) for t in inputs):
        raise TargetError(f"target {spec!r}: example_inputs must be a tensor or a tuple holding tensors")
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    if any(t.dim() <= batch_dim for t in tensors):
        raise TargetError(f"target {spec!r}: every example input tensor needs the batch on dim {batch_dim}, but "
                          f"some have only {min(t.dim() for t in tensors)} dims")
    batches = {t.shape[batch_dim] for t in tensors}
    if len(batches) != 1:
        raise TargetError(f"target {spec!r}: every example input tensor needs the batch on dim {batch_dim}, "
                          f"with one batch size (got dim-{batch_dim} sizes {sorted(batches)})")
    if isinstance(model, torch.nn.Module):
        model.eval()
    return Target(name=spec, model=model, example_inputs=tuple(inputs), batch_dim=batch_dim)
