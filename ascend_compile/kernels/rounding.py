"""Eager's rounding between two ops, inside one kernel.

A fused kernel that stands for several eager ops rounds its fp32 intermediates to the tensor
dtype where eager would have stored them, so fusing changes the launch count, not the values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: torch dtype -> Triton dtype, for the ``DTYPE`` a kernel rounds to.
TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def round_to(x, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``x`` (fp32) rounded to ``DTYPE`` and back."""
    if EMULATE_BF16:  # the interpreter's fp32 -> bf16 cast truncates: round to nearest even by hand
        bits = x.to(tl.int32, bitcast=True)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return x.to(DTYPE).to(tl.float32)
