"""The ``ascend-bi`` command line.

Exit codes: 0 success (``demo`` and ``check``: ascend_bi batch-invariant at every batch size;
``dump``: every graph batch-invariant by construction), 1 a divergence (or an uncovered
reduction) was found, 2 usage error (bad option, path or target: one line on stderr, no traceback).
Progress goes to stderr, results to stdout (``--json`` for machines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ascend_compile.tools.targets import Target

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascend-bi", description="Batch-invariant torch.compile backend tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the backend does")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compare stock torch.compile and ascend_bi across batch sizes",
                          description="Run the built-in decoder alone and inside random batches; compare bits.")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    demo.add_argument("--dtype", default="float32", choices=DTYPES)
    demo.add_argument("--batch-sizes", type=_positive_ints, default=None,
                      help="comma-separated batch sizes (default: 2,3,8,16,32)")
    demo.add_argument("--repeats", type=int, default=3, help="timed repeats per step (median is shown)")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")

    dump = sub.add_parser("dump", help="compile a model with graph dumps: per-pass code, summary, HTML view, trace",
                          description="Compile TARGET once under ascend_bi and write, per graph: every pass's graph "
                                      "before and after as code, summary.json (rewrites per pass, reductions left "
                                      "stock with source lines, copies with bytes per call, plan per template), "
                                      "graph.html (the final graph, rewritten and uncovered nodes highlighted); and "
                                      "PyTorch's structured trace (open with tlparse). Exit 1 when a reduction was "
                                      "left stock.")
    _target_arguments(dump)
    dump.add_argument("--out", default="ascend-bi-dump", help="folder for the dumps (default: ascend-bi-dump)")
    dump.add_argument("--force", action="store_true", help="write into --out even if it is not empty")

    check = sub.add_parser("check", help="run a model at several batch sizes under ascend_bi and torch.compile; "
                                         "find where invariance breaks",
                           description="Run TARGET's probe row (row 0 of its example inputs) alone and inside "
                                       "batches of drawn companions, under ascend_bi and stock torch.compile; "
                                       "print bitwise equality, max |diff| and ULPs. When ascend_bi is not "
                                       "invariant, name the first diverging op and its source line.")
    _target_arguments(check)
    check.add_argument("--batch-sizes", type=_positive_ints, default=None,
                       help="comma-separated batch sizes (default: 2,5,8)")
    check.add_argument("--companions", type=int, default=2,
                       help="companion draws per batch size (default: 2), each with the probe at a random row")
    check.add_argument("--seed", type=int, default=0, help="seed for companions and probe rows")
    bench = sub.add_parser("bench", help="time the model zoo under ascend_bi and stock torch.compile (GPU); "
                                         "launches per layer and invariance without one",
                           description="The benchmark zoo (transformers, vLLM-shaped and hand-written decoders): "
                                       "ms per decode step per bucket against reduce-overhead on a GPU; without "
                                       "one, launches per layer, fusions and bitwise invariance at small sizes.")
    from ascend_compile.tools.bench_zoo import add_arguments

    add_arguments(bench)
    check.add_argument("--batch-dim", type=int, default=0, metavar="N",
                       help="the dim of every input and output tensor that holds the batch (default: 0; "
                            "1 for a (sequence, batch, ...) model)")
    return parser


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET",
                        help="a built-in model (tiny-decoder), a Python file (file.py or file.py:function, default "
                             "function 'target') or module:function, returning (model, example_inputs)")
    parser.add_argument("--executor", default=None, help="ascend_bi executor: auto, inductor or fx")
    parser.add_argument("--disable-passes", default=None, metavar="NAMES",
                        help="comma-separated passes to skip (debugging; e.g. rewrite_matmul)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _usage_error(command: str, message: str) -> int:
    print(f"ascend-bi {command}: {message}", file=sys.stderr)
    return 2


def _backend_options(args: argparse.Namespace) -> dict[str, object]:
    """ascend_bi options from the flags, validated (``ValueError`` names the accepted values)."""
    from ascend_compile.settings import Settings

    options: dict[str, object] = {}
    if args.executor is not None:
        options["executor"] = args.executor
    if args.disable_passes is not None:
        options["disable_passes"] = args.disable_passes
    Settings.from_options(options)
    return options


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    if args.quiet:
        return lambda _: None
    return lambda msg: print(f"  ... {msg}", file=sys.stderr, flush=True)


def _run_on_target(args: argparse.Namespace, work: Callable[[Target, dict[str, object]], int]) -> int:
    """Load TARGET and run ``work(target, options)``; usage errors become one line and exit 2."""
    from ascend_compile.tools.targets import TargetError, load_target

    try:
        options = _backend_options(args)
        target = load_target(args.target, getattr(args, "batch_dim", 0))
    except ValueError as e:  # TargetError included
        return _usage_error(args.command, str(e).removeprefix("ascend_bi: "))
    try:
        return work(target, options)
    except TargetError as e:  # the target's outputs break the contract
        return _usage_error(args.command, str(e))
    except Exception as e:  # the target's own code may raise anything: one line, traceback with -v
        if args.verbose:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _usage_error(args.command, f"running {args.target} failed: {type(e).__name__}: {first} "
                                          "(-v shows the traceback)")


def _dump(args: argparse.Namespace) -> int:
    from ascend_compile.tools.dump import format_dump, run_dump

    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        return _usage_error("dump", f"--out {args.out} is not empty; choose another folder or pass --force")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return _usage_error("dump", f"--out {args.out} exists and is not a folder")

    def work(target: Target, options: dict[str, object]) -> int:
        result = run_dump(target, args.out, options, progress=_progress(args))
        print(json.dumps(result, indent=1, default=str) if args.json else format_dump(result))
        return 0 if result["batch_invariant"] else 1

    return _run_on_target(args, work)


def _check(args: argparse.Namespace) -> int:
    from ascend_compile.tools.check import DEFAULT_BATCH_SIZES, format_check, run_check

    if args.companions <= 0:
        return _usage_error("check", f"--companions must be a positive integer, got {args.companions}")
    if args.batch_dim < 0:
        return _usage_error("check", f"--batch-dim must be 0 or a positive integer, got {args.batch_dim}")

    def work(target: Target, options: dict[str, object]) -> int:
        result = run_check(target, options, args.batch_sizes or DEFAULT_BATCH_SIZES, args.companions, args.seed,
                           progress=_progress(args))
        print(json.dumps(result, indent=1, default=str) if args.json else format_check(result))
        return 0 if result["invariant"] else 1

    return _run_on_target(args, work)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from ascend_compile.report import reports
    from ascend_compile.tools.demo import DEFAULT_BATCH_SIZES, as_json, format_table, run_demo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        print(f"ascend-bi demo: --device must be cpu or cuda, got {device!r}", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("ascend-bi demo: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    progress = (lambda msg: print(f"  ... {msg}", file=sys.stderr, flush=True)) if not args.json else (lambda _: None)
    rows = run_demo(device, getattr(torch, args.dtype), args.batch_sizes or DEFAULT_BATCH_SIZES,
                    args.repeats, progress=progress)
    uncovered = sorted({u.target for r in reports() for u in r.uncovered})
    if args.json:
        print(json.dumps({"rows": as_json(rows), "uncovered_reductions": uncovered}, indent=1))
    else:
        print(format_table(rows))
        if device == "cpu":
            print("\nOn the CPU, ascend_bi's Triton kernels run in Triton's interpreter: its times say nothing "
                  "about speed (see docs/BENCHMARKS.md for GPU numbers).")
        if uncovered:
            print(f"\nascend_bi left these reductions stock (not yet covered by a template): {', '.join(uncovered)}")
    return 0 if all(r.bitwise_equal for r in rows if r.mode == "ascend_bi") else 1


def _bench(args: argparse.Namespace) -> int:
    from ascend_compile.tools.bench_zoo import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("TORCH_LOGS", "-all")
    return {"demo": _demo, "dump": _dump, "check": _check, "bench": _bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
