"""Compile the template kernels for an NVIDIA GPU on a machine without one: no launch, no results.

Triton's interpreter runs a kernel as Python, so it accepts code the GPU compiler rejects (two
``return`` statements of different shapes under a ``tl.constexpr`` branch, say) and never runs the
GPU-only branches (PDL waits, pipelined mask tiles, the split schedules' launch options).  This
tool runs each kernel's real host wrapper at Qwen3-0.6B shapes -- decode at batch 1, 8 and 32,
and a prefill -- with CPU tensors standing in for GPU ones and ``devices.of_tensor`` answering for
an H100/H200 (132 SMs, overlapped launches), so the wrappers pick the GPU's plans and schedules.
Each launch is compiled by ``triton.compile`` for the target instead (frontend, GPU passes,
ptxas), specialized on the arguments as a launch specializes them (``launch_source``), so the
build is the one a launch makes; outputs stay uninitialized.

Usage: ``TRITON_INTERPRET=0 python -m ascend_compile.tools.compile_gpu [--arch 90] [--only TEXT]
[--report] [--ptx DIR]``; ``--report`` adds a table of what each build waits on (``kernel_facts.py``);
``--ptx`` writes each build's PTX without comments and debug lines, one file per launch and kernel,
so that two trees' builds can be compared with ``diff -r``: a kernel refactor whose PTX is unchanged
keeps its speed, which a machine without a GPU can show.  Builds differ between Triton versions (0033: one
version squared a whole row in every thread where the other did not): to see the build a GPU machine makes,
install its Triton into a folder of its own (``pip install --target DIR triton==X``) and put that folder
first on ``PYTHONPATH``.  Exit 0 when every kernel compiled, 1 on the first compile error (printed), 2 on
usage errors.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import pathlib
import re
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from ascend_compile import devices
from ascend_compile.tools.kernel_facts import TABLE_HEADER, default_ptxas, kernel_facts

logger = logging.getLogger(__name__)

def launch_source(fn: Any, backend: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The ``ASTSource`` and compile options a launch of JIT function ``fn`` with these arguments
    compiles, specialized by Triton's own binder as the launch would be: pointers and integers
    divisible by 16 marked so, integers equal to 1 made constants.  Without those facts Triton
    cannot prove loads aligned and contiguous, and its pipeliner issues no asynchronous copies.
    The binder is Triton's internal ``create_function_from_signature`` and ``JITFunction._pack_args``
    (the same in Triton 3.6 and 3.9: ``tests/test_compile_gpu.py`` passed with both)."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, types, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    if fn.is_gluon():  # a Gluon kernel (``matmul_wgmma.py``) compiles from its own kind of source
        from triton.experimental.gluon._runtime import GluonASTSource

        return GluonASTSource(fn, types, constexprs, attrs), options.__dict__
    return ASTSource(fn, types, constexprs, attrs), options.__dict__


@contextlib.contextmanager
def compile_only(arch: int, compiled: list[Any]) -> Iterator[None]:
    """Within this block CPU tensors plan as a GPU of compute capability ``arch`` and every Triton
    launch is compiled for it instead of run (the compiled kernel appended to ``compiled``)."""
    import triton
    import triton.runtime.jit as jit
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    if devices.triton_interpreted():
        raise RuntimeError("compile_gpu needs compiled Triton kernels: run it with TRITON_INTERPRET=0")
    gpu = devices.Device(kind="cuda", index=0, compute_units=132, triton_interpreted=False,
                         overlapped_launches=arch >= 90, gluon_wgmma=arch // 10 == 9 and devices.has_gluon_wgmma())
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        source, options = launch_source(self, backend, args, kwargs)
        compiled.append(triton.compile(source, target=target, options=options))
        logger.info("compiled %s for sm_%d", self.__name__, arch)

    saved_run, saved_of_tensor = jit.JITFunction.run, devices.of_tensor
    jit.JITFunction.run, devices.of_tensor = run, lambda t: gpu
    try:
        yield
    finally:
        jit.JITFunction.run, devices.of_tensor = saved_run, saved_of_tensor


def qwen3_launches() -> list[tuple[str, Callable[[], object]]]:
    """The template kernels a Qwen3-0.6B step launches (and the vocabulary's softmax) at its shapes:
    decode at batch 1, 8 and 32, then a prefill of 512 tokens at batch 2, and its matmuls' tiles loaded by the
    TMA (a schedule sweeps time, ``MatmulSchedule.tma``) and run by the Gluon kernel (``MatmulSchedule.gluon_wgmma``,
    where this Triton has Gluon's Hopper module)."""
    from ascend_compile.kernels.attention import bi_attention
    from ascend_compile.kernels.matmul import bi_matmul, bi_matmul_gated, bi_matmul_group
    from ascend_compile.kernels.plans import MatmulSchedule
    from ascend_compile.kernels.rms_norm import NormForm, bi_rms_norm, bi_rms_norm_pair, bi_rms_norm_sandwich
    from ascend_compile.kernels.rope import bi_rms_norm_rope
    from ascend_compile.kernels.rope_attention import bi_rope_attention, bi_rope_attention_grown
    from ascend_compile.kernels.softmax import bi_softmax

    bf, hidden, inter, heads, kv_heads, dim, slots = torch.bfloat16, 1024, 3072, 16, 8, 128, 520

    def t(*shape: int, dtype: torch.dtype = bf) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def w(k: int, n: int) -> torch.Tensor:  # a Linear weight as the graph hands it over: (out, in) transposed
        return t(n, k).t()

    gate_up = w(hidden, 2 * inter)
    launches: list[tuple[str, Callable[[], object]]] = [
        ("softmax over the vocabulary", partial(bi_softmax, t(8, 151936), -1)),
        ("gate/up, GELU tanh (Gemma), batch 8 x 1", partial(bi_matmul_gated, t(8, hidden), gate_up[:, :inter],
                                                              gate_up[:, inter:], "gelu_tanh")),
        ("post norm + residual add + pre norm (Gemma), batch 8 x 1", partial(
            bi_rms_norm_sandwich, t(8, hidden), t(8, hidden), t(hidden), 1e-6, NormForm(3), t(hidden), 1e-6,
            NormForm(3)))]
    for batch, length in ((1, 1), (8, 1), (32, 1), (2, 512)):
        rows, name = batch * length, f"batch {batch} x {length}"
        caches, index = (t(batch, kv_heads, slots, dim), t(batch, kv_heads, slots, dim)), t(1, dtype=torch.int64)
        q, k = t(batch, length, heads, dim), t(batch, length, kv_heads, dim)
        rope = ((t(dim), t(dim)), (1e-6, 1e-6), t(batch, length, dim), t(batch, length, dim))
        paged = (t(batch * slots // 16, 16, kv_heads, dim), t(batch * slots // 16, 16, kv_heads, dim))
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
            (f"gate/up, {name}", partial(bi_matmul_gated, t(rows, hidden), gate_up[:, :inter], gate_up[:, inter:])),
            (f"down, {name}", partial(bi_matmul, t(rows, inter), w(inter, hidden), b_is_weight=True)),
            (f"norm + rope + cache, {name}", partial(bi_rms_norm_rope, q, k, *rope, cache=(k, *caches, index),
                                                     append=True)),
            (f"rope + attention, {name}", partial(bi_rope_attention, q, k, k, *rope, *caches, index, append=True,
                                                  mask=torch.ones(batch, 1, length, slots, dtype=torch.bool),
                                                  heads_inner=True)),
            (f"norm + GPT-J rope + paged cache, {name}", partial(bi_rms_norm_rope, q, k, *rope, paged=True,
                                                                 cache=(k, *paged, t(rows, dtype=torch.int64)),
                                                                 interleaved=True)),
            (f"Gemma norms + GPT-J rope + attention, grown caches, {name}", partial(
                bi_rope_attention_grown, q, k, k, *rope, t(batch, kv_heads, slots - length, dim),
                t(batch, kv_heads, slots - length, dim), is_causal=length > 1, interleaved=True, form=3)),
            (f"attention, additive mask, {name}", partial(bi_attention, t(batch, heads, length, dim), *caches,
                                                          t(batch, 1, length, slots))),
            (f"attention, causal, {name}", partial(bi_attention, t(batch, heads, length, dim), *caches,
                                                   is_causal=True)),
            (f"paged attention, {name}", partial(bi_attention, t(batch, heads, length, dim), t(batch * slots // 16, 16,
                                                 kv_heads, dim), t(batch * slots // 16, 16, kv_heads, dim),
                                                 block_tables=t(batch, slots // 16, dtype=torch.int64),
                                                 seq_lens=t(batch, dtype=torch.int64))),
        ]
    # sm_90 schedules the step does not pick by default: prefill tiles loaded by the TMA, and the Gluon kernel
    tma = MatmulSchedule(block_m=128, block_n=128, split=False, num_warps=8, num_stages=4, group_m=8, tma=True)
    wgmma = dataclasses.replace(tma, tma=False, gluon_wgmma=True)
    qkv = [w(hidden, heads * dim), w(hidden, kv_heads * dim), w(hidden, kv_heads * dim)]
    launches += [
        ("query/key/value, TMA loads, batch 2 x 512", partial(bi_matmul_group, t(1024, hidden), qkv, schedule=tma)),
        ("down, TMA loads, batch 2 x 512", partial(bi_matmul, t(1024, inter), w(inter, hidden), b_is_weight=True,
                                                   schedule=dataclasses.replace(tma, block_m=64, num_warps=4))),
        ("query/key/value, Gluon wgmma, batch 2 x 512", partial(bi_matmul_group, t(1024, hidden), qkv,
                                                                schedule=wgmma)),
        ("down, Gluon wgmma, batch 2 x 512", partial(bi_matmul, t(1024, inter), w(inter, hidden), b_is_weight=True,
                                                     schedule=wgmma)),
        ("gate/up, Gluon wgmma, batch 2 x 512", partial(bi_matmul_gated, t(1024, hidden), gate_up[:, :inter],
                                                        gate_up[:, inter:], schedule=wgmma))]
    return launches


#: PTX lines that change with the source's line numbers and file names, not with the code.
_DEBUG_LINE = re.compile(r"^\s*(\.loc|\.file)\b|\$L__|debug_|info_string|^\s*\.b(8|32)\s")


def write_ptx(built: list[tuple[str, Any]], out: pathlib.Path) -> None:
    """Each build's PTX to ``out/<launch>.<kernel index>.ptx``, without comments or debug lines."""
    out.mkdir(parents=True, exist_ok=True)
    count: collections.Counter[str] = collections.Counter()
    for name, kernel in built:
        stem = re.sub(r"\W+", "_", name).strip("_")
        lines = (re.sub(r"//.*", "", line).rstrip() for line in kernel.asm["ptx"].splitlines())
        kept = [line for line in lines if line and not _DEBUG_LINE.search(line)]
        (out / f"{stem}.{count[stem]}.ptx").write_text("\n".join(kept) + "\n")
        count[stem] += 1
    print(f"PTX of {len(built)} builds in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ascend_compile.tools.compile_gpu",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="compile only the launches whose name contains TEXT (e.g. 'batch 8 x 1')")
    parser.add_argument("--report", action="store_true",
                        help="print what each build waits on (tools/kernel_facts.py): registers, spills, shared "
                             "memory, async copies, atomics and fences, and those before the first read after the wait")
    parser.add_argument("--ptx", metavar="DIR", help="write each build's PTX here, comments and debug lines left out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    launches = [(name, launch) for name, launch in qwen3_launches() if args.only in name]
    if not launches:
        print(f"no launch name contains {args.only!r}; the names: "
              f"{', '.join(name for name, _ in qwen3_launches())}", file=sys.stderr)
        return 2
    compiled: list[Any] = []
    built: list[tuple[str, Any]] = []
    with compile_only(args.arch, compiled):
        for name, launch in launches:
            first = len(compiled)
            try:
                launch()
            except Exception as error:  # the compiler's message is the result
                print(f"FAILED {name}: {error}", file=sys.stderr)
                return 1
            built += [(name, kernel) for kernel in compiled[first:]]
            print(f"ok {name}")
    print(f"{len(compiled)} launches compiled for sm_{args.arch}")
    if args.ptx:
        write_ptx(built, pathlib.Path(args.ptx))
    if args.report:
        ptxas = default_ptxas(args.arch)
        print(TABLE_HEADER)
        for name, kernel in built:
            print(kernel_facts(kernel, ptxas).row(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
