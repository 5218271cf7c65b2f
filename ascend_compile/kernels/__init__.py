"""Triton kernel families, one per file; ``plans.py`` chooses their reduction plans.

Importing this package first tells Triton whether to compile or interpret (``devices``), because
Triton makes that choice when each kernel is decorated.  torch imports ``triton.language``
before any backend runs, so Triton's own ``@triton.jit`` helpers (``tl.cdiv``, ``tl.sum``,
``tl.max``, ...) stay compiled-only and fail in the interpreter: kernels here use Triton's
builtins (``tl.reduce``, ``tl.dot``, ``tl.load``, ...) and helpers of this package only.
"""

from ascend_compile import devices

devices.configure_triton()
