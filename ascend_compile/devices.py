"""Every difference between CUDA GPUs, Ascend NPUs and the CPU lives here.

The rest of the package asks this module which kind of device a graph runs on, how many compute
units it has, which dispatch key its eager kernels register under and whether Triton kernels run
compiled or in Triton's interpreter.  Nothing outside this file (and the plans in
``kernels/plans.py``) branches on the device kind, so adding a backend means editing one file.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

DeviceKind = Literal["cuda", "npu", "cpu"]
DEVICE_KINDS: tuple[str, ...] = ("cuda", "npu", "cpu")


@dataclass(frozen=True)
class Device:
    """What the compiler needs to know about the device a graph runs on."""

    kind: DeviceKind
    index: int
    #: Streaming multiprocessors (CUDA), AI cores (NPU) or CPU cores: how wide a grid fills it.
    compute_units: int
    #: True when Triton kernels run in the interpreter (CPU tensors).
    triton_interpreted: bool

    @property
    def default_executor(self) -> str:
        """Inductor fuses what we do not rewrite; NPUs run the rewritten aten graph as is."""
        return "fx" if self.kind == "npu" else "inductor"


_DISPATCH_KEYS = {"cuda": "CUDA", "npu": "PrivateUse1", "cpu": "CPU"}


def dispatch_key(kind: str) -> str:
    """The dispatcher key eager-mode overrides register under for a device type."""
    if kind not in _DISPATCH_KEYS:
        raise ValueError(
            f"ascend_bi: device type {kind!r} is not supported; accepted device types: {', '.join(DEVICE_KINDS)}"
        )
    return _DISPATCH_KEYS[kind]


def _npu_available() -> bool:
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def configure_triton() -> None:
    """Run Triton kernels in the interpreter when the machine has no GPU or NPU.

    Triton decides between compiling and interpreting when a kernel is decorated, so this must run
    before ``ascend_compile.kernels`` imports any kernel.  An explicit ``TRITON_INTERPRET`` from
    the user always wins.
    """
    if "TRITON_INTERPRET" in os.environ:
        return
    if not torch.cuda.is_available() and not _npu_available():
        os.environ["TRITON_INTERPRET"] = "1"
        _reinterpret_triton_library()
        logger.info("no GPU or NPU found: Triton kernels run in the interpreter on the CPU")


def _reinterpret_triton_library() -> None:
    """Re-decorate Triton's own ``@triton.jit`` helpers (``tl.zeros``, ``tl.sum``, ...) as interpreted.

    torch imports ``triton.language`` before any backend is looked up, so by the time this runs
    those helpers were decorated for compilation and would refuse to run inside an interpreted
    kernel.  Reloading the two modules that define them re-decorates them under the interpreter.
    """
    import importlib
    import sys

    from triton.runtime.interpreter import InterpretedFunction

    language = sys.modules.get("triton.language")
    if language is None:
        return  # Triton not imported yet: it will decorate everything for the interpreter itself.
    for name in ("triton.language.standard", "triton.language.random"):
        module = importlib.reload(sys.modules[name])
        for attr, value in vars(module).items():
            if isinstance(value, InterpretedFunction) and hasattr(language, attr):
                setattr(language, attr, value)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _describe(kind: str, index: int) -> Device:
    if kind == "cuda":
        units = torch.cuda.get_device_properties(index).multi_processor_count
    elif kind == "npu":
        props = torch.npu.get_device_properties(index)
        units = int(getattr(props, "cube_core_num", 0) or getattr(props, "multi_processor_count", 1))
    else:
        units = os.cpu_count() or 1
    interpreted = kind == "cpu" or triton_interpreted()
    return Device(kind=kind, index=index, compute_units=units, triton_interpreted=interpreted)  # type: ignore[arg-type]


def of_tensor(t: torch.Tensor) -> Device:
    """The Device a tensor lives on."""
    kind = t.device.type
    if kind not in DEVICE_KINDS:
        raise ValueError(
            f"ascend_bi: tensors on device type {kind!r} are not supported; "
            f"accepted device types: {', '.join(DEVICE_KINDS)}"
        )
    return _describe(kind, t.device.index or 0)


def detect(example_inputs: Iterable[object]) -> Device:
    """The single device a graph's tensor inputs live on (CPU when it has none)."""
    devices = {of_tensor(t) for t in example_inputs if isinstance(t, torch.Tensor) and t.device.type != "meta"}
    accelerators = {d for d in devices if d.kind != "cpu"}
    if len(accelerators) > 1:
        raise ValueError(f"ascend_bi: a graph must run on one device, got inputs on {sorted(map(str, accelerators))}")
    if accelerators:
        return accelerators.pop()
    return _describe("cpu", 0)
