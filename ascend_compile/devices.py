"""Every difference between CUDA GPUs, Ascend NPUs and the CPU lives here.

The rest of the package asks this module which kind of device a graph runs on, how many compute
units it has, which dispatch key its eager kernels register under and whether Triton kernels run
compiled or in Triton's interpreter.  Nothing outside this file (and the plans in
``kernels/plans.py``) branches on the device kind, so adding a backend means editing one file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

DeviceKind = Literal["cuda", "npu", "cpu"]
DEVICE_KINDS: tuple[str, ...] = ("cuda", "npu", "cpu")

#: Unified Buffer of one Ascend A2/A3 vector core: triton-ascend reports "1572864 bits available".
NPU_UB_BYTES = 192 * 1024
#: Overrides the Unified Buffer capacity plans size NPU tiles for (bytes; read once per device).
UB_BYTES_ENV = "ASCEND_BI_NPU_UB_BYTES"
#: Set to 1 to give CPU tensors the NPU's plans and schedules (see ``simulate_npu``).
SIMULATE_NPU_ENV = "ASCEND_BI_SIMULATE_NPU"
#: Set to 0 to launch every kernel serialized on GPUs that could overlap launches (read once per device).
OVERLAP_LAUNCHES_ENV = "ASCEND_BI_OVERLAP_LAUNCHES"
#: Set to 1 to have prefill matmuls of sm_90 GPUs run the Gluon kernel (``kernels/matmul_wgmma.py``) by
#: default; 0, the default until its speed is measured, leaves it to schedules that ask (read once per device).
GLUON_MATMUL_ENV = "ASCEND_BI_GLUON_MATMUL"


@dataclass(frozen=True)
class NpuFacts:
    """What NPU plans size their tiles and grids for."""

    #: AI cores (one cube unit each): programs of kernels that use ``tl.dot``.
    ai_cores: int
    #: Vector cores (two per AI core on A2/A3): programs of pure vector kernels.
    vector_cores: int
    #: Unified Buffer capacity of one core in bytes.
    ub_bytes: int
    #: triton-ascend double-buffers loads by default ("multibuffer"), which doubles their UB bytes.
    multibuffer: bool = True


@dataclass(frozen=True)
class Device:
    """What the compiler needs to know about the device a graph runs on."""

    kind: DeviceKind
    index: int
    #: Streaming multiprocessors (CUDA), AI cores (NPU) or CPU cores: how wide a grid fills it.
    compute_units: int
    #: True when Triton kernels run in the interpreter (CPU tensors).
    triton_interpreted: bool
    #: Set on NPUs, and on CPU tensors under ``simulate_npu``: kernels then use the NPU's plans.
    npu: NpuFacts | None = None
    #: Kernels may start while the previous one finishes (programmatic dependent launch: compiled
    #: Triton on sm_90+, unless ``ASCEND_BI_OVERLAP_LAUNCHES=0``; ``kernels/overlap.py``).
    overlapped_launches: bool = False
    #: Matmul tiles may be loaded by the tensor memory accelerator from descriptors (compiled Triton on
    #: sm_90+ with ``triton.tools.tensor_descriptor``; ``kernels/matmul.py``).
    tma_loads: bool = False
    #: Serial matmul tiles may run the Gluon kernel of ``kernels/matmul_wgmma.py`` (``MatmulSchedule.gluon_wgmma``):
    #: compiled Triton on compute capability 9.x (``wgmma`` is sm_90's alone) with Gluon's Hopper module.
    gluon_wgmma: bool = False
    #: Prefill schedules choose that kernel (``ASCEND_BI_GLUON_MATMUL=1``, where the device has it).
    gluon_wgmma_default: bool = False

    @property
    def default_executor(self) -> str:
        """Inductor fuses what we do not rewrite; NPUs run the rewritten aten graph as is."""
        return "fx" if self.kind == "npu" else "inductor"

    @property
    def plan_kind(self) -> DeviceKind:
        """Whose plans and schedules kernels use: the NPU's wherever NPU facts are known."""
        return "npu" if self.npu is not None else self.kind


_DISPATCH_KEYS = {"cuda": "CUDA", "npu": "PrivateUse1", "cpu": "CPU"}


def dispatch_key(kind: str) -> str:
    """The dispatcher key eager-mode overrides register under for a device type."""
    if kind not in _DISPATCH_KEYS:
        raise ValueError(
            f"ascend_bi: device type {kind!r} is not supported; accepted device types: {', '.join(DEVICE_KINDS)}"
        )
    return _DISPATCH_KEYS[kind]


def npu_available() -> bool:
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def present_kinds() -> tuple[str, ...]:
    """The device types this machine has, accelerators first (the CPU always)."""
    return tuple(k for k, here in (("cuda", torch.cuda.is_available()), ("npu", npu_available()), ("cpu", True))
                 if here)


def configure_triton() -> None:
    """Run Triton kernels in the interpreter when the machine has no GPU or NPU.

    Triton decides between compiling and interpreting when a kernel is decorated, so this must run
    before ``ascend_compile.kernels`` imports any kernel.  An explicit ``TRITON_INTERPRET`` from
    the user always wins.
    """
    if "TRITON_INTERPRET" in os.environ:
        return
    if not torch.cuda.is_available() and not npu_available():
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


def ub_capacity(env: dict[str, str] | None = None) -> int:
    """The Unified Buffer bytes NPU plans fill: ``ASCEND_BI_NPU_UB_BYTES`` or 192 KiB (A2/A3)."""
    raw = (os.environ if env is None else env).get(UB_BYTES_ENV, "")
    if not raw:
        return NPU_UB_BYTES
    if not raw.isdigit() or int(raw) < 16 * 1024:
        raise ValueError(f"ascend_bi: {UB_BYTES_ENV}={raw!r} is not accepted; give the Unified Buffer size "
                         f"in bytes as an integer of at least 16384 (A2/A3: {NPU_UB_BYTES})")
    return int(raw)


def _npu_core_counts(index: int) -> tuple[int, int]:
    """(AI cores, vector cores): torch_npu's device properties, else triton-ascend's driver."""
    props = torch.npu.get_device_properties(index)
    ai, vector = int(getattr(props, "cube_core_num", 0) or 0), int(getattr(props, "vector_core_num", 0) or 0)
    if ai > 0 and vector > 0:
        return ai, vector
    import triton

    driver_props = triton.runtime.driver.active.utils.get_device_properties(index)
    ai, vector = int(driver_props.get("num_aicore", 0)), int(driver_props.get("num_vectorcore", 0))
    if ai > 0 and vector > 0:
        return ai, vector
    raise RuntimeError(
        f"ascend_bi: npu:{index} reports no core counts (torch_npu device properties cube_core_num/"
        "vector_core_num and triton-ascend's num_aicore/num_vectorcore are missing or 0); NPU grids are "
        "sized from them. Check the CANN, torch-npu and triton-ascend versions (docs/ASCEND.md)."
    )


@functools.cache
def _describe(kind: str, index: int) -> Device:
    npu = None
    if kind == "cuda":
        units = torch.cuda.get_device_properties(index).multi_processor_count
    elif kind == "npu":
        ai, vector = _npu_core_counts(index)
        npu = NpuFacts(ai_cores=ai, vector_cores=vector, ub_bytes=ub_capacity())
        units = ai
        logger.info("npu:%d: %d AI cores, %d vector cores, %d UB bytes planned for", index, ai, vector, npu.ub_bytes)
    else:
        units = os.cpu_count() or 1
    interpreted = kind == "cpu" or triton_interpreted()
    overlapped = kind == "cuda" and not interpreted and _overlaps_launches(index)
    tma = kind == "cuda" and not interpreted and _has_tma(index)
    chosen = kind == "cuda" and not interpreted and gluon_matmul_chosen()  # a bad value raises on every GPU
    wgmma = tma and torch.cuda.get_device_capability(index)[0] == 9 and has_gluon_wgmma()
    return Device(kind=kind, index=index, compute_units=units, triton_interpreted=interpreted,  # type: ignore[arg-type]
                  npu=npu, overlapped_launches=overlapped, tma_loads=tma, gluon_wgmma=wgmma,
                  gluon_wgmma_default=wgmma and chosen)


def _has_tma(index: int) -> bool:
    """The tensor memory accelerator: sm_90+ and a Triton with host-built tensor descriptors."""
    if torch.cuda.get_device_capability(index) < (9, 0):
        return False
    return importlib.util.find_spec("triton.tools.tensor_descriptor") is not None


def has_gluon_wgmma() -> bool:
    """Whether this Triton has Gluon's Hopper modules (``wgmma``, TMA and mbarriers in kernels, tensor
    descriptors on the host; Triton 3.6 on)."""
    return all(importlib.util.find_spec(name) is not None for name in (
        "triton.experimental.gluon.language.nvidia.hopper", "triton.experimental.gluon.nvidia.hopper"))


def gluon_matmul_chosen() -> bool:
    """Whether ``ASCEND_BI_GLUON_MATMUL`` asks prefill schedules for the Gluon matmul (default 0: no)."""
    raw = os.environ.get(GLUON_MATMUL_ENV, "0")
    if raw not in ("0", "1"):
        raise ValueError(f"ascend_bi: {GLUON_MATMUL_ENV}={raw!r} is not accepted; use 1 (prefill matmuls of sm_90 "
                         "GPUs run the Gluon kernel) or 0 (the Triton template, the default)")
    return raw == "1"


def _overlaps_launches(index: int) -> bool:
    """Programmatic dependent launch: sm_90+, a Triton with ``launch_pdl``, not turned off."""
    raw = os.environ.get(OVERLAP_LAUNCHES_ENV, "1")
    if raw not in ("0", "1"):
        raise ValueError(f"ascend_bi: {OVERLAP_LAUNCHES_ENV}={raw!r} is not accepted; use 1 (overlap kernel "
                         "launches where the GPU can, the default) or 0 (serialized launches)")
    if raw == "0" or torch.cuda.get_device_capability(index) < (9, 0):
        return False
    from triton.backends.nvidia.compiler import CUDAOptions

    if not hasattr(CUDAOptions, "launch_pdl"):
        logger.info("cuda:%d could overlap kernel launches, but this Triton has no launch_pdl", index)
        return False
    logger.info("cuda:%d: template kernels launch overlapped (programmatic dependent launch; %s=0 turns it off)",
                index, OVERLAP_LAUNCHES_ENV)
    return True


#: The NPU a simulated run plans for: an Atlas A2 with 24 AI cores and 48 vector cores.
_SIMULATED_CORES = (24, 48)
_simulating = 0


@contextlib.contextmanager
def simulate_npu() -> Iterator[None]:
    """Within this block CPU tensors use the NPU's plans and schedules (UB-sized tiles, 1-D grids
    of core-count programs with in-kernel loops), still run by Triton's interpreter.

    For tests of the NPU path on machines without one; ``ASCEND_BI_SIMULATE_NPU=1`` does the same
    for a whole process.  Only kernels see it: graphs still compile for the CPU.
    """
    global _simulating
    _simulating += 1
    try:
        yield
    finally:
        _simulating -= 1


@functools.cache
def _simulated_npu(ub_bytes: int) -> Device:
    ai, vector = _SIMULATED_CORES
    return Device(kind="cpu", index=0, compute_units=os.cpu_count() or 1, triton_interpreted=True,
                  npu=NpuFacts(ai_cores=ai, vector_cores=vector, ub_bytes=ub_bytes))


def simulating_npu() -> bool:
    """Whether CPU tensors take NPU plans now (``simulate_npu`` or ``ASCEND_BI_SIMULATE_NPU=1``)."""
    return _simulating > 0 or os.environ.get(SIMULATE_NPU_ENV, "0") not in ("", "0")


def of_tensor(t: torch.Tensor) -> Device:
    """The Device a tensor lives on."""
    kind = t.device.type
    if kind not in DEVICE_KINDS:
        raise ValueError(
            f"ascend_bi: tensors on device type {kind!r} are not supported; "
            f"accepted device types: {', '.join(DEVICE_KINDS)}"
        )
    if kind == "cpu" and simulating_npu():
        return _simulated_npu(ub_capacity())
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


#: Collective settings for deterministic HCCL/LCCL reductions ("strict": CANN's order-preserving
#: mode, one reduction order in every bit), as vllm-ascend's batch-invariant mode sets them.
COLLECTIVE_DETERMINISM: dict[str, str] = {"HCCL_DETERMINISTIC": "strict", "LCCL_DETERMINISTIC": "1"}


def configure_collectives(device: Device, world_size: int) -> dict[str, str]:
    """Deterministic HCCL/LCCL reductions when tensor parallelism spans NPUs; returns what is in force.

    HCCL and LCCL read these variables when a communicator is created, so this must run before
    ``torch.distributed`` (or vLLM) creates one.  Nothing happens on other devices or on one rank.
    """
    if device.kind != "npu" or world_size <= 1:
        return {}
    return set_collective_determinism(f"tensor parallelism over {world_size} NPUs")


def set_collective_determinism(reason: str) -> dict[str, str]:
    """Set ``COLLECTIVE_DETERMINISM`` in the environment; a value the user set is kept, with a
    warning when it differs.  Returns what is in force."""
    for name, wanted in COLLECTIVE_DETERMINISM.items():
        current = os.environ.get(name)
        if current is None:
            os.environ[name] = wanted
            logger.info("ascend_bi: %s: set %s=%s", reason, name, wanted)
        elif current != wanted:
            logger.warning("ascend_bi: %s=%s (set by the user) is kept; batch-invariant all-reduce needs %s=%s",
                           name, current, name, wanted)
    return {name: os.environ[name] for name in COLLECTIVE_DETERMINISM}


@dataclass(frozen=True)
class GraphApi:
    """Device-graph capture for one device kind: CUDA graphs on GPUs, NPU (ACL) graphs on Ascend.

    Both expose the same calls under different modules (``torch.cuda`` / ``torch.npu``): a graph
    class, a ``graph(g, pool=, stream=)`` capture context, pool handles and streams.
    """

    kind: str
    module: Any
    graph_class: type

    def new_graph(self) -> Any:
        return self.graph_class()

    def capture(self, graph: Any, pool: Any, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return self.module.graph(graph, pool=pool, stream=stream)

    def pool(self) -> Any:
        return self.module.graph_pool_handle()

    def side_stream(self) -> Any:
        """A stream for warm-up and capture, ordered after the current one."""
        stream = self.module.Stream()
        stream.wait_stream(self.module.current_stream())
        return stream

    def on(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return self.module.stream(stream)

    def join(self, stream: Any) -> None:
        """Make the current stream wait for ``stream``."""
        self.module.current_stream().wait_stream(stream)

    def synchronize(self) -> None:
        self.module.synchronize()

    def memory_allocated(self) -> int:
        return int(self.module.memory_allocated())


def graph_api(kind: str) -> GraphApi | None:
    """How to capture device graphs on ``kind`` devices; None where there are none (the CPU)."""
    if kind == "cuda":
        return GraphApi("cuda", torch.cuda, torch.cuda.CUDAGraph)
    if kind == "npu":
        import torch_npu  # noqa: F401  (adds torch.npu)

        return GraphApi("npu", torch.npu, torch.npu.NPUGraph)
    return None
