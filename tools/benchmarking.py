"""What the GPU benchmarks share: CUDA-graph replay timing, geo-means, versions, options, output."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import platform
import sys
from collections.abc import Callable
from typing import Any

import torch


def graph_time_us(calls: list[Callable[[], object]], repeats: int = 20) -> float:
    """Median time of one call, from CUDA-graph replays of all ``calls`` back to back."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # warm up: compile kernels, allocate workspaces
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    for _ in range(10):
        dst.copy_(src)
    end_event.record()
    end_event.synchronize()
    return 2 * src.numel() * 10 / (start_event.elapsed_time(end_event) / 1e3)


def mean_call_ms(call: Callable[[], object], repeats: int) -> float:
    """Mean time of ``call`` over ``repeats`` calls in a row, after three warm-up calls (a whole step,
    with its own graph replays and host work, as a server runs it)."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    for _ in range(repeats):
        call()
    end_event.record()
    end_event.synchronize()
    return start_event.elapsed_time(end_event) / repeats


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def versions() -> dict[str, str]:
    import triton

    return {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def card_line(info: dict[str, str]) -> str:
    return f"Card: {info['card']}; torch {info['torch']}, triton {info['triton']}, CUDA {info['cuda']}; {info['date']}."


def bench_parser(description: str, rows: tuple[int, ...]) -> argparse.ArgumentParser:
    """The options every benchmark takes: where to write results, which row counts to run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", help="write every point as JSON here")
    parser.add_argument("--markdown", help="write the results table as Markdown here")
    parser.add_argument("--rows", type=int, nargs="*", default=list(rows), help="row counts")
    return parser


def start(name: str) -> bool:
    """Whether a GPU benchmark can run here; sets up its progress log."""
    if not torch.cuda.is_available():
        print(f"{name} needs a CUDA GPU", file=sys.stderr)
        return False
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return True


def finish(args: argparse.Namespace, info: dict[str, str], points: list[Any],
           markdown: Callable[[dict[str, Any]], str], **extra: Any) -> None:
    """Write the run's JSON document (its versions, ``extra`` and every point) and its table (Markdown) where
    asked, and print the table.  The table is rendered from the document, as ``bench_report`` renders
    docs/BENCHMARKS.md from the stored JSON, so the two cannot differ."""
    doc = {"info": info, **extra, "points": [dataclasses.asdict(p) for p in points]}
    table = markdown(doc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    print(table)
