"""``ascend-bi bench``: the zoo's decode step, ascend_bi against stock ``torch.compile``, model by model.

The zoo (``tools/zoo.py``) holds one decoder written as transformers, vLLM and a hand-written module
write it.  A speed-up is the backend's only when it holds on all of them, so every run covers every
model asked for, in one process, on one card:

* on a GPU: per model and bucket, ms per decode step under ``ascend_bi`` and under stock
  ``torch.compile(mode="reduce-overhead")``, their ratio, the launches per step (counted in the code
  Inductor generated), the HBM floor (the step's weight and cache bytes over the copy bandwidth),
  and whether sequence 0's logits had the same bits in every bucket;
* without one (``--structure``, the default there: Triton's interpreter says nothing about speed):
  per model, at small sizes, the launches of one decoder layer under ``ascend_bi`` and under stock
  Inductor (the step's launches at two layers minus at one), the fusions that fired, and whether
  sequence 0's bits were the same at every batch size.

A GPU run may also be split over calls on one machine (a device call can be shorter than the zoo):
``--merge`` keeps the models of the ``--json`` file that this run does not measure.

Usage: ``ascend-bi bench [--model NAME ...] [--buckets 1 2 4 8 16 32] [--json PATH [--merge]]``, or
``python -m ascend_compile.tools.bench_zoo`` with the same options.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch._inductor.utils import run_and_get_code

from ascend_compile.tools import zoo
from ascend_compile.tools.benchmarking import card_line, copy_bandwidth, geomean, mean_call_ms, versions

logger = logging.getLogger(__name__)

BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
#: Batch sizes of the structure run (a batch of one compiles a graph of its own).
STRUCTURE_BATCHES: tuple[int, ...] = (1, 3)
#: Launches are counted in bf16, the dtype models serve in; bits are compared in fp32: on the CPU, stock bf16
#: matmuls (oneDNN) keep a row's bits at these sizes and fp32 ones do not, so only there does the stock
#: column show what ascend_bi prevents.
LAUNCH_DTYPE, BITS_DTYPE = torch.bfloat16, torch.float32
MODES: tuple[str, ...] = ("reduce-overhead", "ascend_bi")

#: One launch in the ``call`` function of Inductor's generated code: a Triton kernel's ``run``, a C++
#: kernel, an extern kernel, or an op called as it is (ours, or an aten fallback).
_LAUNCH = re.compile(r"^\s*(?:\w+ = )?(?:triton_\w+\.run|cpp_fused_\w+|extern_kernels\.\w+|"
                     r"torch\.ops\.\w+\.\w+\.\w+)\(", re.M)


def count_launches(codes: list[str]) -> int:
    """Kernel launches one run of the generated ``codes`` makes."""
    total = 0
    for code in codes:
        body = code[code.find("def call(") if "def call(" in code else 0:]
        total += len(_LAUNCH.findall(body))
    return total


@dataclasses.dataclass
class Point:
    model: str
    mode: str
    bucket: int
    ms: float
    #: Launches of the code compiled at this bucket's first call (0: no graph was compiled for it).
    launches: int


def _compiled(step: Callable[..., torch.Tensor], mode: str) -> Callable[..., torch.Tensor]:
    if mode == "ascend_bi":
        return torch.compile(step, backend="ascend_bi")
    return torch.compile(step, mode=mode)


def _first_call(fn: Callable[..., torch.Tensor], inputs: tuple[Any, ...]) -> tuple[torch.Tensor, int]:
    with torch.no_grad():
        out, codes = run_and_get_code(fn, *inputs)
    return out[0].float().clone(), count_launches(codes)


def measure(name: str, cfg: zoo.ZooConfig, buckets: list[int], context: int,
            repeats: int) -> tuple[list[Point], dict[str, bool], dict[int, int]]:
    """(points, whether each mode gave sequence 0 the same bits in every bucket, bytes read per bucket)."""
    model = zoo.build(name, cfg=cfg, context=context)
    points, invariant = [], {}
    for mode in MODES:
        torch._dynamo.reset()
        fn = _compiled(model.step, mode)
        rows = []
        for bucket in buckets:
            inputs = model.inputs(bucket)
            row, launches = _first_call(fn, inputs)
            rows.append(row)
            with torch.no_grad():
                ms = mean_call_ms(lambda fn=fn, inputs=inputs: fn(*inputs), repeats)
            points.append(Point(name, mode, bucket, ms, launches))
            logger.info("%s", points[-1])
            del inputs
        invariant[mode] = all(torch.equal(rows[0], r) for r in rows)
    return points, invariant, {b: model.bytes_read(b) for b in buckets}


def structure(name: str, batches: tuple[int, ...] = STRUCTURE_BATCHES, stock_launches: bool = True,
              stock_bits: bool = True) -> dict[str, Any]:
    """Launches per decoder layer in each mode, whether each mode gave sequence 0 the same bits at every batch
    size, and the fusions ascend_bi made, at the zoo's small sizes on this machine (``stock_launches`` /
    ``stock_bits`` False: stock torch.compile's launches / bits are not measured)."""
    import ascend_compile

    def run_mode(layers: int, mode: str, sizes: tuple[int, ...], dtype: torch.dtype) -> tuple[int, list[torch.Tensor]]:
        """Launches of the code compiled at the last batch size, and sequence 0's logits at each."""
        model = zoo.build(name, cfg=dataclasses.replace(zoo.TINY, layers=layers), context=20, device="cpu",
                          dtype=dtype)
        torch._dynamo.reset()
        fn = torch.compile(model.step, backend="ascend_bi") if mode == "ascend_bi" else torch.compile(model.step)
        calls = [_first_call(fn, model.inputs(batch)) for batch in sizes]
        return calls[-1][1], [row for row, _ in calls]

    modes, one_size, launches = ("torch.compile", "ascend_bi"), batches[-1:], {}
    for mode in modes if stock_launches else modes[1:]:
        ascend_compile.clear_reports()
        full = run_mode(zoo.TINY.layers, mode, one_size, LAUNCH_DTYPE)[0]
        reports = ascend_compile.reports()  # ascend_bi's, the last mode: its fusions in the launches' dtype
        launches[mode] = full - run_mode(zoo.TINY.layers - 1, mode, one_size, LAUNCH_DTYPE)[0]
    fired: dict[str, int] = {}
    for report in reports:
        for pass_name, count in report.rewrites.items():
            fired[pass_name] = fired.get(pass_name, 0) + count
    rows = {mode: run_mode(zoo.TINY.layers, mode, batches, BITS_DTYPE)[1] for mode in modes[0 if stock_bits else 1:]}
    return {"model": name, "launches_per_layer": launches,
            "invariant": {mode: all(torch.equal(r[0], other) for other in r) for mode, r in rows.items()},
            "fusions": {k: v for k, v in fired.items() if v and k.startswith("fuse_")},
            "uncovered": sorted({u.target for r in reports for u in r.uncovered})}


def markdown(doc: dict[str, Any]) -> str:
    """The run's tables, from its JSON document (``bench_report`` renders the docs' copy with this)."""
    info = doc["info"]
    if doc["kind"] == "structure":
        lines = [f"Structure on {info['device']}; torch {info['torch']}, triton {info['triton']}; {info['date']}. "
                 f"Zoo at small sizes ({info['config']}); launches of one decoder layer (bf16), sequence 0's bits "
                 f"at batch sizes {', '.join(map(str, STRUCTURE_BATCHES))} (fp32).", "",
                 "| model | launches/layer ascend_bi | torch.compile | bitwise equal across batches ascend_bi "
                 "| torch.compile | fusions | left stock |", "|---|---:|---:|:---:|:---:|---|---|"]
        for m in doc["models"]:
            fusions = ", ".join(f"{k} {v}" for k, v in m["fusions"].items()) or "none"
            launches, equal = m["launches_per_layer"], {k: "yes" if v else "no" for k, v in m["invariant"].items()}
            lines.append(f"| {m['model']} | {launches['ascend_bi']} | {launches['torch.compile']} | "
                         f"{equal['ascend_bi']} | {equal['torch.compile']} | {fusions} | "
                         f"{', '.join(m['uncovered']) or '—'} |")
        return "\n".join(lines)
    points = [Point(**p) for p in doc["points"]]
    buckets = sorted({p.bucket for p in points})
    lines = [card_line(info) + f" transformers {info.get('transformers', '?')}.", "",
             f"Decode step, the zoo at {info['config']}, bf16, context {info['context']}; ms per step (copy "
             f"bandwidth {doc['bandwidth'] / 1e12:.2f} TB/s); ratio: ascend_bi / reduce-overhead.", "",
             "| model | mode | " + " | ".join(f"bs {b}" for b in buckets)
             + " | geo-mean | launches/step | bitwise equal |",
             "|---|---|" + "---:|" * len(buckets) + "---:|---:|:---:|"]
    for model in dict.fromkeys(p.model for p in points):
        ms = {(p.mode, p.bucket): p for p in points if p.model == model}
        for mode in MODES:
            launches = max((ms[mode, b].launches for b in buckets), default=0)
            equal = "yes" if doc["invariant"][model][mode] else "no"
            lines.append(f"| {model} | {mode} | " + " | ".join(f"{ms[mode, b].ms:.2f}" for b in buckets)
                         + f" | | {launches} | {equal} |")
        per_bucket = [ms["ascend_bi", b].ms / ms["reduce-overhead", b].ms for b in buckets]
        floors = doc["bytes_read"][model]
        lines.append(f"| {model} | ratio | " + " | ".join(f"{r:.2f}×" for r in per_bucket)
                     + f" | **{geomean(per_bucket):.2f}×** | | |")
        lines.append(f"| {model} | HBM floor | " + " | ".join(f"{floors[str(b)] / doc['bandwidth'] * 1e3:.2f}"
                                                         for b in buckets) + " | | | |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="*", choices=list(zoo.ZOO), default=list(zoo.ZOO), metavar="NAME",
                        help=f"zoo models (default: all of {', '.join(zoo.ZOO)})")
    parser.add_argument("--buckets", type=int, nargs="*", default=list(BUCKETS), help="batch sizes (GPU)")
    parser.add_argument("--context", type=int, default=512, help="cached tokens per sequence (GPU)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: Qwen3-0.6B's 28)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per point (GPU)")
    parser.add_argument("--structure", action="store_true",
                        help="launches per layer, fusions and invariance at small sizes (the default without a GPU)")
    parser.add_argument("--json", help="write the run as JSON here (on a GPU, again after each model: an "
                                       "interrupted run keeps the models it measured)")
    parser.add_argument("--merge", action="store_true",
                        help="GPU: keep the models of the --json file that this run does not measure (same card, "
                             "configuration and context)")


def run(args: argparse.Namespace) -> int:
    """Run the bench; 0 when ascend_bi kept every model's bits in every bucket, else 1."""
    import triton

    if args.structure or not torch.cuda.is_available():
        if args.merge:
            raise SystemExit("bench --merge: merges GPU runs; a structure run is one process's")
        info = {"device": "the CPU (Triton's interpreter)", "torch": torch.__version__, "triton": triton.__version__,
                "date": datetime.date.today().isoformat(), "config": _config_line(zoo.TINY)}
        models = [structure(name) for name in args.model]
        doc: dict[str, Any] = {"info": info, "kind": "structure", "models": models}
        ok = all(m["invariant"]["ascend_bi"] for m in models)
    else:
        import transformers

        cfg = zoo.ZooConfig() if args.layers is None else dataclasses.replace(zoo.ZooConfig(), layers=args.layers)
        info = versions() | {"transformers": transformers.__version__, "config": _config_line(cfg),
                             "context": args.context}
        run_doc: dict[str, Any] = {"info": info, "kind": "gpu", "bandwidth": copy_bandwidth(), "points": [],
                                   "invariant": {}, "bytes_read": {}}
        kept = _read(args.json) if args.merge else None
        doc = merge_runs(kept, run_doc) if kept else run_doc  # a merge is checked before any model runs
        for name in args.model:
            points, invariant, bytes_read = measure(name, cfg, args.buckets, args.context, args.repeats)
            run_doc["points"] += [dataclasses.asdict(p) for p in points]
            run_doc["invariant"][name] = invariant
            run_doc["bytes_read"][name] = {str(b): n for b, n in bytes_read.items()}
            doc = merge_runs(kept, run_doc) if kept else run_doc
            _write(doc, args.json)
        ok = all(modes["ascend_bi"] for modes in run_doc["invariant"].values())
    _write(doc, args.json)
    print(markdown(doc))
    return 0 if ok else 1


def merge_runs(kept: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """``run`` (a GPU run's document) with the models of ``kept`` that it did not measure, in the zoo's
    order; both must come from one card, configuration and context."""
    _check_mergeable(kept, run)
    measured = set(run["invariant"])
    order = list(zoo.ZOO)
    merged = dict(run)
    merged["points"] = sorted([p for p in kept["points"] if p["model"] not in measured] + run["points"],
                              key=lambda p: order.index(p["model"]))
    for key in ("invariant", "bytes_read"):
        both = {m: v for m, v in kept[key].items() if m not in measured} | run[key]
        merged[key] = {m: both[m] for m in order if m in both}
    dates = list(dict.fromkeys([*kept["info"]["date"].split(" and "), run["info"]["date"]]))
    merged["info"] = run["info"] | {"date": " and ".join(dates)}
    return merged


#: What two runs must share to stand in one table.
_SAME_SETUP = ("card", "config", "context", "torch", "triton")


def _check_mergeable(kept: dict[str, Any], run: dict[str, Any]) -> None:
    if kept.get("kind") != "gpu" or any(kept["info"].get(key) != run["info"].get(key) for key in _SAME_SETUP):
        theirs = ", ".join(str(kept.get("info", {}).get(key)) for key in _SAME_SETUP)
        ours = ", ".join(str(run["info"].get(key)) for key in _SAME_SETUP)
        raise SystemExit(f"bench --merge: the --json file is not a GPU run with this run's {', '.join(_SAME_SETUP)}: "
                         f"{theirs} against {ours}")


def _read(path: str | None) -> dict[str, Any] | None:
    """The document at ``path`` (``--merge``), or None where there is none yet."""
    if path is None:
        raise SystemExit("bench --merge needs --json PATH: the run to keep models from and to write")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write(doc: dict[str, Any], path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)


def _config_line(cfg: zoo.ZooConfig) -> str:
    return (f"hidden {cfg.hidden}, {cfg.layers} layers, {cfg.heads}/{cfg.kv_heads} heads of {cfg.head_dim}, "
            f"intermediate {cfg.intermediate}, vocab {cfg.vocab}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # the points as they are measured; the backend's own logs stay quiet
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
