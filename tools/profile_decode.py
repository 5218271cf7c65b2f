"""Where a decode step's time goes: GPU kernel time per kernel name, per mode, one bucket.

The same model, cache and modes as ``bench_decode``; after a warm-up (compile and capture), a few
steps run under ``torch.profiler`` and every GPU kernel's time is summed by name (kernels replayed
from CUDA graphs included).  The table lists, per mode, the kernels that take the most time per
step, their launches per step, and the total: the place to look before changing a schedule.

Usage: ``python -m ascend_compile.tools.profile_decode [--bucket 8] [--modes ...] [--top 12]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ascend_compile import devices
from ascend_compile.tools.bench_decode import MODES, Step, Workload, _modes
from ascend_compile.tools.benchmarking import card_line, start, versions
from ascend_compile.tools.models import qwen3_0_6b

STEPS = 5


def kernel_times(step: Step, ids: torch.Tensor, cache: Any, position: torch.Tensor,
                 context_manager: Callable[[], contextlib.AbstractContextManager[Any]]) -> dict[str, tuple[float, int]]:
    """Microseconds and launches per step for every GPU kernel name."""
    with torch.no_grad(), context_manager():
        for _ in range(3):
            step(ids, cache, position)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step(ids, cache, position)
            torch.cuda.synchronize()
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name][0] += event.device_time
            totals[event.name][1] += 1
    return {name: (us / STEPS, count // STEPS) for name, (us, count) in totals.items()}


def table(mode: str, times: dict[str, tuple[float, int]], top: int) -> str:
    total = sum(us for us, _ in times.values())
    launches = sum(n for _, n in times.values())
    lines = [f"### {mode}: {total:.0f} µs of kernels per step, {launches} launches", "",
             "| kernel | µs / step | launches / step | share |", "|---|---:|---:|---:|"]
    for name, (us, n) in sorted(times.items(), key=lambda item: -item[1][0])[:top]:
        lines.append(f"| `{name[:80]}` | {us:.1f} | {n} | {us / total:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="*", default=["reduce-overhead", "ascend_bi inductor"], choices=MODES)
    parser.add_argument("--bucket", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if not start("profile_decode"):
        return 2
    model = qwen3_0_6b(num_hidden_layers=args.layers, attn_implementation="sdpa")
    available = _modes(model)
    sections = [card_line(versions()) + f" Bucket {args.bucket}, context {args.context}, {args.layers} layers."]
    if devices.of_tensor(torch.empty(0, device="cuda")).overlapped_launches:
        sections[0] += (" Template kernels launched overlapped: each one's time includes its wait for the kernel "
                        f"before it, so the sum exceeds the step; {devices.OVERLAP_LAUNCHES_ENV}=0 gives the "
                        "one-at-a-time breakdown.")
    for mode in args.modes:
        step, context_manager = available[mode]
        ids, cache, position = Workload("decode", args.context).inputs(model, args.bucket)
        times = kernel_times(step, ids, cache, position, context_manager)
        sections.append(table(mode, times, args.top))
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
