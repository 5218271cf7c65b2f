"""``ascend-bi check TARGET``: does a row get the same bits whatever batch it runs in, and if not, why?

The probe (row 0 of the target's example inputs along its batch dim) runs alone, then at a random row of batches of
several sizes whose other rows (companions) are drawn like the example's rows, under ``ascend_bi``
and under stock ``torch.compile`` (the negative control: its kernels pick their summation order
by shape).  Every output tensor's probe row is compared with the alone run: bitwise, largest
absolute difference, largest distance in units in the last place.  When ``ascend_bi`` is not
invariant, ``locate`` names the first op of the rewritten graph where the probe's bits change.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ascend_compile.report import clear_reports, reports
from ascend_compile.tools.locate import Divergence, locate
from ascend_compile.tools.targets import Target, TargetError

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (2, 5, 8)
MODES = ("ascend_bi", "torch.compile")

_INT_VIEWS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class CheckRow:
    mode: str
    batch: int
    #: Which draw of companions (0, 1, ...) at this batch size.
    draw: int
    #: The probe's row in the batch.
    row: int
    bitwise_equal: bool
    max_abs_diff: float
    #: Largest distance in units in the last place over the output's floating elements (0 for
    #: integer outputs, which only compare equal or not).
    max_ulps: int


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest number of representable floats between elements of ``a`` and ``b`` (same dtype)."""
    if a.dtype not in _INT_VIEWS or a.numel() == 0:
        return 0
    bits = torch.finfo(a.dtype).bits

    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.contiguous().view(_INT_VIEWS[x.dtype]).long()
        magnitude = i & ((1 << (bits - 1)) - 1)
        return torch.where(i < 0, -magnitude, magnitude)

    return int((ordered(a) - ordered(b)).abs().max().item())


def _draw_like(example: torch.Tensor, batch: int, batch_dim: int, gen: torch.Generator) -> torch.Tensor:
    """Random rows resembling the example's: same dtype, value range (ints) or mean and spread."""
    shape = list(example.shape)
    shape[batch_dim] = batch
    if example.dtype == torch.bool:
        rows = torch.randint(0, 2, shape, generator=gen).bool()
    elif not example.dtype.is_floating_point:
        low, high = int(example.min()), int(example.max())
        rows = torch.randint(low, high + 1, shape, generator=gen, dtype=example.dtype)
    else:
        ref = example.double()
        spread = ref.std().item() if ref.numel() > 1 and ref.std().item() > 0 else 1.0
        rows = (torch.randn(shape, generator=gen, dtype=torch.float64) * spread + ref.mean().item()).to(example.dtype)
    return rows.to(example.device)


def make_batch(example_inputs: tuple[Any, ...], batch: int, row: int, gen: torch.Generator,
               batch_dim: int = 0) -> tuple[Any, ...]:
    """Inputs of ``batch`` rows: the probe (row 0 of the examples) at ``row``, drawn companions elsewhere."""
    made = []
    for t in example_inputs:
        if not isinstance(t, torch.Tensor):
            made.append(t)
            continue
        rows = _draw_like(t, batch, batch_dim, gen)
        rows.select(batch_dim, row).copy_(t.select(batch_dim, 0))
        made.append(rows)
    return tuple(made)


def _outputs(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor) and leaf.dim() > 0]


def compare(batch_out: Any, alone_out: Any, batch: int, row: int, batch_dim: int = 0) -> tuple[bool, float, int]:
    """(bitwise equal, max |diff|, max ULPs) of the probe's row of every output tensor.

    Every output tensor must hold the batch on ``batch_dim`` (1 alone, ``batch`` in the batch): one
    that does not is a ``TargetError``, since a probe row cut from another dim compares unrelated
    values and reports divergences that are not there."""
    pairs = []
    for i, (b, a) in enumerate(zip(_outputs(batch_out), _outputs(alone_out), strict=True)):
        if b.dim() <= batch_dim or b.shape[batch_dim] != batch or a.shape[batch_dim] != 1:
            raise TargetError(f"output tensor {i} has shape {tuple(b.shape)} in a batch of {batch} and "
                              f"{tuple(a.shape)} alone: its batch is not on dim {batch_dim}; check compares the "
                              "probe's row of every output (pass --batch-dim for a model whose batch is elsewhere)")
        pairs.append((b.select(batch_dim, row), a.select(batch_dim, 0)))
    if not pairs:
        raise TargetError("the model's output holds no tensor; check compares output rows")
    equal = all(torch.equal(b, a) for b, a in pairs)
    diffs = [(b.double() - a.double()).abs().max().item() for b, a in pairs if b.numel()]
    return equal, max(diffs, default=0.0), max((ulp_distance(b, a) for b, a in pairs), default=0)


def _compiled(model: Any, mode: str, options: dict[str, Any]) -> Callable[..., Any]:
    if mode == "ascend_bi":
        return torch.compile(model, backend="ascend_bi", options=options, dynamic=True)
    return torch.compile(model, dynamic=True)


def run_check(target: Target, options: dict[str, Any], batch_sizes: tuple[int, ...], draws: int, seed: int = 0,
              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The table rows, the reductions ascend_bi left stock, and where the first divergence is."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    dim = target.batch_dim
    alone = tuple(t.narrow(dim, 0, 1) if isinstance(t, torch.Tensor) else t for t in target.example_inputs)
    cases = []
    for bs in batch_sizes:
        for draw in range(draws):
            row = rng.randrange(bs)
            cases.append((bs, draw, row, make_batch(target.example_inputs, bs, row, gen, dim)))
    rows: list[CheckRow] = []
    steps = len(MODES) * (len(cases) + 1)
    done = 0
    clear_reports()
    for mode in MODES:
        torch._dynamo.reset()
        fn = _compiled(target.model, mode, options)
        with torch.no_grad():
            done += 1
            progress(f"[{done}/{steps}] {mode}: probe alone")
            reference = fn(*alone)
            for bs, draw, row, inputs in cases:
                done += 1
                progress(f"[{done}/{steps}] {mode}: batch {bs}, companions #{draw}, probe at row {row}")
                equal, diff, ulps = compare(fn(*inputs), reference, bs, row, dim)
                rows.append(CheckRow(mode, bs, draw, row, equal, diff, ulps))
    torch._dynamo.reset()
    uncovered: dict[tuple[str, str, str], dict[str, Any]] = {}
    for report in reports():  # the graph for batch 1 and the dynamic one usually list the same nodes
        for u in report.uncovered:
            uncovered.setdefault((u.node, u.target, u.source), asdict(u) | {"graph": report.graph})
    failing = [r for r in rows if r.mode == "ascend_bi" and not r.bitwise_equal]
    divergence: Divergence | str | None = None
    if failing:
        first = failing[0]
        inputs = next(c[3] for c in cases if (c[0], c[1]) == (first.batch, first.draw))
        progress(f"locating the first diverging node (batch {first.batch}, probe at row {first.row}) ...")
        divergence = locate(target.model, options, alone, inputs, first.batch, first.row)
    return {
        "target": target.name,
        "rows": [asdict(r) for r in rows],
        "invariant": not failing,
        "uncovered_reductions": list(uncovered.values()),
        "divergence": asdict(divergence) if isinstance(divergence, Divergence) else divergence,
    }


def format_check(result: dict[str, Any]) -> str:
    header = (f"{'mode':<14} {'batch':>5} {'draw':>4} {'row':>4}  {'bitwise equal':<13} "
              f"{'max |diff|':>10} {'max ULPs':>9}")
    lines = [header, "-" * len(header)]
    for r in result["rows"]:
        lines.append(f"{r['mode']:<14} {r['batch']:>5} {r['draw']:>4} {r['row']:>4}  "
                     f"{'yes' if r['bitwise_equal'] else 'NO':<13} {r['max_abs_diff']:>10.2e} {r['max_ulps']:>9}")
    lines.append("")
    if result["invariant"] and result["uncovered_reductions"]:
        lines.append("ascend_bi: the probe's bits never changed in these batches, but these reductions are left "
                     "stock, so other batches may change them:")
    elif result["invariant"]:
        lines.append("ascend_bi: batch-invariant (the probe's bits never changed).")
    else:
        lines.append("ascend_bi: NOT batch-invariant.")
    for u in result["uncovered_reductions"]:
        lines.append(f"  left stock: {u['node']} ({u['target']}): {u['reason']}"
                     + (f" at {u['source']}" if u["source"] else ""))
    d = result["divergence"]
    if isinstance(d, dict):
        stock = " (an order-sensitive reduction left stock)" if d["left_stock"] else ""
        lines.append(f"first diverging node: {d['node']} = {d['op']}{stock} in {d['graph']}, "
                     f"max |diff| {d['max_abs_diff']:.2e}")
        lines.append(f"  source: {d['source'] or 'unknown (no stack trace recorded)'}")
    elif d:
        lines.append(f"first diverging node: not found: {d}")
    return "\n".join(lines)
