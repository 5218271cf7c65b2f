"""Where a decode step's (or a prefill's) time goes: GPU kernel time per kernel name, per mode, one bucket.

The same model, cache and modes as ``bench_decode`` (``--prefill TOKENS``: its prefill of that many tokens per
sequence instead of a decode step), or with ``--zoo NAME`` a zoo model (``tools/zoo.py``)
under stock ``reduce-overhead`` and ``ascend_bi``; after a warm-up (compile and capture), a few steps
run under ``torch.profiler`` and every GPU kernel's time is summed by name (kernels replayed from
CUDA graphs included).  The table lists, per mode, the kernels that add the most time to the
step, their own time and launches per step, and the totals: the place to look before changing a
schedule.

A kernel launched overlapped starts while the one before it runs and waits for it, so its own time
counts that wait too, and the own times add up to more than the step.  What a kernel *adds* is the
part of its run past the end of every kernel that started before it (``exposed_times``): those
parts and the GPU's idle gaps add up to the profiled span exactly.

Usage: ``python -m ascend_compile.tools.profile_decode [--bucket 8] [--prefill TOKENS] [--modes ...] [--top 12]``, or
``... --zoo plain [--layers 8]`` (zoo modes: ``reduce-overhead`` and ``ascend_bi``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ascend_compile import devices
from ascend_compile.tools import zoo
from ascend_compile.tools.bench_decode import MODES, Workload, _modes
from ascend_compile.tools.benchmarking import card_line, start, versions
from ascend_compile.tools.models import qwen3_0_6b

STEPS = 5
#: The modes a zoo model is profiled in.
ZOO_MODES = ("reduce-overhead", "ascend_bi")


@dataclasses.dataclass
class KernelTime:
    """One kernel name's microseconds and launches per step."""

    own_us: float = 0.0
    added_us: float = 0.0
    launches: int = 0


#: Per kernel name its times, and the GPU's idle time (microseconds per step, or in all).
Profile = tuple[dict[str, KernelTime], float]


def exposed_times(kernels: list[tuple[str, float, float]]) -> Profile:
    """Per kernel name, from (name, start, end) intervals in microseconds: own time, launches and the
    time added past the end of every kernel started earlier; and the idle time between kernels."""
    times: dict[str, KernelTime] = collections.defaultdict(KernelTime)
    kernels = sorted(kernels, key=lambda kernel: kernel[1])
    idle, latest_end = 0.0, kernels[0][1] if kernels else 0.0
    for name, begin, end in kernels:
        time = times[name]
        time.own_us += end - begin
        time.launches += 1
        time.added_us += max(0.0, end - max(latest_end, begin))
        idle += max(0.0, begin - latest_end)
        latest_end = max(latest_end, end)
    return dict(times), idle


def kernel_times(step: Callable[[], Any],
                 context_manager: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
                 ) -> Profile:
    """``exposed_times`` of the GPU kernels of one ``step()`` (averaged over ``STEPS``)."""
    with torch.no_grad(), context_manager():
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step()
            torch.cuda.synchronize()
    kernels = [(event.name, event.time_range.start, event.time_range.end) for event in prof.events()
               if event.device_type == torch.autograd.DeviceType.CUDA]
    times, idle = exposed_times(kernels)
    for time in times.values():
        time.own_us, time.added_us, time.launches = time.own_us / STEPS, time.added_us / STEPS, time.launches // STEPS
    return times, idle / STEPS


def table(mode: str, times: dict[str, KernelTime], idle_us: float, top: int) -> str:
    added = sum(time.added_us for time in times.values())
    lines = [f"### {mode}: {added:.0f} µs added by kernels per step ({sum(t.own_us for t in times.values()):.0f} µs "
             f"of their own), {sum(t.launches for t in times.values())} launches, {idle_us:.0f} µs idle "
             "(between steps included)", "",
             "| kernel | adds µs / step | share | own µs / step | launches / step |", "|---|---:|---:|---:|---:|"]
    for name, time in sorted(times.items(), key=lambda item: -item[1].added_us)[:top]:
        lines.append(f"| `{name[:80]}` | {time.added_us:.1f} | {time.added_us / added:.0%} | {time.own_us:.1f} "
                     f"| {time.launches} |")
    return "\n".join(lines)


def _bench_decode_profiles(args: argparse.Namespace) -> Iterator[tuple[str, Profile]]:
    """``bench_decode``'s Qwen3-0.6B step (or prefill) in each of ``args.modes``."""
    model = qwen3_0_6b(num_hidden_layers=args.layers, attn_implementation="sdpa")
    available = _modes(model)
    workload = Workload("prefill", args.prefill) if args.prefill else Workload("decode", args.context)
    for mode in args.modes:
        step, context_manager = available[mode]
        ids, cache, position = workload.inputs(model, args.bucket)
        yield mode, kernel_times(functools.partial(step, ids, cache, position), context_manager)


def _zoo_profiles(args: argparse.Namespace) -> Iterator[tuple[str, Profile]]:
    """Zoo model ``args.zoo``'s step under stock ``reduce-overhead`` and under ``ascend_bi``."""
    cfg = dataclasses.replace(zoo.ZooConfig(), layers=args.layers)
    model = zoo.build(args.zoo, cfg=cfg, context=args.context)
    for mode in ZOO_MODES:
        torch._dynamo.reset()
        step = torch.compile(model.step, **({"backend": "ascend_bi"} if mode == "ascend_bi" else {"mode": mode}))
        inputs = model.inputs(args.bucket)
        yield mode, kernel_times(functools.partial(step, *inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="*", default=["reduce-overhead", "ascend_bi inductor"], choices=MODES)
    parser.add_argument("--zoo", choices=sorted(zoo.ZOO), help="profile this zoo model (modes: reduce-overhead and "
                        "ascend_bi) instead of bench_decode's Qwen3-0.6B")
    parser.add_argument("--bucket", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--prefill", type=int, metavar="TOKENS",
                        help="profile a prefill of this many tokens per sequence instead of a decode step")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if args.prefill is not None and (args.zoo or args.prefill < 1):
        parser.error(f"--prefill takes a positive token count for bench_decode's model, not with --zoo; got "
                     f"{args.prefill} tokens{' and --zoo ' + args.zoo if args.zoo else ''}")
    if not start("profile_decode"):
        return 2
    model = f"zoo model {args.zoo}" if args.zoo else "Qwen3-0.6B"
    shape = f"prefill of {args.prefill} tokens" if args.prefill else f"context {args.context}"
    sections = [card_line(versions()) + f" {model}, bucket {args.bucket}, {shape}, {args.layers} layers."]
    if devices.of_tensor(torch.empty(0, device="cuda")).overlapped_launches:
        sections[0] += (" Template kernels launched overlapped: each one's own time includes its wait for the "
                        f"kernel before it ({devices.OVERLAP_LAUNCHES_ENV}=0 launches them one at a time).")
    for mode, (times, idle) in (_zoo_profiles(args) if args.zoo else _bench_decode_profiles(args)):
        sections.append(table(mode, times, idle, args.top))
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
