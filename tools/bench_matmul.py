"""Check and time the batch-invariant matmul against ``torch.mm`` on one GPU, in one run.

For every Qwen3-0.6B and Llama-3.2-1B linear shape (K, N) and row count M it checks, in bf16:

* invariance: every row of ``X[:M] @ W.T`` equals, bitwise, the same row computed at the largest
  M (and the split -- weight streamed or preloaded -- and serial schedules of the plan agree bitwise,
  the serial one loaded by pointers, on sm_90+ by the TMA, and on sm_90 run by the Gluon kernel);
* accuracy: relative error against a float64 reference;
* speed: time per call of ``ascend_bi::mm``'s kernel, called as a compiled model calls it on a
  weight (``b_is_weight``), and of ``torch.mm`` (cuBLAS), both replayed from CUDA graphs of
  back-to-back calls over enough weight copies that L2 cannot hold them.

Usage: ``python -m ascend_compile.tools.bench_matmul [--rows M ...] [--models NAME ...] [--json PATH] [--markdown PATH]
[--sweep PATH]``.
``--sweep`` also times a grid of schedules per point (schedules never change the bits, so the
fastest can be chosen offline and written into ``plans.matmul_schedule``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from typing import Any

import torch

from ascend_compile.kernels.plans import MatmulSchedule
from ascend_compile.tools.benchmarking import bench_parser, card_line, finish, geomean, graph_time_us, start, versions

logger = logging.getLogger(__name__)

#: Per model its linears' (K, N): query, key/value, the query/key/value group, o, the gate/up pair, down, LM head.
SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "qwen3-0.6b": ((1024, 2048), (1024, 1024), (1024, 4096), (2048, 1024), (1024, 6144), (3072, 1024),
                   (1024, 151936)),
    "llama-3.2-1b": ((2048, 2048), (2048, 512), (2048, 3072), (2048, 16384), (8192, 2048), (2048, 128256)),
}
ROWS: tuple[int, ...] = (1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 128, 512, 2048)
#: Rows from which a matmul is a prefill's (the summary's per-M geo-means start here).
PREFILL_ROWS = 64
_L2_FLUSH_BYTES = 256 << 20


@dataclasses.dataclass
class Point:
    k: int
    n: int
    m: int
    invariant: bool
    schedules_agree: bool
    rel_error: float
    bi_us: float
    cublas_us: float
    model: str = "qwen3-0.6b"  # runs written before Llama shapes were measured timed Qwen3-0.6B's alone

    @property
    def speedup(self) -> float:
        return self.cublas_us / self.bi_us


def measure(model: str, k: int, n: int, rows: tuple[int, ...], dtype: torch.dtype) -> list[Point]:
    from ascend_compile import devices
    from ascend_compile.kernels.matmul import bi_matmul
    from ascend_compile.kernels.plans import matmul_plan, matmul_schedule

    gen = torch.Generator(device="cuda").manual_seed(k * 7 + n)
    copies = max(1, min(16, math.ceil(_L2_FLUSH_BYTES / (k * n * 2))))
    weights = [torch.randn(n, k, device="cuda", dtype=dtype, generator=gen) / math.sqrt(k) for _ in range(copies)]
    x_all = torch.randn(max(rows), k, device="cuda", dtype=dtype, generator=gen)
    w = weights[0]
    reference_rows = bi_matmul(x_all, w.t(), b_is_weight=True)
    device = devices.of_tensor(x_all)
    plan = matmul_plan(k, n, dtype, device)
    points = []
    for m in rows:
        x = x_all[:m].clone()
        out = bi_matmul(x, w.t(), b_is_weight=True)
        invariant = torch.equal(out, reference_rows[:m])
        base = matmul_schedule(plan, m, n, 1, x.element_size(), device)
        others = [bi_matmul(x, w.t(), schedule=dataclasses.replace(base, split=split, preload_weight=preload, tma=tma,
                                                                   gluon_wgmma=gluon), b_is_weight=True)
                  for split, preload, tma, gluon in ((True, False, False, False), (True, True, False, False),
                                                     (False, False, False, False))
                  + (((False, False, True, False),) if device.tma_loads else ())
                  + (((False, False, False, True),) if device.gluon_wgmma else ())]
        agree = all(torch.equal(other, out) for other in others)
        ref = x.double() @ w.double().t()
        rel = ((out.double() - ref).norm() / ref.norm()).item()
        bi_us = graph_time_us([lambda x=x, wi=wi: bi_matmul(x, wi.t(), b_is_weight=True) for wi in weights])
        cublas_us = graph_time_us([lambda x=x, wi=wi: torch.mm(x, wi.t()) for wi in weights])
        points.append(Point(k, n, m, invariant, agree, rel, bi_us, cublas_us, model))
        logger.info("K=%d N=%d M=%d: invariant=%s agree=%s err=%.2e bi=%.1fus cublas=%.1fus",
                    k, n, m, invariant, agree, rel, bi_us, cublas_us)
    return points


def sweep_candidates(m: int, num_chunks: int) -> list[MatmulSchedule]:
    """Schedules to try at ``m`` rows of a plan with ``num_chunks`` chunks: at decode rows, split
    programs with their weight streamed or preloaded and serial ones with 1, 2 or 4 chunks in flight;
    above them split and serial tiles, the serial ones loaded by pointers or (sm_90+) the TMA, and the
    Gluon kernel (sm_90; its own 128 x 128 tiles)."""
    if m <= 32:  # decode rows: narrow tiles, few warps, deep pipelines
        return [MatmulSchedule(block_m=16, block_n=bn, split=split, num_warps=warps, num_stages=stages, group_m=8,
                               chunks_in_flight=in_flight, preload_weight=preload)
                for bn in (16, 32, 64) for stages in (3, 5, 7) for warps in (2, 4, 8)
                for split, in_flight, preload in ((True, 1, False), (True, 1, True), (False, 1, False),
                                                  (False, 2, False), (False, 4, False))
                if num_chunks % in_flight == 0]
    block_ms = (32, 64) if m <= 64 else (64, 128)
    return [MatmulSchedule(block_m=bm, block_n=bn, split=split, num_warps=8 if bm * bn >= 128 * 128 else 4,
                           num_stages=stages, group_m=8, tma=tma)
            for bm in block_ms for bn in (64, 128, 256) for stages in (3, 4)
            for split, tma in ((True, False), (False, False), (False, True))] + [
        MatmulSchedule(block_m=128, block_n=128, split=False, num_warps=8, num_stages=4, group_m=8, gluon_wgmma=True)]


def sweep(k: int, n: int, rows: tuple[int, ...], dtype: torch.dtype) -> list[dict[str, object]]:
    from ascend_compile import devices
    from ascend_compile.kernels.matmul import bi_matmul
    from ascend_compile.kernels.plans import matmul_plan

    gen = torch.Generator(device="cuda").manual_seed(k + n)
    copies = max(1, min(16, math.ceil(_L2_FLUSH_BYTES / (k * n * 2))))
    weights = [torch.randn(n, k, device="cuda", dtype=dtype, generator=gen) for _ in range(copies)]
    device = devices.of_tensor(weights[0])
    num_chunks = matmul_plan(k, n, dtype, device).num_chunks
    results = []
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
        cublas = graph_time_us([lambda x=x, wi=wi: torch.mm(x, wi.t()) for wi in weights])
        for sched in sweep_candidates(m, num_chunks):
            tiles = -(-m // sched.block_m) * -(-n // sched.block_n)
            if (sched.split and tiles >= 4 * device.compute_units) or (sched.tma and not device.tma_loads) \
                    or (sched.gluon_wgmma and not device.gluon_wgmma):
                continue
            try:
                us = graph_time_us([lambda x=x, wi=wi, s=sched: bi_matmul(x, wi.t(), schedule=s, b_is_weight=True)
                                    for wi in weights])
            except Exception as error:  # out of shared memory for this tile: not a candidate
                logger.info("skip %s: %s", sched, str(error).splitlines()[0])
                continue
            results.append({"k": k, "n": n, "m": m, "tiles": tiles, "cublas_us": cublas, "us": us,
                            **dataclasses.asdict(sched)})
        best = min((r for r in results if r["m"] == m and r["k"] == k and r["n"] == n), key=lambda r: r["us"])
        logger.info("sweep K=%d N=%d M=%d: cublas %.1fus best %.1fus %s", k, n, m, cublas, best["us"], best)
    return results


def markdown(doc: dict[str, Any]) -> str:
    """The results of a run's JSON document (``--json``; also how bench_report renders it): speed vs cuBLAS per
    shape and row count, with ascend_bi's µs, and whether every point was invariant and its schedules agreed."""
    points = [Point(**p) for p in doc["points"]]
    rows = sorted({p.m for p in points})
    by_shape: dict[tuple[str, int, int], dict[int, Point]] = {}
    for p in points:
        by_shape.setdefault((p.model, p.k, p.n), {})[p.m] = p
    lines = [
        card_line(doc["info"]),
        "",
        "Speed vs cuBLAS (ascend_bi µs) per M.",
        "",
        "| model | K | N | " + " | ".join(f"M {m}" for m in rows) + " |",
        "|---|---:|---:|" + "---:|" * len(rows),
    ]
    for (model, k, n), at in by_shape.items():
        lines.append(f"| {model} | {k} | {n} | " + " | ".join(
            f"{at[m].speedup:.2f}× ({at[m].bi_us:.1f})" if m in at else "" for m in rows) + " |")
    lines += ["", "| M | " + " | ".join(str(m) for m in rows) + " |", "|---|" + "---:|" * len(rows),
              "| geo-mean vs cuBLAS | " + " | ".join(f"{geomean([p.speedup for p in points if p.m == m]):.2f}×"
                                                    for m in rows) + " |"]
    groups = {"all points": points, "M ≤ 16": [p for p in points if p.m <= 16],
              "M > 16": [p for p in points if p.m > 16],
              f"M ≥ {PREFILL_ROWS}": [p for p in points if p.m >= PREFILL_ROWS]}
    summary = ", ".join(f"{label} {geomean([p.speedup for p in group]):.2f}×"
                        for label, group in groups.items() if group)
    invariant = sum(p.invariant for p in points)
    agree = sum(p.schedules_agree for p in points)
    error = max(p.rel_error for p in points)
    lines += ["", f"Geo-mean speed vs cuBLAS: {summary}. Bitwise invariant (rows equal to the same rows at the most "
                  f"rows): {invariant} of {len(points)} points; split == serial schedule: {agree} of {len(points)}; "
                  f"largest error vs fp64: {error:.1e}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0], ROWS)
    parser.add_argument("--sweep", help="also time a grid of schedules per point; write them as JSON here")
    parser.add_argument("--models", nargs="*", choices=list(SHAPES), default=list(SHAPES),
                        help="whose linear shapes to measure")
    args = parser.parse_args(argv)
    if not start("bench_matmul"):
        return 2
    shapes = [(model, k, n) for model in args.models for k, n in SHAPES[model]]
    if args.sweep:
        grid = [r for _, k, n in shapes for r in sweep(k, n, tuple(args.rows), torch.bfloat16)]
        with open(args.sweep, "w") as f:
            json.dump(grid, f, indent=1)
    points = [p for model, k, n in shapes for p in measure(model, k, n, tuple(args.rows), torch.bfloat16)]
    finish(args, versions(), points, markdown)
    return 0 if all(p.invariant and p.schedules_agree for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
