"""Eager batch-invariant mode: the ascend_bi templates installed over aten's own kernels.

Inside ``with ascend_compile.eager_mode():`` every ``aten.mm``/``addmm``/``bmm`` on the chosen
device runs the batch-invariant template (``nn.Linear`` and ``torch.matmul`` reach these ops
too), and so do ``aten.mean.dim`` (RMSNorm), ``aten._softmax`` and ``aten._log_softmax`` -- the
ops vLLM's batch-invariant mode overrides.  (``sum`` stays: integer sums must keep working, and
an override cannot fall back to the kernel it replaced.)  Nothing is compiled: this is the
"eager batch-invariant" baseline compiled mode is measured against.  Overrides register on the
device's dispatch key through
``torch.library.Library("aten", "IMPL")`` and are removed on exit.

The original kernel is replaced, not wrapped, so a call the template cannot take (integer or
float64 dtypes) raises a clear error instead of silently running a non-invariant kernel.  Asking
for a device the machine does not have is an error, and a block in which no overridden op ran on
the chosen device (its tensors were elsewhere) ends with a warning: either would otherwise leave
the model silently non-invariant.  Nothing is compiled, so ``ascend_compile.reports()`` gets no entry.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ascend_compile import devices
from ascend_compile.kernels.matmul import bi_matmul
from ascend_compile.kernels.plans import FLOAT_DTYPES
from ascend_compile.kernels.reduce import bi_sum
from ascend_compile.kernels.softmax import bi_softmax

logger = logging.getLogger(__name__)


def _check(op: str, *tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    if dtype not in FLOAT_DTYPES or any(t.dtype != dtype for t in tensors):
        accepted = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise TypeError(
            f"ascend_bi eager mode: aten.{op} on dtypes {[str(t.dtype) for t in tensors]} has no batch-invariant "
            f"kernel; accepted: one of {accepted} for all operands. Leave eager_mode() for this call."
        )


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check("mm", a, b)
    return bi_matmul(a, b)


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    _check("addmm", bias, a, b)
    if beta == 1 and alpha == 1:
        return bi_matmul(a, b, bias)
    # Scaling is elementwise: it cannot make a row depend on its batch.
    product = bi_matmul(a, b) * alpha
    return product if beta == 0 else product + bias * beta


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check("bmm", a, b)
    return bi_matmul(a, b)


def _mean(x: torch.Tensor, dim: list[int] | None, keepdim: bool = False, *,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    _check("mean.dim", x)
    return bi_sum(x, dim, keepdim, dtype, mean=True)


def _softmax_override(log: bool):
    def softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
        _check("_log_softmax" if log else "_softmax", x)
        if half_to_float:
            raise TypeError("ascend_bi eager mode: softmax with half_to_float=True is not supported; "
                            "upcast the input to float32 first")
        return bi_softmax(x, dim, log=log)

    return softmax


_OVERRIDES: dict[str, Callable[..., torch.Tensor]] = {
    "mm": _mm, "addmm": _addmm, "bmm": _bmm, "mean.dim": _mean,
    "_softmax": _softmax_override(log=False), "_log_softmax": _softmax_override(log=True),
}


def _counted(kernel: Callable[..., torch.Tensor], calls: list[int]) -> Callable[..., torch.Tensor]:
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return kernel(*args, **kwargs)

    return run


@contextmanager
def eager_mode(device: str | torch.device | None = None, *, warn_unused: bool = True) -> Iterator[None]:
    """Run aten matmuls, means and softmaxes on ``device``'s type batch-invariantly until the block exits.

    ``device`` defaults to the machine's accelerator (CUDA, then NPU), else the CPU.  A device type
    the machine does not have raises ``RuntimeError``; a block in which no overridden op ran on it
    warns when it ends (``warn_unused=False``: for callers whose blocks may legitimately run none)."""
    kind = torch.device(device).type if device is not None else devices.present_kinds()[0]
    key = devices.dispatch_key(kind)
    if kind not in devices.present_kinds():
        raise RuntimeError(f"ascend_bi eager mode: this machine has no {kind!r} device; "
                           f"present device types: {', '.join(devices.present_kinds())}")
    calls = [0]
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        # torch warns that a registered kernel is being overridden: that is the point of this mode.
        warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
        warnings.filterwarnings("ignore", message=".*Warning only once for all operators.*")
        for op, kernel in _OVERRIDES.items():
            library.impl(op, _counted(kernel, calls), key)
    logger.info("ascend_bi eager mode on for %s (aten %s)", kind, ", ".join(_OVERRIDES))
    try:
        yield
    finally:
        library._destroy()
        logger.info("ascend_bi eager mode off for %s: %d overridden calls ran", kind, calls[0])
    if warn_unused and not calls[0]:
        warnings.warn(f"ascend_bi eager mode ({kind}): no aten {', '.join(_OVERRIDES)} ran on {kind} inside the "
                      f"block, so nothing in it was made batch-invariant; are the model and inputs on another "
                      f"device? (present device types: {', '.join(devices.present_kinds())})", stacklevel=3)
