"""What a GPU build of a template kernel waits on, read from its PTX without a GPU.

A decode step at small batch is latency-bound: each kernel's time is mostly its programs waiting,
on the kernel before them and then on their own first loads (docs/BENCHMARKS.md, decode section).
What stands between a program's wait for the kernel before it (``griddepcontrol.wait``) and its
first asynchronous copy is on every step's critical path: an atomic there is a round trip to L2,
a fence waits for the program's stores to complete, and a barrier waits for the slowest warp.
Such things are invisible in the Python source -- Triton hands a scalar atomic's result to every
thread through shared memory, behind a barrier -- and were found by reading the build
(``tools/compile_gpu.py``); this module reads it for every kernel, with the register count and
spills ``ptxas`` reports for the same PTX.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PREDICATE = re.compile(r"^@!?%\w+\s+")
_ASYNC_COPY = re.compile(r"^cp\.async\.(?:ca|cg|bulk)\b")
_ORDERING = re.compile(r"^(?:atom|red|fence|membar)\.")
_BARRIER = re.compile(r"^(?:bar|barrier)\.sync\b")
_TARGET = re.compile(r"^\.target\s+(sm_\w+)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class KernelFacts:
    """One compiled kernel, as its PTX (and ``ptxas``) tell it."""

    name: str
    warps: int
    shared_bytes: int
    registers: int | None  # None when no ptxas could be run
    spill_bytes: int | None  # spill stores plus loads
    async_copies: int
    ordering: tuple[str, ...]  # atomics and fences, as opcodes, in program order
    before_first_copy: tuple[str, ...] | None  # atomics, fences and barriers from the wait to the first copy

    def row(self, launch: str) -> str:
        def count(value: int | None) -> str:
            return "?" if value is None else str(value)

        before = "-" if self.before_first_copy is None else ", ".join(_counted(self.before_first_copy)) or "none"
        return (f"| {launch} | {self.name} | {self.warps} | {count(self.registers)} | {count(self.spill_bytes)} | "
                f"{self.shared_bytes} | {self.async_copies} | {', '.join(_counted(self.ordering)) or 'none'} | "
                f"{before} |")


TABLE_HEADER = ("| launch | kernel | warps | registers | spill bytes | shared bytes | async copies | atomics and "
                "fences | between the wait and the first async copy |\n|---|---|---:|---:|---:|---:|---:|---|---|")


def _counted(opcodes: Sequence[str]) -> list[str]:
    """``["a", "a", "b"]`` as ``["2 × a", "b"]``, in order of first appearance."""
    counts: dict[str, int] = {}
    for opcode in opcodes:
        counts[opcode] = counts.get(opcode, 0) + 1
    return [f"{n} × {op}" if n > 1 else op for op, n in counts.items()]


def _instructions(ptx: str) -> list[str]:
    """Each instruction's opcode (the first word, predicate removed), in text order."""
    opcodes = []
    for line in ptx.splitlines():
        text = _PREDICATE.sub("", line.strip())
        if text and not text.startswith(("//", ".", "{", "}", "$")) and text[0].isalpha():
            opcodes.append(text.split()[0].rstrip(";"))
    return opcodes


def ptx_facts(ptx: str) -> tuple[int, tuple[str, ...], tuple[str, ...] | None]:
    """Async copies, atomics and fences, and what lies between the dependency wait (or the kernel's
    start) and the first async copy (None when the kernel makes none) in a PTX text."""
    opcodes = _instructions(ptx)
    copies = [i for i, op in enumerate(opcodes) if _ASYNC_COPY.match(op)]
    ordering = tuple(op for op in opcodes if _ORDERING.match(op))
    before = None
    if copies:
        waits = [i for i, op in enumerate(opcodes[:copies[0]]) if op.startswith("griddepcontrol.wait")]
        start = waits[-1] + 1 if waits else 0
        before = tuple(op for op in opcodes[start:copies[0]] if _ORDERING.match(op) or _BARRIER.match(op))
    return len(copies), ordering, before


def ptxas_usage(ptx: str, ptxas: str) -> tuple[int, int] | None:
    """Registers and spill bytes (stores plus loads) that ``ptxas -v`` reports for the PTX, or None
    when it cannot be run."""
    target = _TARGET.search(ptx)
    if target is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        try:
            done = subprocess.run([ptxas, "-v", "--gpu-name", target.group(1), str(source), "-o",
                                   str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            logger.warning("ptxas could not be run (%s): registers left unknown", error)
            return None
    registers = re.search(r"Used (\d+) registers", done.stderr)
    if done.returncode != 0 or registers is None:
        logger.warning("ptxas gave no register count (exit %s): %s", done.returncode, done.stderr[-500:])
        return None
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", done.stderr))
    return int(registers.group(1)), spills


def default_ptxas(arch: int) -> str | None:
    """The ptxas Triton's NVIDIA backend compiles compute capability ``arch`` with (its PTX version
    is that one's), None when there is none."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            tool = get_ptxas(arch)
        except TypeError:  # Triton releases whose get_ptxas takes no capability
            tool = get_ptxas()
        return tool.path
    except (ImportError, AttributeError, RuntimeError) as error:
        logger.warning("no ptxas found through Triton (%s): registers left unknown", error)
        return None


def kernel_facts(kernel: Any, ptxas: str | None) -> KernelFacts:
    """The facts of a kernel compiled by ``triton.compile`` (``compile_gpu.compile_only``)."""
    ptx = kernel.asm["ptx"]
    copies, ordering, before = ptx_facts(ptx)
    usage = ptxas_usage(ptx, ptxas) if ptxas else None
    return KernelFacts(name=kernel.name, warps=kernel.metadata.num_warps, shared_bytes=kernel.metadata.shared,
                       registers=usage[0] if usage else None, spill_bytes=usage[1] if usage else None,
                       async_copies=copies, ordering=ordering, before_first_copy=before)
