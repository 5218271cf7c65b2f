"""What a GPU build of a template kernel waits on, read from its PTX without a GPU.

A decode step at small batch is latency-bound: each kernel's time is mostly its programs waiting,
on the kernel before them and then on their own first loads (docs/decisions/0002, 0010).
What stands between a program's wait for the kernel before it (``griddepcontrol.wait``) and its
first read after it (its first asynchronous copy, or its first global load in a kernel that makes
no copies) is on every step's critical path: an atomic there is a round trip to L2,
a fence waits for the program's stores to complete, and a barrier waits for the slowest warp.
Such things are invisible in the Python source -- Triton hands a scalar atomic's result to every
thread through shared memory, behind a barrier -- and were found by reading the build
(``tools/compile_gpu.py``); this module reads it for every kernel, with the register count and
spills ``ptxas`` reports for the same PTX, and whether ptxas serialized the kernel's ``wgmma``
(one MMA at a time, invisible in the source too: decision 0031).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PREDICATE = re.compile(r"^@!?%\w+\s+")
_ASYNC_COPY = re.compile(r"^cp\.async\.(?:ca|cg|bulk)\b")
_ORDERING = re.compile(r"^(?:atom|red|fence|membar)\.")
_BARRIER = re.compile(r"^(?:bar|barrier)\.sync\b")
_TARGET = re.compile(r"^\.target\s+(sm_\w+)", re.MULTILINE)
_BLOCK_LABEL = re.compile(r"^(\$L__BB\w+):")
_SERIALIZED = re.compile(r"wgmma\.mma_async instructions are serialized due to (.+?) in the function")


@dataclasses.dataclass(frozen=True)
class KernelFacts:
    """One compiled kernel, as its PTX (and ``ptxas``) tell it."""

    name: str
    warps: int
    shared_bytes: int
    registers: int | None  # None when no ptxas could be run
    spill_bytes: int | None  # spill stores plus loads
    wgmma_serialized: str | None  # why ptxas waits after every wgmma ("" when it does not; None: no ptxas ran)
    async_copies: int
    ordering: tuple[str, ...]  # atomics and fences, as opcodes, in program order
    before_first_read: tuple[str, ...] | None  # atomics, fences and barriers from the wait to the first read

    def row(self, launch: str) -> str:
        def count(value: int | None) -> str:
            return "?" if value is None else str(value)

        before = "-" if self.before_first_read is None else ", ".join(_runs(self.before_first_read)) or "none"
        serialized = "?" if self.wgmma_serialized is None else self.wgmma_serialized or "no"
        ordering = ", ".join(_runs(self.ordering)) or "none"
        return (f"| {launch} | {self.name} | {self.warps} | {count(self.registers)} | {count(self.spill_bytes)} | "
                f"{serialized} | {self.shared_bytes} | {self.async_copies} | {ordering} | {before} |")


TABLE_HEADER = ("| launch | kernel | warps | registers | spill bytes | wgmma serialized | shared bytes | async copies "
                "| atomics and fences | between the wait and the first read |\n"
                "|---|---|---:|---:|---:|---|---:|---:|---|---|")


def _runs(opcodes: Sequence[str]) -> list[str]:
    """``["a", "a", "b", "a"]`` as ``["2 × a", "b", "a"]``: repeats in a row counted, order kept."""
    runs = [(op, len(list(run))) for op, run in itertools.groupby(opcodes)]
    return [f"{n} × {op}" if n > 1 else op for op, n in runs]


@dataclasses.dataclass
class _Block:
    """A basic block of PTX: its instructions' opcodes, the branch or return that ends it (if one
    does) and the blocks control may pass to."""

    opcodes: list[str] = dataclasses.field(default_factory=list)
    end: str = ""
    successors: list[int] = dataclasses.field(default_factory=list)


def _control_flow(ptx: str) -> list[_Block]:
    """The kernel's basic blocks in text order, block 0 its entry.  Blocks start at ``$L__BB``
    labels and after branches and returns; a branch goes to its label, and also falls through
    when it is predicated."""
    blocks, labels = [_Block()], {}
    for line in ptx.splitlines():
        text = line.strip()
        label = _BLOCK_LABEL.match(text)
        if label:
            if blocks[-1].opcodes:
                blocks.append(_Block())
            labels[label.group(1)] = len(blocks) - 1
            continue
        body = _PREDICATE.sub("", text)
        if not body or not body[0].isalpha():
            continue
        opcode = body.split()[0].rstrip(";")
        blocks[-1].opcodes.append(opcode)
        if opcode.startswith(("bra", "ret", "exit")):
            blocks[-1].end = text
            blocks.append(_Block())
    for i, block in enumerate(blocks):
        body = _PREDICATE.sub("", block.end)
        if body.startswith("bra"):
            block.successors.append(labels[body.split()[-1].rstrip(";")])
        if (not body or block.end != body) and i + 1 < len(blocks):  # falls through: no jump, or a predicated one
            block.successors.append(i + 1)
    return blocks


def _dominators(blocks: list[_Block]) -> list[set[int]]:
    """For each block, the blocks every path from the entry to it passes through (itself included)."""
    predecessors: list[list[int]] = [[] for _ in blocks]
    for i, block in enumerate(blocks):
        for successor in block.successors:
            predecessors[successor].append(i)
    everything = set(range(len(blocks)))
    dominators = [{0}] + [set(everything) for _ in blocks[1:]]
    changed = True
    while changed:
        changed = False
        for i in range(1, len(blocks)):
            incoming = [dominators[p] for p in predecessors[i]]
            update = {i} | (set.intersection(*incoming) if incoming else set())
            if update != dominators[i]:
                dominators[i], changed = update, True
    return dominators


def _reverse_postorder(blocks: list[_Block]) -> list[int]:
    """The blocks reachable from the entry, each after every block that reaches it without a back edge."""
    order, seen, stack = [], {0}, [(0, iter(blocks[0].successors))]
    while stack:
        block, successors = stack[-1]
        successor = next((s for s in successors if s not in seen), None)
        if successor is None:
            order.append(block)
            stack.pop()
        else:
            seen.add(successor)
            stack.append((successor, iter(blocks[successor].successors)))
    return order[::-1]


def ptx_facts(ptx: str) -> tuple[int, tuple[str, ...], tuple[str, ...] | None]:
    """Async copies, atomics and fences, and what every path runs between the dependency wait (or
    the kernel's start) and the first read after it -- its first async copy, or in a kernel that
    makes none, its first global load -- in a PTX text (None when it has no such read)."""
    blocks = _control_flow(ptx)
    opcodes = [op for block in blocks for op in block.opcodes]
    copies = sum(1 for op in opcodes if _ASYNC_COPY.match(op))
    ordering = tuple(op for op in opcodes if _ORDERING.match(op))
    dominators = _dominators(blocks)
    wait_block, wait_at = next(((b, i) for b, block in enumerate(blocks) for i, op in enumerate(block.opcodes)
                                if op.startswith("griddepcontrol.wait")), (0, -1))

    def after_wait(b: int) -> list[tuple[int, str]]:
        if wait_block not in dominators[b]:
            return []
        first = wait_at + 1 if b == wait_block else 0
        return list(enumerate(blocks[b].opcodes))[first:]

    def reads(is_read: Callable[[str], object]) -> list[tuple[int, int]]:
        return [(b, i) for b in range(len(blocks)) for i, op in after_wait(b) if is_read(op)]

    found = reads(_ASYNC_COPY.match) if copies else reads(lambda op: op.startswith("ld.global"))
    if not found:
        return copies, ordering, None
    rank = {b: n for n, b in enumerate(_reverse_postorder(blocks))}
    read_block, read_at = min(found, key=lambda read: (rank.get(read[0], len(blocks)), read[1]))
    on_every_path = [op for b in sorted(dominators[read_block], key=lambda d: len(dominators[d]))
                     for i, op in after_wait(b) if b != read_block or i < read_at]
    return copies, ordering, tuple(op for op in on_every_path if _ORDERING.match(op) or _BARRIER.match(op))


def ptxas_usage(ptx: str, ptxas: str) -> tuple[int, int, str] | None:
    """Registers, spill bytes (stores plus loads) and why every ``wgmma`` is serialized ("" when they
    are not) that ``ptxas -v`` reports for the PTX, or None when it cannot be run.  ptxas serializes
    them -- waits for each before the next starts -- when registers of an accumulator in flight are
    touched by other instructions (its C7515 note): a kernel's tensor cores then run one MMA at a time."""
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
    serialized = _SERIALIZED.search(done.stdout + done.stderr)
    return int(registers.group(1)), spills, serialized.group(1) if serialized else ""


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
                       wgmma_serialized=usage[2] if usage else None,
                       async_copies=copies, ordering=ordering, before_first_read=before)
