"""Overlapped launches: a kernel starts while the one before it finishes (Hopper and later).

A decode step is a chain of short kernels, each waiting for the last to drain before its own
programs are placed and start reading weights: a few microseconds per launch that no schedule
inside a kernel can win back.  Programmatic dependent launch (PDL, sm_90+) lets the next kernel
of the stream start early; it must then wait (``griddepcontrol.wait``) before it touches memory
the previous kernel writes or reads.  Our kernels that take ``OVERLAP`` do exactly that:

* before the wait, a matmul asks L2 for the lines of its B operand (the weight) it will read
  (``prefetch_rows``).  A prefetch only moves lines into L2, the GPU's point of coherence: a
  write the previous kernel makes to such a line still lands there, and the matmul reads the
  line only after the wait;
* a split matmul program of decode rows goes further and loads its chunk of the weight into
  registers (``preload_weight``), but only a parameter the graph never writes (``b_is_weight``):
  the only kernels that can still be running are ours, and none of them writes a parameter;
* ``wait_for_inputs`` then waits for the previous kernel (which itself waited for its own, so
  every earlier kernel is done) and lets the next kernel start.  A short kernel followed by a
  large one waits (``wait_for_previous``) and lets the next start only after its last store
  (``release_dependents``): the next kernel's programs, once placed, hold their SM slots while
  they wait, and at attention's size (hundreds of programs at batch 32) that cost more than the
  launch it hid (H200, docs/decisions/0005-overlapped-launches.md).  Releasing *before* the wait, so that a matmul's
  weight requests start two kernels back, measured slower for every kernel and for the norms and
  attention's fold launch alone, and gained nothing for the matmuls (H200, docs/decisions/0005-overlapped-launches.md);
  likely because the chain is bandwidth-bound there: requests issued early slow the kernel then
  running.

Nothing is written and nothing produced by another kernel is read before the wait, so results
(and bits) are those of serialized launches.  The launch option and the kernel flag always come
together from ``plans.launch_options(..., overlap=True)``; elsewhere (NPUs, the interpreter,
GPUs before sm_90, ``ASCEND_BI_OVERLAP_LAUNCHES=0``) kernels launch serialized.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:  # Triton's NVIDIA extras; absent from builds without them (triton-ascend)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - never reached where OVERLAP can be set
    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

#: Bytes one L2 prefetch brings in (a cache line).
PREFETCH_BYTES = 128


@triton.jit
def wait_for_previous():
    """Wait until the previous kernel of the stream is done; the next one launches at this one's
    ``release_dependents`` (or its end)."""
    gdc_wait()


@triton.jit
def release_dependents():
    """Let the next kernel of the stream start launching: for short kernels followed by a large
    one, whose programs would otherwise sit on the SMs waiting (``kernels/rope.py``)."""
    gdc_launch_dependents()


@triton.jit
def wait_for_inputs():
    """Wait until the previous kernel of the stream is done; let the next one start launching."""
    wait_for_previous()
    release_dependents()


@triton.jit
def _prefetch_l2(ptrs):
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_rows(base, rows, row_stride, start, stop, STEP: tl.constexpr):
    """Ask L2 for elements ``start:stop`` of each row ``base + rows * row_stride`` (unit stride
    along the row), one request per ``STEP`` elements (a cache line)."""
    for k in range(start, stop, STEP):
        _prefetch_l2(base + rows * row_stride + k)
