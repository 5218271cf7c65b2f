"""The ``ascend-bi`` command line.

Exit codes: 0 success (and, for ``demo``, ascend_bi batch-invariant at every batch size),
1 a divergence was found, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

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
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("TORCH_LOGS", "-all")
    return {"demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
