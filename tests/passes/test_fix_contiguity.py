"""fix_contiguity: copies only unreadable activations, never parameters; counts the bytes."""

from __future__ import annotations

import torch

from ascend_compile.passes.fix_contiguity import fix_contiguity
from ascend_compile.passes.graph_facts import facts_of
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.settings import Settings
from tests.passes.graphs import aten_graph, targets

SETTINGS = Settings()
clone = torch.ops.aten.clone.default


def _rewritten(fn, *inputs, static_positions=frozenset()):
    gm = aten_graph(fn, *inputs, static_positions=static_positions)
    rewrite_matmul(gm, SETTINGS)
    return gm


def test_gathered_activation_is_copied_and_counted() -> None:
    x, w = torch.randn(4, 16), torch.randn(8, 6)
    gm = _rewritten(lambda x, w: torch.mm(x[:, ::2], w), x, w)
    assert fix_contiguity(gm, SETTINGS) == 1
    assert targets(gm).count(clone) == 1
    (copy,) = facts_of(gm).report.copies
    assert copy.bytes_per_call == str(4 * 8 * 4)
    gm.recompile()
    torch.testing.assert_close(gm(x, w), x[:, ::2] @ w)


def test_transposed_weight_and_contiguous_inputs_are_not_copied() -> None:
    gm = _rewritten(lambda x, w: torch.mm(x, w.t()), torch.randn(4, 8), torch.randn(6, 8))
    assert fix_contiguity(gm, SETTINGS) == 0
    assert clone not in targets(gm)


def test_parameters_are_never_copied() -> None:
    gm = _rewritten(lambda x, w: torch.mm(x, w[::2, ::2]), torch.randn(4, 8), torch.randn(16, 12),
                    static_positions=frozenset({1}))
    # the strided view of the parameter is a graph node, not the placeholder: it is an activation
    assert fix_contiguity(gm, SETTINGS) == 1
    gm = _rewritten(lambda x, w: torch.mm(x, w), torch.randn(4, 8), torch.randn(16, 12)[::2, ::2],
                    static_positions=frozenset({1}))
    assert fix_contiguity(gm, SETTINGS) == 0
    assert not facts_of(gm).report.copies


def test_idempotent() -> None:
    gm = _rewritten(lambda x, w: torch.mm(x[:, ::2], w), torch.randn(4, 16), torch.randn(8, 6))
    assert fix_contiguity(gm, SETTINGS) == 1
    assert fix_contiguity(gm, SETTINGS) == 0


def test_row_template_copies_are_reported_not_inserted() -> None:
    from ascend_compile.passes.rewrite_reductions import rewrite_reductions

    def fn(x):
        return x.sum(1), x.sum(-1)  # a middle dim cannot be flattened in place; the last can

    gm = aten_graph(fn, torch.randn(2, 3, 5))
    rewrite_reductions(gm, SETTINGS)
    assert fix_contiguity(gm, SETTINGS) == 0
    (copy,) = facts_of(gm).report.copies
    assert copy.inside_template and copy.bytes_per_call == str(2 * 3 * 5 * 4)
