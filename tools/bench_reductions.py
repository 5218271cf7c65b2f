"""Check and time the batch-invariant row templates against stock ops on one GPU, in one run.

For each op at Qwen3-0.6B row lengths (hidden 1024 for norms and statistics, vocabulary 151936
for softmax, log_softmax and logsumexp) and decode/prefill row counts, in bf16:

* invariance: every row equals, bitwise, the same row computed with the most rows;
* speed: ascend_bi's op vs the eager aten op and vs stock ``torch.compile`` of it (Inductor),
  each replayed from CUDA graphs over enough inputs that L2 cannot hold them.

Usage: ``python -m ascend_compile.tools.bench_reductions [--json PATH] [--markdown PATH]``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from ascend_compile.tools.benchmarking import bench_parser, card_line, finish, geomean, graph_time_us, start, versions

logger = logging.getLogger(__name__)

ROWS: tuple[int, ...] = (1, 8, 32, 128, 512, 4096)
HIDDEN, VOCAB = 1024, 151936
_L2_FLUSH_BYTES = 256 << 20

Op = Callable[[torch.Tensor], torch.Tensor]


def _ops() -> dict[str, tuple[int, Op, Op]]:
    """name -> (row length, ascend_bi op, stock op)."""
    import ascend_compile.ops  # noqa: F401

    bi = torch.ops.ascend_bi
    return {
        "rms (mean of squares)": (HIDDEN, lambda x: bi.sum(x * x, [-1], True, None, True),
                                  lambda x: (x * x).mean(-1, keepdim=True)),
        "var_mean": (HIDDEN, lambda x: bi.var_mean(x, [-1], 0.0, True)[0],
                     lambda x: torch.var_mean(x, -1, correction=0, keepdim=True)[0]),
        "layer_norm": (HIDDEN, lambda x: bi.layer_norm(x, [HIDDEN], None, None, 1e-5)[0],
                       lambda x: torch.nn.functional.layer_norm(x, [HIDDEN])),
        "softmax": (VOCAB, lambda x: bi.softmax(x, -1, False), lambda x: torch.softmax(x, -1)),
        "log_softmax": (VOCAB, lambda x: bi.softmax(x, -1, True), lambda x: torch.log_softmax(x, -1)),
        "logsumexp": (VOCAB, lambda x: bi.logsumexp(x, [-1], False), lambda x: torch.logsumexp(x, -1)),
    }


@dataclasses.dataclass
class Point:
    op: str
    n: int
    rows: int
    invariant: bool
    bi_us: float
    eager_us: float
    compiled_us: float


def measure(name: str, n: int, ours: Op, stock: Op, rows: tuple[int, ...]) -> list[Point]:
    gen = torch.Generator(device="cuda").manual_seed(n)
    full = torch.randn(max(rows), n, device="cuda", dtype=torch.bfloat16, generator=gen)
    reference = ours(full)
    compiled = torch.compile(stock, dynamic=True)
    points = []
    for m in rows:
        copies = max(1, min(16, math.ceil(_L2_FLUSH_BYTES / (m * n * 2))))
        inputs = [full[:m].clone() for _ in range(copies)]
        invariant = torch.equal(ours(inputs[0]), reference[:m])
        times = [graph_time_us([lambda fn=fn, x=x: fn(x) for x in inputs]) for fn in (ours, stock, compiled)]
        points.append(Point(name, n, m, invariant, *times))
        logger.info("%s n=%d rows=%d invariant=%s times=%s", name, n, m, invariant, times)
    return points


def markdown(doc: dict[str, Any]) -> str:
    """The results table of a run's JSON document (``--json``; also how bench_report renders it)."""
    points = [Point(**p) for p in doc["points"]]
    lines = [
        card_line(doc["info"]),
        "",
        "| op | n | rows | bitwise invariant | ascend_bi µs | eager µs | torch.compile µs | vs eager | vs compile |",
        "|---|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(f"| {p.op} | {p.n} | {p.rows} | {'yes' if p.invariant else 'NO'} | {p.bi_us:.1f} "
                     f"| {p.eager_us:.1f} | {p.compiled_us:.1f} | {p.eager_us / p.bi_us:.2f}× "
                     f"| {p.compiled_us / p.bi_us:.2f}× |")
    lines += ["", f"Geo-mean speed: vs eager {geomean([p.eager_us / p.bi_us for p in points]):.2f}×, "
                  f"vs torch.compile {geomean([p.compiled_us / p.bi_us for p in points]):.2f}×."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__.splitlines()[0], ROWS).parse_args(argv)
    if not start("bench_reductions"):
        return 2
    points = [p for name, (n, ours, stock) in _ops().items() for p in measure(name, n, ours, stock, tuple(args.rows))]
    finish(args, versions(), points, markdown)
    return 0 if all(p.invariant for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
