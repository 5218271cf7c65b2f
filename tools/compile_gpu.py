"""Compile the template kernels for an NVIDIA GPU on a machine without one: no launch, no results.

Triton's interpreter runs a kernel as Python, so it accepts code the GPU compiler rejects (two
``return`` statements of different shapes under a ``tl.constexpr`` branch, say) and never runs the
GPU-only branches (PDL waits, pipelined mask tiles, the split schedules' launch options).  This
tool runs each kernel's real host wrapper at Qwen3-0.6B shapes -- decode at batch 1, 8 and 32,
and a prefill -- with CPU tensors standing in for GPU ones and ``devices.of_tensor`` answering for
an H100/H200 (132 SMs, overlapped launches), so the wrappers pick the GPU's plans and schedules.
Each launch is compiled by ``triton.compile`` for the target instead (frontend, GPU passes,
ptxas); outputs stay uninitialized.  The arguments are not specialized as a launch specializes
them (pointers and integers divisible by 16, unit strides as constants), so the build checks that
the code compiles, not what the launched kernel looks like: without those facts Triton's
pipeliner issues no asynchronous copies, and register counts may differ.

Usage: ``TRITON_INTERPRET=0 python -m ascend_compile.tools.compile_gpu [--arch 90]``.  Exit 0 when
every kernel compiled, 1 on the first compile error (printed), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from ascend_compile import devices

logger = logging.getLogger(__name__)

#: Triton's signature names of the pointer types the wrappers pass.
_POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
                  torch.int64: "*i64", torch.bool: "*i1", torch.int8: "*i8"}
_OPTIONS = ("num_warps", "num_stages", "launch_pdl", "enable_fp_fusion")


def signature(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Triton's (signature, constexprs) for a launch of JIT function ``fn`` with these arguments."""
    values = dict(zip((p.name for p in fn.params[:len(args)]), args, strict=True))
    values.update(kwargs)
    types: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for param in fn.params:
        value = values[param.name] if param.name in values else param.default
        if param.is_constexpr:
            types[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            types[param.name] = _POINTER_TYPES[value.dtype]
        elif isinstance(value, bool):
            types[param.name] = "i1"
        elif isinstance(value, int):
            types[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            types[param.name] = "fp32"
        else:
            raise TypeError(f"compile_gpu: argument {param.name} of {fn.__name__} is a {type(value).__name__}")
    return types, constexprs


@contextlib.contextmanager
def compile_only(arch: int, compiled: list[str]) -> Iterator[None]:
    """Within this block CPU tensors plan as a GPU of compute capability ``arch`` and every Triton
    launch is compiled for it instead of run (the kernel's name appended to ``compiled``)."""
    import triton
    import triton.runtime.jit as jit
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if devices.triton_interpreted():
        raise RuntimeError("compile_gpu needs compiled Triton kernels: run it with TRITON_INTERPRET=0")
    gpu = devices.Device(kind="cuda", index=0, compute_units=132, triton_interpreted=False,
                         overlapped_launches=arch >= 90)
    target = GPUTarget("cuda", arch, 32)

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTIONS}
        types, constexprs = signature(self, args, kwargs)
        triton.compile(ASTSource(self, types, constexprs), target=target, options=options)
        compiled.append(self.__name__)
        logger.info("compiled %s for sm_%d", self.__name__, arch)

    saved_run, saved_of_tensor = jit.JITFunction.run, devices.of_tensor
    jit.JITFunction.run, devices.of_tensor = run, lambda t: gpu
    try:
        yield
    finally:
        jit.JITFunction.run, devices.of_tensor = saved_run, saved_of_tensor


def qwen3_launches() -> list[tuple[str, Callable[[], object]]]:
    """The template kernels a Qwen3-0.6B step launches (and the vocabulary's softmax) at its shapes:
    decode at batch 1, 8 and 32, then a prefill of 512 tokens at batch 2."""
    from ascend_compile.kernels.attention import bi_attention
    from ascend_compile.kernels.matmul import bi_matmul, bi_matmul_group, bi_matmul_silu_mul
    from ascend_compile.kernels.rms_norm import bi_rms_norm, bi_rms_norm_pair
    from ascend_compile.kernels.rope import bi_rms_norm_rope
    from ascend_compile.kernels.rope_attention import bi_rope_attention
    from ascend_compile.kernels.softmax import bi_softmax

    bf, hidden, inter, heads, kv_heads, dim, slots = torch.bfloat16, 1024, 3072, 16, 8, 128, 520

    def t(*shape: int, dtype: torch.dtype = bf) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def w(k: int, n: int) -> torch.Tensor:  # a Linear weight as the graph hands it over: (out, in) transposed
        return t(n, k).t()

    gate_up = w(hidden, 2 * inter)
    launches: list[tuple[str, Callable[[], object]]] = [("softmax over the vocabulary", partial(bi_softmax,
                                                                                                 t(8, 151936), -1))]
    for batch, length in ((1, 1), (8, 1), (32, 1), (2, 512)):
        rows, name = batch * length, f"batch {batch} x {length}"
        caches, index = (t(batch, kv_heads, slots, dim), t(batch, kv_heads, slots, dim)), t(1, dtype=torch.int64)
        q, k = t(batch, length, heads, dim), t(batch, length, kv_heads, dim)
        rope = ((t(dim), t(dim)), (1e-6, 1e-6), t(batch, length, dim), t(batch, length, dim))
        heads_qk = t(2, rows * heads, dim)  # the query and key norms' rows, one buffer as in a layer
        launches += [
            (f"rms_norm, {name}", partial(bi_rms_norm, t(rows, hidden), t(rows, hidden), t(hidden), 1e-6)),
            (f"query/key norms, {name}", partial(bi_rms_norm_pair, [heads_qk[0], heads_qk[1]], [t(dim), t(dim)],
                                                 [1e-6, 1e-6])),
            (f"query/key/value, {name}", partial(bi_matmul_group, t(rows, hidden),
                                                 [w(hidden, heads * dim), w(hidden, kv_heads * dim),
                                                  w(hidden, kv_heads * dim)])),
            (f"o projection, {name}", partial(bi_matmul, t(rows, heads * dim), w(heads * dim, hidden),
                                              b_is_weight=True)),
            (f"gate/up, {name}", partial(bi_matmul_silu_mul, t(rows, hidden), gate_up[:, :inter], gate_up[:, inter:])),
            (f"down, {name}", partial(bi_matmul, t(rows, inter), w(inter, hidden), b_is_weight=True)),
            (f"norm + rope + cache, {name}", partial(bi_rms_norm_rope, q, k, *rope, cache=(k, *caches, index),
                                                     append=True)),
            (f"rope + attention, {name}", partial(bi_rope_attention, q, k, k, *rope, *caches, index, append=True,
                                                  mask=torch.ones(batch, 1, length, slots, dtype=torch.bool),
                                                  heads_inner=True)),
            (f"attention, additive mask, {name}", partial(bi_attention, t(batch, heads, length, dim), *caches,
                                                          t(batch, 1, length, slots))),
            (f"attention, causal, {name}", partial(bi_attention, t(batch, heads, length, dim), *caches,
                                                   is_causal=True)),
        ]
    return launches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ascend_compile.tools.compile_gpu",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    compiled: list[str] = []
    with compile_only(args.arch, compiled):
        for name, launch in qwen3_launches():
            try:
                launch()
            except Exception as error:  # the compiler's message is the result
                print(f"FAILED {name}: {error}", file=sys.stderr)
                return 1
            print(f"ok {name}")
    print(f"{len(compiled)} launches compiled for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
