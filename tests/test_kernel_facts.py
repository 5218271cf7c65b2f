"""The PTX reading of tools/kernel_facts.py on texts whose answer is known: which atomics, fences
and barriers lie between a program's dependency wait and its first read (asynchronous copy, or
global load in a kernel without copies).  Real builds are read in tests/test_compile_gpu.py."""

from __future__ import annotations

import pathlib

import pytest

from ascend_compile.tools.kernel_facts import KernelFacts, ptx_facts, ptxas_usage

_PTX = """
.version 8.7
.target sm_90a
.visible .entry k(
    .param .u64 k_param_0
)
{{
    // a comment naming atom.global.add
    ld.global.b32 %r1, [%rd1];
    griddepcontrol.wait;
{between}
    cp.async.cg.shared.global [ %r2 + 0 ], [ %rd2 + 0 ], 0x10, %r3;
    cp.async.commit_group;
    @%p1 atom.global.gpu.acq_rel.add.u32 %r4, [%rd3], 1;
    @!%p2 red.global.gpu.relaxed.add.u32 [%rd3], 1;
    ret;
}}
"""


def test_what_lies_before_the_first_copy() -> None:
    between = "    @%p3 atom.global.gpu.release.add.u32 %r5, [%rd4], 1;\n    bar.sync 0;\n    fence.acq_rel.gpu;"
    copies, ordering, before = ptx_facts(_PTX.format(between=between))
    assert copies == 1
    assert before == ("atom.global.gpu.release.add.u32", "bar.sync", "fence.acq_rel.gpu")
    assert ordering == ("atom.global.gpu.release.add.u32", "fence.acq_rel.gpu", "atom.global.gpu.acq_rel.add.u32",
                        "red.global.gpu.relaxed.add.u32")


def test_atomics_after_the_first_copy_are_not_before_it() -> None:
    copies, ordering, before = ptx_facts(_PTX.format(between="    add.s32 %r6, %r6, 1;"))
    assert before == () and len(ordering) == 2 and copies == 1


def test_without_copies_the_region_ends_at_the_first_load_after_the_wait() -> None:
    without_copy = _PTX.replace("    cp.async.cg.shared.global [ %r2 + 0 ], [ %rd2 + 0 ], 0x10, %r3;\n", "")
    assert ptx_facts(without_copy.format(between=""))[2] is None  # the only load comes before the wait
    between = "    bar.sync 0;\n    ld.global.b32 %r7, [%rd5];\n    fence.acq_rel.gpu;"
    copies, _, before = ptx_facts(without_copy.format(between=between))
    assert copies == 0 and before == ("bar.sync",)


def test_rows_count_repeats_in_a_row() -> None:
    facts = KernelFacts(name="k", warps=4, shared_bytes=0, registers=None, spill_bytes=None, wgmma_serialized=None,
                        async_copies=2, ordering=("atom.a", "atom.a", "fence.b", "atom.a"),
                        before_first_read=("bar.sync", "bar.sync"))
    assert facts.row("launch") == "| launch | k | 4 | ? | ? | ? | 0 | 2 | 2 × atom.a, fence.b, atom.a | 2 × bar.sync |"


def test_registers_are_unknown_without_a_ptxas(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    assert ptxas_usage(_PTX.format(between=""), str(tmp_path / "no-ptxas")) is None
    assert "ptxas could not be run" in caplog.text


_BRANCHING = """
.visible .entry k()
{
    griddepcontrol.wait;
    atom.global.gpu.release.add.u32 %r1, [%rd1], 1;
    @%p1 bra $L__BB0_2;
    red.global.gpu.relaxed.add.u32 [%rd1], 1;
$L__BB0_2:
    bar.sync 0;
    bra.uni $L__BB0_4;
$L__BB0_3:
    bar.sync 0;
    fence.acq_rel.gpu;
    ret;
$L__BB0_4:
    cp.async.cg.shared.global [ %r2 + 0 ], [ %rd2 + 0 ], 0x10, %r3;
    @%p2 bra $L__BB0_4;
    bra.uni $L__BB0_3;
}
"""


def test_only_what_every_path_runs_before_the_first_copy_counts() -> None:
    """The atomic in the entry and the barrier where the branch joins run on every path to the copy
    in the loop; the reduction under the branch may not, and the loop's exit block, placed before
    the loop in the text as compilers place it, runs after it."""
    copies, ordering, before = ptx_facts(_BRANCHING)
    assert copies == 1 and len(ordering) == 3
    assert before == ("atom.global.gpu.release.add.u32", "bar.sync")
