"""A Qwen3-0.6B step's template kernels compile for an H100/H200 (sm_90) on this CPU machine
(tools/compile_gpu.py).

The interpreter runs kernels as Python and skips GPU-only branches; this is the check that the GPU
compiler accepts them, before any device time is spent.  Each check runs in a subprocess: the
tests' own process runs Triton in the interpreter.  Negative control: a kernel the interpreter
runs (two returns of different shapes under a ``tl.constexpr`` branch) fails to compile."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import triton

import ascend_compile.kernels  # noqa: F401 - configures Triton: the interpreter on machines without a GPU
from ascend_compile import devices
from ascend_compile.tools.compile_gpu import compile_only

pytestmark = pytest.mark.skipif("nvidia" not in triton.backends.backends, reason="Triton without its NVIDIA backend")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # every launch of the step; the default run compiles two of them in the report test below
def test_qwen3_kernels_compile_for_sm_90() -> None:
    done = _run("-m", "ascend_compile.tools.compile_gpu", "--arch", "90")
    assert done.returncode == 0, done.stderr[-3000:]
    cases = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    expected = 60 if devices.has_gluon_wgmma() else 57  # three launches of the Gluon kernel
    assert len(cases) == expected and "ok gate/up, GELU tanh (Gemma), batch 8 x 1" in cases, done.stdout
    assert done.stdout.rstrip().endswith("launches compiled for sm_90")


_TWO_SHAPES = """
import triton
import triton.language as tl


@triton.jit
def _pick(x_ptr, ROW: tl.constexpr):
    if ROW:
        return tl.load(x_ptr + tl.arange(0, 16))[None, :]
    return tl.load(x_ptr + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :])


@triton.jit
def two_shapes_kernel(x_ptr, out_ptr, ROW: tl.constexpr):
    tile = _pick(x_ptr, ROW) + tl.zeros((16, 16), tl.float32)
    tl.store(out_ptr + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :], tile)
"""

_COMPILE_IT = """
import torch
from two_shapes import two_shapes_kernel
from ascend_compile.tools.compile_gpu import compile_only

try:
    with compile_only(90, []):
        two_shapes_kernel[(1,)](torch.empty(256), torch.empty(256), ROW=True)
except Exception as error:
    while error is not None:  # the compiler's message, then each cause
        print("rejected:", type(error).__name__, error)
        error = error.__cause__
"""


_PIPELINED = """
import torch
from ascend_compile.kernels.matmul import bi_matmul_group
from ascend_compile.tools import compile_gpu


def async_copies() -> int:
    kernels = []
    with compile_gpu.compile_only(90, kernels):
        weights = [torch.empty(n, 1024, dtype=torch.bfloat16).t() for n in (2048, 1024, 1024)]
        bi_matmul_group(torch.empty(8, 1024, dtype=torch.bfloat16), weights)
    (kernel,) = kernels
    return kernel.asm["ttgir"].count("async_copy_global_to_local")


print("specialized:", async_copies())
specialized = compile_gpu.launch_source


def unspecialized(*args, **kwargs):
    source, options = specialized(*args, **kwargs)
    source.attrs = {}
    return source, options


compile_gpu.launch_source = unspecialized
print("unspecialized:", async_copies())
"""


def test_builds_are_specialized_as_launches_are(tmp_path: pathlib.Path) -> None:
    """The decode query/key/value matmul's weight loads become asynchronous copies (its pipeline) only
    when the build knows what a launch knows: pointers and strides divisible by 16.  Negative
    control: the same build without those attributes has none."""
    (tmp_path / "pipelined.py").write_text(_PIPELINED)
    done = _run(str(tmp_path / "pipelined.py"))
    assert done.returncode == 0, done.stderr[-3000:]
    counts = dict(line.split(": ") for line in done.stdout.splitlines() if ": " in line)
    assert int(counts["specialized"]) > 0 and int(counts["unspecialized"]) == 0, done.stdout


interpreted = pytest.mark.skipif(not devices.triton_interpreted(), reason="runs a kernel in Triton's interpreter")


@interpreted
def test_a_kernel_the_interpreter_runs_fails_to_compile(tmp_path: pathlib.Path) -> None:
    (tmp_path / "two_shapes.py").write_text(_TWO_SHAPES)
    spec = importlib.util.spec_from_file_location("two_shapes", tmp_path / "two_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = torch.empty(16, 16)
    module.two_shapes_kernel[(1,)](torch.arange(256.0), out, ROW=True)  # the interpreter runs it
    assert torch.equal(out, torch.arange(16.0).expand(16, 16))
    (tmp_path / "compile_it.py").write_text(_COMPILE_IT)
    done = _run(str(tmp_path / "compile_it.py"))
    assert "rejected: CompilationError" in done.stdout and "return types" in done.stdout, done.stderr


@interpreted
def test_compile_only_refuses_the_interpreter() -> None:
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=0"), compile_only(90, []):
        pass


def _report_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    rows = [line.strip("|").split(" | ") for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return {(row[0].strip(), row[1]): [cell.strip() for cell in row[2:]] for row in rows[1:]}


def test_report_finds_the_serial_attention_atomic_before_its_first_key_tile() -> None:
    """The serial rope-attention (batch 32) arrives on the write position's counter right after its
    cache writes: the atomic lies between its dependency wait and its first key tile's copy.  The
    split schedule (batch 8) leaves the position to the fold launch: nothing but barriers there.  The
    serial case is the report's positive control, to be replaced by another known case if that
    atomic moves.  The report reads registers from ptxas as well."""
    done = _run("-m", "ascend_compile.tools.compile_gpu", "--only", "rope + attention, batch", "--report")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _report_rows(done.stdout)
    serial = rows["rope + attention, batch 32 x 1", "_rope_attention_kernel"]
    split = rows["rope + attention, batch 8 x 1", "_rope_attention_kernel"]
    warps, registers, spills, _, shared, copies, ordering, before = split
    assert int(registers) > 0 and int(copies) > 0 and ordering == "none", split
    assert "atom" not in before and "bar.sync" in before, split
    assert "atom.global.gpu.release.add" in serial[-1], serial


_FOLD = """
import torch
import triton
import triton.language as tl
from ascend_compile.tools.compile_gpu import compile_only
from ascend_compile.tools.kernel_facts import default_ptxas, kernel_facts


@triton.jit
def fold_kernel(q_ptr, k_ptr, out_ptr, n, AFTER_LAST_DOT: tl.constexpr):
    rows, cols = tl.arange(0, 64), tl.arange(0, 64)
    q = tl.load(q_ptr + rows[:, None] * 64 + cols[None, :])
    acc = tl.zeros((64, 64), tl.float32)
    total = tl.zeros((64, 64), tl.float32)
    for t in range(n):
        k = tl.load(k_ptr + t * 4096 + rows[:, None] * 64 + cols[None, :])
        s = tl.dot(q, k)
        if not AFTER_LAST_DOT and (t % 4 == 0) & (t > 0):  # the chunk before, once this tile's scores are in
            total = total * 0.5 + acc
            acc = tl.zeros((64, 64), tl.float32)
        acc = acc * 0.5 + tl.dot(s.to(tl.bfloat16), k)
        if AFTER_LAST_DOT and (t + 1) % 4 == 0:  # a chunk into the total right after its last dot
            total = total * 0.5 + acc
            acc = tl.zeros((64, 64), tl.float32)
    tl.store(out_ptr + rows[:, None] * 64 + cols[None, :], total + acc)


for after in (True, False):
    kernels = []
    with compile_only(90, kernels):
        x = torch.empty(64 * 64, dtype=torch.bfloat16)
        fold_kernel[(1,)](x, x, torch.empty(64 * 64), 16, AFTER_LAST_DOT=after)
    print(f"after the last dot={after}:", kernel_facts(kernels[0], default_ptxas(90)).wgmma_serialized or "no")
"""


@pytest.fixture(scope="module")
def prefill_report() -> dict[tuple[str, str], list[str]]:
    """The report of every launch of a 2 x 512-token prefill, built for sm_90."""
    done = _run("-m", "ascend_compile.tools.compile_gpu", "--only", "batch 2 x 512", "--report")
    assert done.returncode == 0, done.stderr[-3000:]
    return _report_rows(done.stdout)


def test_prefill_attention_keeps_its_wgmma_pipelined(prefill_report: dict[tuple[str, str], list[str]],
                                                     tmp_path: pathlib.Path) -> None:
    """ptxas runs every ``wgmma`` of a kernel one at a time when other instructions read or write an
    accumulator still in flight; attention's serial blocks fold a split once the next split's scores
    are in, when none is (docs/decisions/0031).  Negative control: the same small loop folding a chunk
    right after its last dot is serialized, and pipelined when it folds after the next tile's first dot."""
    attention = {launch: cells for (launch, kernel), cells in prefill_report.items() if kernel == "_attention_kernel"}
    assert len(attention) == 5 and all(cells[3] == "no" for cells in attention.values()), attention
    (tmp_path / "fold.py").write_text(_FOLD)
    done = _run(str(tmp_path / "fold.py"))
    assert "after the last dot=True: non wgmma instructions defining accumulator registers" in done.stdout, \
        done.stdout + done.stderr[-3000:]
    assert "after the last dot=False: no" in done.stdout, done.stdout


_SWAP = """
import torch
import triton
import triton.language as tl
from ascend_compile.tools.compile_gpu import compile_only
from ascend_compile.tools.kernel_facts import default_ptxas, kernel_facts


@triton.jit
def swap_kernel(x_ptr, out_ptr):
    offsets = tl.arange(0, 8)[:, None] * 128 + tl.arange(0, 128)[None, :]
    first, second = tl.split(tl.permute(tl.reshape(tl.load(x_ptr + offsets), (8, 2, 64)), (0, 2, 1)))
    swapped = tl.reshape(tl.permute(tl.join(-second, first), (0, 2, 1)), (8, 128))
    tl.store(out_ptr + offsets, swapped)


kernels = []
with compile_only(90, kernels):
    x = torch.empty(8 * 128, dtype=torch.bfloat16)
    swap_kernel[(1,)](x, x, num_warps=2)
print("shared bytes:", kernel_facts(kernels[0], default_ptxas(90)).shared_bytes)
"""


def test_prefill_norm_rope_keeps_pairs_in_a_thread(prefill_report: dict[tuple[str, str], list[str]],
                                                   tmp_path: pathlib.Path) -> None:
    """A norm-and-rotate program moves no value between threads but the norms' sums (``rope.py``: a head
    loads as its two halves, GPT-J's pairs split in registers): its shared memory is those sums' 256 bytes,
    with and without the cache forms and Gemma's norms.  Negative control: swapping the halves of a loaded
    (heads, 128) tile moves them through shared memory."""
    rope = {launch: cells for (launch, kernel), cells in prefill_report.items() if kernel == "_norm_rope_kernel"}
    assert len(rope) == 4 and all(int(cells[4]) <= 256 for cells in rope.values()), rope
    (tmp_path / "swap.py").write_text(_SWAP)
    done = _run(str(tmp_path / "swap.py"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("shared bytes:")[1]) > 256, done.stdout


@pytest.mark.skipif(not devices.has_gluon_wgmma(), reason="Triton without Gluon's Hopper module")
def test_gluon_matmul_keeps_its_wgmma_pipelined() -> None:
    """The Gluon matmul (``matmul_wgmma.py``: a product, a query/key/value group, gated tiles) compiles for sm_90
    through the real launch path, spills nothing, and ptxas keeps its wgmma asynchronous: no instruction
    touches a partial still in flight (the check whose negative control is attention's test above)."""
    done = _run("-m", "ascend_compile.tools.compile_gpu", "--only", "Gluon wgmma", "--report")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _report_rows(done.stdout)
    assert sorted(kernel for _, kernel in rows) == ["_chunked_matmul_kernel"] * 3, rows
    for _warps, registers, spills, serialized, *_ in rows.values():
        assert int(registers) > 0 and spills == "0" and serialized == "no", rows


def test_ptx_is_written_without_line_numbers(tmp_path: pathlib.Path) -> None:
    """``--ptx`` writes a launch's build for sm_90 without comments or debug lines: what changes with a
    source file's line numbers is gone, so two trees' builds compare with ``diff -r``."""
    done = _run("-m", "ascend_compile.tools.compile_gpu", "--only", "o projection, batch 8 x 1", "--ptx", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    (ptx,) = tmp_path.iterdir()
    text = ptx.read_text()
    assert ptx.name == "o_projection_batch_8_x_1.0.ptx" and ".target sm_90" in text
    assert ".entry _bi_matmul_kernel" in text and "ld.global" in text
    assert not any(".loc" in line or "//" in line or "$L__" in line for line in text.splitlines())


def test_report_refuses_an_unknown_launch_name() -> None:
    done = _run("-m", "ascend_compile.tools.compile_gpu", "--only", "no such launch")
    assert done.returncode == 2 and "no launch name contains 'no such launch'" in done.stderr, done.stderr
    assert "rope + attention, batch 8 x 1" in done.stderr
