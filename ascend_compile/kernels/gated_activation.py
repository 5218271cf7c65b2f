"""A gated MLP's activation, ``act(gate) * up``, as torch decomposes it: in the matmul's epilogue or on its own.

``bi_matmul_gated`` computes ``act(a @ gate) * (a @ up)``.  At decode rows one launch computes a tile of both
products and combines them (``matmul.py``, ``GATED``); at prefill rows the two products run as one grouped
matmul, whose tiles can be as wide as a plain product's (a gated tile holds four fp32 accumulators, which
spill at the tiles prefill needs), and ``gated_activation`` combines them in a second, elementwise launch.

Both round where the unfused ops round -- each product and the activation to the dtype, the fp32 product of
the two on the store -- and both compute the activation with ``activation`` below, so the two paths give the
same bits (and Inductor's for the unfused ops).  The choice between them is a schedule
(``plans.gated_in_one_launch``).
"""

from __future__ import annotations

import types

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ascend_compile import devices
from ascend_compile.kernels.plans import launch_options
from ascend_compile.kernels.rounding import TL_DTYPES, round_to

#: ``bi_matmul_gated``'s activations, as the kernels' ``KIND`` values (``activation``).
GATED_ACTIVATIONS = {"silu": 1, "gelu_tanh": 2}
#: Elements one program of the elementwise launch combines.
_BLOCK = 2048


def _interpreted_tanh(x: tl.tensor) -> tl.tensor:
    """``tanh`` of a tile in Triton's interpreter, which has no libdevice: torch's, the CPU's
    ``aten.tanh`` that the decomposed GELU runs unfused."""
    from triton.runtime.interpreter import TensorHandle

    return tl.tensor(TensorHandle(torch.from_numpy(x.handle.data).tanh().numpy(), x.handle.dtype), x.type)


if devices.triton_interpreted():  # compiled kernels call the backend's libdevice.tanh, as Inductor's code does
    libdevice = types.SimpleNamespace(tanh=_interpreted_tanh)  # noqa: F811


@triton.jit
def activation(x, KIND: tl.constexpr):
    """A gated MLP's activation in fp32, op for op as torch decomposes it (so Inductor's bits):
    ``GATED_ACTIVATIONS["silu"]`` ``x / (1 + exp(-x))``; ``"gelu_tanh"`` (``approximate="tanh"``)
    ``x * 0.5 * (tanh((x + x**2 * x * 0.044715) * sqrt(2 / pi)) + 1)``."""
    if KIND == 1:
        return x / (1.0 + tl.exp(-x))
    inner = (x + x * x * x * 0.044715) * 0.7978845608028654
    return x * 0.5 * (libdevice.tanh(inner) + 1.0)


@triton.jit
def gate_times_up(gate, up, KIND: tl.constexpr, DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``act(gate) * up`` in fp32 from the two products rounded to ``DTYPE``; the caller's store rounds it."""
    return round_to(activation(gate, KIND), DTYPE, EMULATE_BF16) * up


@triton.jit
def _gated_activation_kernel(gate_ptr, up_ptr, out_ptr, numel, KIND: tl.constexpr, DTYPE: tl.constexpr,
                             EMULATE_BF16: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    out = gate_times_up(gate, up, KIND, DTYPE, EMULATE_BF16)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``act(gate) * up`` elementwise, in ``out_dtype``, for two contiguous products of one shape already rounded
    to it.  ``activation``: a ``GATED_ACTIVATIONS`` name.  Under the interpreter, whose casts to bf16 truncate,
    the kernel rounds by hand (``round_to``) and stores fp32, which torch rounds here."""
    if gate.shape != up.shape or not gate.is_contiguous() or not up.is_contiguous():
        raise ValueError(f"gated_activation takes two contiguous products of one shape, got {tuple(gate.shape)} "
                         f"and {tuple(up.shape)}")
    device = devices.of_tensor(gate)
    out = torch.empty(gate.shape, dtype=torch.float32 if device.triton_interpreted else out_dtype,
                      device=gate.device)
    if gate.numel():
        _gated_activation_kernel[(triton.cdiv(gate.numel(), _BLOCK),)](
            gate, up, out, gate.numel(), KIND=GATED_ACTIVATIONS[activation], DTYPE=TL_DTYPES[out_dtype],
            EMULATE_BF16=device.triton_interpreted and out_dtype == torch.bfloat16, BLOCK=_BLOCK,
            **launch_options(device, num_warps=4))
    return out.to(out_dtype)
